"""`nasax tune`: Bayesian tuning of a run's knobs with optuna (TPE, median pruning).

The config's `tune` section names the knobs (dotted config keys with a range or
choices), what each trial runs (`search` or `train`) and the epoch figure to optimise.
Every trial is an ordinary nasax run in `<out>/trial_NNN`, NNN the study's trial number;
its epoch figures are reported to the pruner as it goes. The study lives in
`<out>/study.db` (SQLite), so rerunning the same command continues an interrupted tuning.

With `--storage` (a PostgreSQL or MySQL URL, or `journal:PATH` on a shared filesystem)
any number of workers on any number of machines run one study, each with the same
command (and its own `--out`, or a shared one). The storage hands each trial number to
one worker; `tune.trials` is the study's total; a trial whose worker died is failed and
run again (see `nasax.app.study_storage`).
"""

from __future__ import annotations

import contextlib
import json
import logging
import socket
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from nasax.app.study_storage import (
    Liveness,
    ask,
    fail_stale_trials,
    heartbeat,
    open_storage,
    retry_callback,
    storage_failures,
)
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


def _study(base: Config, storage: Any, shared: bool) -> Any:
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
    study = optuna.create_study(
        storage=storage,
        study_name=base.name,
        direction=tune.direction,
        pruner=pruner,
        load_if_exists=True,
    )
    if shared:
        # Workers interleave, so no seed makes the draws reproducible; each worker draws
        # its own, and the constant liar steers them away from the trials still running.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            study.sampler = optuna.samplers.TPESampler(constant_liar=True)
    else:
        # Seeded by the trials so far, so a resumed tuning does not replay the same draws.
        study.sampler = optuna.samplers.TPESampler(seed=base.seed + len(study.trials))
    return study


SAME_STUDY_KEYS = ("trials", "retries", "heartbeat_seconds", "grace_seconds")
"""`tune` keys a continued study may change: its size, and how workers watch each other."""


def _comparable(config: Config) -> dict[str, Any]:
    data = config.to_dict()
    for key in SAME_STUDY_KEYS:
        data["tune"].pop(key)
    data.pop("run")
    return data


def _check_same_config(base: Config, out: Path) -> None:
    """A continued study must tune the same config (its trial count may grow)."""
    saved = out / "tune_config.yaml"
    if saved.exists():
        before = validate_config(yaml.safe_load(saved.read_text()), str(saved))
        if _comparable(before) != _comparable(base):
            raise RunDirError(
                f"{out} holds a tuning of another config (see {saved}); use the same config "
                "to continue it, or another --out"
            )
    else:
        atomic_write_text(saved, base.to_yaml())


def _check_same_study(base: Config, study: Any, where: str) -> None:
    """Every worker of a study must tune the same config; the first one records it."""
    mine = json.loads(json.dumps(_comparable(base)))  # as the storage gives it back
    tuned = study.user_attrs.get("nasax_config")
    if tuned is None:
        study.set_user_attr("nasax_config", mine)
        tuned = study.user_attrs.get("nasax_config")  # a worker starting now may have won
    if tuned != mine:
        raise ConfigError(
            f"study {base.name!r} in {where} tunes another config; use the same config to "
            "join it, or another `name`"
        )


def run_tune(
    base: Config, out: str | Path, *, storage: str | None = None, log: Any = print
) -> dict[str, Any]:
    """Runs (or continues) the study until `tune.trials` trials have ended; returns the
    summary also written to `out/tune_summary.json`.

    Without `storage` the study is `out/study.db`, and the study folder is locked while
    it runs (each trial's run directory too, while the trial runs), so a second tuning
    of it, or a manual `--resume` of a running trial, is refused; a trial left running
    by a killed tuning is failed when the tuning is rerun.

    With `storage` (an optuna database URL or `journal:PATH`), this process is one
    worker of a study that others may run at the same time, from other machines:

    - `tune.trials` is the study's total: a worker starts a trial while fewer than
      that many have ended (complete or pruned) or are running, and waits while the
      rest are running elsewhere (one of them may still fail). Failed trials do not
      count. Of two workers that both saw room for the last trial, the one holding the
      higher trial number gives its trial up (failed, marked `nasax_skipped`, never run).
    - Each trial number belongs to the worker optuna's storage gave it; its run
      directory is `out/trial_NNN`, so workers sharing `out` never share a directory.
    - A running trial's worker marks it alive every `tune.heartbeat_seconds`; a trial
      not marked for `tune.grace_seconds` (its worker was killed, its machine lost) is
      failed by the next worker that looks, and queued to run again with the same
      values under a new number, at most `tune.retries` times.

    In both cases a trial that stopped because its process died is run again the same
    way; a trial that diverged (NaN) is failed and replaced by a new draw; a full disk
    stops the tuning, not just a trial.
    """
    if base.tune is None or not base.tune.params:
        raise ConfigError("nasax tune needs a `tune` section with at least one knob in params")
    check_knobs(base)
    out = Path(out)
    tune = base.tune
    if storage is None:
        with lock_on_process_zero(out, "tune"), storage_errors(out / "study.db", "update"):
            out.mkdir(parents=True, exist_ok=True)
            url = f"sqlite:///{(out / 'study.db').absolute()}"
            return _run_study(base, out, open_storage(url, None), None, log)
    liveness = Liveness(tune.heartbeat_seconds, tune.grace_seconds, tune.retries)
    with storage_failures(storage):
        study_storage = open_storage(storage, liveness)
        out.mkdir(parents=True, exist_ok=True)
        return _run_study(base, out, study_storage, storage, log)


