"""`nasax tune`: Bayesian tuning of a run's knobs with optuna (TPE, median pruning).

The config's `tune` section names the knobs (dotted config keys with a range or
choices), what each trial runs (`search` or `train`) and the epoch figure to optimise.
Every trial is an ordinary nasax run in `<out>/trial_NNN`; its epoch figures are
reported to the pruner as it goes. The study lives in `<out>/study.db` (SQLite), so
rerunning the same command continues an interrupted tuning.
"""

from __future__ import annotations

import contextlib
import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from nasax.core.config import Config, TuneConfig, TuneParam, apply_overrides
from nasax.core.errors import ConfigError, NasaxError, RunDirBusy, RunDirError, StorageError
from nasax.core.io import atomic_write_json, atomic_write_text
from nasax.core.registry import Registry
from nasax.core.rundir import lock_on_process_zero
from nasax.core.storage import storage_errors
from nasax.loop.programs import ProgramCache
from nasax.loop.runloop import Interrupted
from nasax.search.options import validate_config

RUNNERS: Registry[Any] = Registry("tune command")
"""`tune.command` -> run(config, run_dir, *, overwrite, on_epoch, programs) -> summary."""


def _run_search(config: Config, run_dir: Path, **kw: Any) -> dict[str, Any]:
    from nasax.search.task import run_search

    return run_search(config, run_dir, **kw)


def _run_train(config: Config, run_dir: Path, **kw: Any) -> dict[str, Any]:
    from nasax.train.task import run_train

    return run_train(config, run_dir, **kw)


RUNNERS.register("search", _run_search)
RUNNERS.register("train", _run_train)


def suggest(trial: Any, key: str, param: TuneParam) -> Any:
    """The trial's value for one knob."""
    if param.type == "choice":
        return trial.suggest_categorical(key, param.choices)
    if param.type == "int":
        step = int(param.step or 1)
        return trial.suggest_int(key, int(param.low), int(param.high), step=step, log=param.log)
    return trial.suggest_float(key, param.low, param.high, step=param.step, log=param.log)


def trial_config(base: Config, values: dict[str, Any], name: str) -> Config:
    """`base` with the knobs set to `values` (and no `tune` section), validated."""
    data = base.to_dict()
    data.pop("tune", None)
    data["name"] = name
    data = apply_overrides(data, [f"{k}={json.dumps(v)}" for k, v in values.items()])
    return validate_config(data, f"tune trial {name}")


def check_knobs(base: Config) -> None:
    """Every knob must be a config key that takes both ends of its range."""
    for key, param in base.tune.params.items():
        samples = param.choices if param.type == "choice" else [param.low, param.high]
        for value in samples:
            if param.type == "int":
                value = int(value)
            try:
                trial_config(base, {key: value}, "check")
            except ConfigError as e:
                raise ConfigError(f"tune.params.{key}={value!r}: {e}") from None


def _study(base: Config, out: Path) -> Any:
    import optuna

    tune = base.tune
    optuna.logging.set_verbosity(logging.WARNING)
    pruner = (
        optuna.pruners.MedianPruner(
            n_startup_trials=tune.startup_trials, n_warmup_steps=tune.warmup_epochs
        )
        if tune.pruner == "median"
        else optuna.pruners.NopPruner()
    )
    storage = f"sqlite:///{(out / 'study.db').absolute()}"
    study = optuna.create_study(
        storage=storage,
        study_name=base.name,
        direction=tune.direction,
        pruner=pruner,
        load_if_exists=True,
    )
    # Seeded by the trials so far, so a resumed tuning does not replay the same draws.
    study.sampler = optuna.samplers.TPESampler(seed=base.seed + len(study.trials))
    return study


def _check_same_config(base: Config, out: Path) -> None:
    """A continued study must tune the same config (its trial count may grow)."""
    saved = out / "tune_config.yaml"

    def comparable(config: Config) -> dict[str, Any]:
        data = config.to_dict()
        data["tune"].pop("trials")
        data.pop("run")
        return data

    if saved.exists():
        before = validate_config(yaml.safe_load(saved.read_text()), str(saved))
        if comparable(before) != comparable(base):
            raise RunDirError(
                f"{out} holds a tuning of another config (see {saved}); use the same config "
                "to continue it, or another --out"
            )
    else:
        atomic_write_text(saved, base.to_yaml())


def run_tune(base: Config, out: str | Path, *, log: Any = print) -> dict[str, Any]:
    """Runs (or continues) the study in `out` until `tune.trials` trials have ended;
    returns the summary also written to `out/tune_summary.json`.

    The study folder is locked while it runs (and each trial's run directory while the
    trial runs), so a second tuning of it, or a manual `--resume` of a running trial,
    is refused. A full disk stops the tuning, not just a trial.
    """
    if base.tune is None or not base.tune.params:
        raise ConfigError("nasax tune needs a `tune` section with at least one knob in params")
    check_knobs(base)
    out = Path(out)
    with lock_on_process_zero(out, "tune"), storage_errors(out / "study.db", "update"):
        return _run_study(base, out, log)


def _run_study(base: Config, out: Path, log: Any) -> dict[str, Any]:
    import optuna
    from optuna.trial import TrialState

    tune: TuneConfig = base.tune
    _check_same_config(base, out)
    study = _study(base, out)
    for stale in study.get_trials(deepcopy=False, states=[TrialState.RUNNING]):
        study.tell(stale.number, state=TrialState.FAIL)  # a run killed mid-trial
    runner = RUNNERS.get(tune.command)
    programs = ProgramCache()  # a trial whose values change no program reuses the last ones
    ended = (TrialState.COMPLETE, TrialState.PRUNED)

    def done() -> int:
        return len(study.get_trials(deepcopy=False, states=ended))

    while done() < tune.trials:
        trial = study.ask()
        values = {k: suggest(trial, k, p) for k, p in tune.params.items()}
        name = f"trial_{trial.number:03d}"
        config = trial_config(base, values, f"{base.name}-{name}")
        config.run.progress = base.run.progress
        last_epoch = getattr(config, tune.command).epochs  # a finished trial is not pruned

        final: dict[str, Any] = {}

        def report(
            figures: dict[str, Any], trial: Any = trial, final: dict = final, last: int = last_epoch
        ) -> None:
            final.update(figures)
            if tune.metric not in figures:
                raise ConfigError(
                    f"tune.metric: {tune.metric!r} is not an epoch figure of nasax "
                    f"{tune.command}; it has {sorted(figures)}"
                )
            trial.report(float(figures[tune.metric]), figures["epoch"])
            if figures["epoch"] < last and trial.should_prune():
                raise optuna.TrialPruned()

        log(f"tune {name} ({done() + 1}/{tune.trials}): {_show(values)}")
        try:
            runner(config, out / name, overwrite=True, on_epoch=report, programs=programs)
        except optuna.TrialPruned:
            study.tell(trial, state=TrialState.PRUNED)
            log(f"tune {name}: pruned after epoch {final.get('epoch')}")
        except Interrupted as e:
            study.tell(trial, state=TrialState.FAIL)
            _write_summary(study, base, out)
            raise Interrupted(
                f"tuning stopped during {name} ({done()} of {tune.trials} trials done); rerun "
                f"the same command with --out {out} to continue",
                e.signum,
            ) from None
        except (ConfigError, StorageError, RunDirBusy):  # no later trial would fare better
            with contextlib.suppress(Exception):  # a full disk refuses this too; a rerun does it
                study.tell(trial, state=TrialState.FAIL)
            raise
        except NasaxError as e:  # a diverging trial (NaN) is a failed trial, not the end
            study.tell(trial, state=TrialState.FAIL)
            log(f"tune {name}: failed: {e}")
        else:
            study.tell(trial, float(final[tune.metric]))
            log(f"tune {name}: {tune.metric} {final[tune.metric]:.4f}")
        _write_summary(study, base, out)
    return _write_summary(study, base, out)


def _show(values: dict[str, Any]) -> str:
    return "  ".join(
        f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in values.items()
    )


def _write_summary(study: Any, base: Config, out: Path) -> dict[str, Any]:
    """tune_summary.json (every trial) and best_config.yaml (the best trial's config)."""
    from optuna.trial import TrialState

    trials = [
        {
            "number": t.number,
            "state": t.state.name.lower(),
            "value": t.value,
            "params": t.params,
            "epochs_reported": len(t.intermediate_values),
            "run_dir": str(out / f"trial_{t.number:03d}"),
        }
        for t in study.get_trials(deepcopy=False)
    ]
    summary: dict[str, Any] = {
        "study": base.name,
        "metric": base.tune.metric,
        "direction": base.tune.direction,
        "trials": trials,
        "best": None,
    }
    _add_costs(trials, base.tune.direction == "maximize", out)
    if study.get_trials(deepcopy=False, states=[TrialState.COMPLETE]):
        best = study.best_trial
        summary["best"] = {"number": best.number, "value": best.value, "params": best.params}
        config = trial_config(base, best.params, base.name)
        atomic_write_text(out / "best_config.yaml", config.to_yaml())
    atomic_write_json(out / "tune_summary.json", summary)
    return summary


def trial_cost(run_dir: Path) -> float | None:
    """A budgeted trial's cost in its budget's metric (latency: measured), or None."""
    summary = run_dir / "summary.json"
    cost = json.loads(summary.read_text()).get("cost") if summary.is_file() else None
    if not cost:
        return None
    return cost["latency_ms_measured"] if cost["metric"] == "latency" else cost[cost["metric"]]


def pareto_front(points: list[tuple[float, float]], maximize: bool) -> list[int]:
    """Indices of the (cost, value) points no other point beats on both: as cheap or
    cheaper and at least as good, better on one."""
    sign = 1.0 if maximize else -1.0
    front, best = [], -np.inf
    for i in sorted(range(len(points)), key=lambda i: (points[i][0], -sign * points[i][1])):
        if sign * points[i][1] > best:
            front.append(i)
            best = sign * points[i][1]
    return sorted(front)


def _add_costs(trials: list[dict[str, Any]], maximize: bool, out: Path) -> None:
    """Each budgeted trial's cost, which trials are on the accuracy-cost front, and its
    plot (pareto.png), for a study over budgets."""
    priced = []
    for t in trials:
        cost = trial_cost(Path(t["run_dir"]))
        if cost is not None and t["state"] == "complete":
            t["cost"] = cost
            priced.append(t)
    if not priced:
        return
    points = [(t["cost"], t["value"]) for t in priced]
    front = set(pareto_front(points, maximize))
    for i, t in enumerate(priced):
        t["pareto"] = i in front
    from nasax.loop.plots import pareto_figure, save_png

    save_png(pareto_figure(points, sorted(front)), out / "pareto.png")


__all__ = ["pareto_front", "run_tune", "suggest", "trial_config"]