def _run_study(
    base: Config, out: Path, storage: Any, shared: str | None, log: Any
) -> dict[str, Any]:
    """The tuning loop; `shared` is the storage URL other workers may use, else None."""
    import optuna
    from optuna.exceptions import UpdateFinishedTrialError
    from optuna.trial import TrialState

    tune: TuneConfig = base.tune
    _check_same_config(base, out)
    study = _study(base, storage, shared is not None)
    _check_same_study(base, study, shared or str(out / "study.db"))
    if shared is None:  # this process holds the study: a running trial is a killed one
        retry = retry_callback(tune.retries)
        for stale in study.get_trials(deepcopy=False, states=[TrialState.RUNNING]):
            study.tell(stale.number, state=TrialState.FAIL)
            if retry is not None:
                retry(study, _trial(study, stale.number))
    runner = RUNNERS.get(tune.command)
    programs = ProgramCache()  # a trial whose values change no program reuses the last ones
    ended = (TrialState.COMPLETE, TrialState.PRUNED)
    host = socket.gethostname()
    waiting = False

    def count(*states: TrialState, below: int | None = None) -> int:
        trials = study.get_trials(deepcopy=False, states=states)
        return sum(below is None or t.number < below for t in trials)

    def done() -> int:
        return count(*ended)

    def fail(trial: Any) -> None:
        with contextlib.suppress(UpdateFinishedTrialError):  # another worker failed it
            study.tell(trial, state=TrialState.FAIL)

    while True:
        fail_stale_trials(study)  # with heartbeats only: dead workers' trials, queued again
        if done() >= tune.trials:
            break
        running = count(TrialState.RUNNING)
        if done() + running >= tune.trials:  # the rest run elsewhere; one may still fail
            if not waiting:
                log(f"tune: waiting for the trials other workers run ({running})")
            waiting = True
            time.sleep(tune.heartbeat_seconds)
            continue
        waiting = False
        trial = ask(study)
        ahead = (*ended, TrialState.RUNNING, TrialState.WAITING)
        if count(*ahead, below=trial.number) >= tune.trials:  # another worker took the last
            trial.set_user_attr("nasax_skipped", True)
            study.tell(trial, state=TrialState.FAIL)
            continue
        values = {k: suggest(trial, k, p) for k, p in tune.params.items()}
        name = f"trial_{trial.number:03d}"
        run_dir = out / name
        trial.set_user_attr("run_dir", str(run_dir.absolute()))
        trial.set_user_attr("host", host)
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

        retried = _trial(study, trial.number).system_attrs.get("retry_history")
        again = f", trial_{retried[-1]:03d} again: its worker died" if retried else ""
        log(f"tune {name} ({done() + 1}/{tune.trials}{again}): {_show(values)}")
        try:
            with heartbeat(storage, trial):
                runner(config, run_dir, overwrite=True, on_epoch=report, programs=programs)
            cost = trial_cost(run_dir)
            if cost is not None:  # in the study, for workers on other machines
                trial.set_user_attr("cost", cost)
            study.tell(trial, float(final[tune.metric]))
        except optuna.TrialPruned:
            study.tell(trial, state=TrialState.PRUNED)
            log(f"tune {name}: pruned after epoch {final.get('epoch')}")
        except UpdateFinishedTrialError:  # no heartbeat reached the storage in time
            log(
                f"tune {name}: another worker failed it (no heartbeat for "
                f"{tune.grace_seconds} s); this result is dropped"
            )
        except Interrupted as e:
            fail(trial)
            _write_summary(study, base, out)
            again = f"with --out {out}" if shared is None else "(the same --storage)"
            raise Interrupted(
                f"tuning stopped during {name} ({done()} of {tune.trials} trials done); rerun "
                f"the same command {again} to continue",
                e.signum,
            ) from None
        except (ConfigError, StorageError, RunDirBusy):  # no later trial would fare better
            with contextlib.suppress(Exception):  # a full disk refuses this too; a rerun does it
                study.tell(trial, state=TrialState.FAIL)
            raise
        except NasaxError as e:  # a diverging trial (NaN) is a failed trial, not the end
            fail(trial)
            log(f"tune {name}: failed: {e}")
        else:
            log(f"tune {name}: {tune.metric} {final[tune.metric]:.4f}")
        _write_summary(study, base, out)
    return _write_summary(study, base, out)


def _trial(study: Any, number: int) -> Any:
    """The study's trial `number`, as it is now."""
    return next(t for t in study.get_trials(deepcopy=False) if t.number == number)


def _show(values: dict[str, Any]) -> str:
    return "  ".join(
        f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in values.items()
    )


def _write_summary(study: Any, base: Config, out: Path) -> dict[str, Any]:
    """tune_summary.json (every trial) and best_config.yaml (the best trial's config)."""
    from optuna.trial import TrialState

    trials = [_trial_summary(t, out) for t in study.get_trials(deepcopy=False)]
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


def _trial_summary(trial: Any, out: Path) -> dict[str, Any]:
    """One trial's line of tune_summary.json; its run directory is on the machine `host`."""
    skipped = trial.user_attrs.get("nasax_skipped", False)
    run_dir = trial.user_attrs.get("run_dir", str(out / f"trial_{trial.number:03d}"))
    return {
        "number": trial.number,
        "state": "skipped" if skipped else trial.state.name.lower(),
        "value": trial.value,
        "params": trial.params,
        "epochs_reported": len(trial.intermediate_values),
        "run_dir": None if skipped else run_dir,
        "host": trial.user_attrs.get("host"),
        "cost": trial.user_attrs.get("cost"),
    }


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
        if t["state"] != "complete":
            continue
        cost = t.get("cost")  # in the study since trials record it; before, in the run
        if cost is None:
            cost = trial_cost(Path(t["run_dir"]))
        if cost is not None:
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
