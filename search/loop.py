"""The search loop shared by all strategies: data, jitted steps, logs, checkpoints, progress."""

from __future__ import annotations

import itertools
import json
import time
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from nasax.blocks import compile_program, jit_for, resolve_execution, resolve_remat
from nasax.checkpoint import Checkpoints
from nasax.config import Config
from nasax.data import (
    Batch,
    Dataset,
    batches,
    check_batch_size,
    epoch_order,
    load_dataset,
    make_preprocess,
    search_split,
)
from nasax.io import atomic_write_json, atomic_write_npz, atomic_write_text
from nasax.optim import arch_optimizer, weight_optimizer, weight_schedule
from nasax.parallel import DataParallel, data_parallel
from nasax.progress import LoopProgress
from nasax.rundir import MetricsLog, open_run_dir
from nasax.runloop import (
    check_finite,
    check_resume_config,
    checkpoint_writer,
    closing_all,
    count_leaves,
    evaluate,
    guard_step,
    is_eval_epoch,
    peak_rss_mb,
    pending_to_host,
    prefetch,
    restore_or_start,
    run_epochs,
)
from nasax.search.single_path import genotype_paths
from nasax.search.strategy import STRATEGIES, SearchSetup, Strategy
from nasax.supernet.genotypes import Genotype
from nasax.supernet.skeletons import skeleton_of
from nasax.supernet.spaces import get_space
from nasax.views import RunViews

_COMPILED: dict[str, tuple[Any, Any]] = {}
"""Compiled (step, evaluate) programs of this process by `program_key`, newest last."""
_COMPILED_KEEP = 2


def program_key(config: Config, dataset: Dataset, steps_per_epoch: int, dp: DataParallel) -> str:
    """Everything the compiled search programs depend on, so a later run in the same
    process (a resume, another trial) reuses them instead of compiling again.

    The seed and the `run` section (apart from `nonfinite`, `execution` and `remat`) only change
    the state or the host side, not the programs.
    """
    resolved = config.to_dict()
    for key in ("name", "seed", "run", "tune"):
        resolved.pop(key, None)
    return json.dumps(
        {
            "config": resolved,
            "nonfinite": config.run.nonfinite,
            "execution": resolve_execution(config.run.execution),
            "remat": resolve_remat(config.run.remat, config.run.execution),
            "data": [
                list(dataset.image_shape),
                str(dataset.x_train.dtype),
                dataset.num_classes,
                np.asarray(dataset.mean).tolist(),
                np.asarray(dataset.std).tolist(),
            ],
            "steps_per_epoch": steps_per_epoch,
            "devices": [str(d) for d in dp.mesh.devices.flat],
        },
        sort_keys=True,
    )


def build_setup(config: Config, dataset: Dataset, steps_per_epoch: int) -> SearchSetup:
    """The space, supernet and optimizers a strategy needs, from the config."""
    space = get_space(config.model.space)
    network = partial(
        skeleton_of(space).search_network,
        space,
        channels=config.model.channels,
        layers=config.model.layers,
        num_classes=dataset.num_classes,
        in_channels=dataset.image_shape[-1],
        stem_multiplier=config.model.stem_multiplier,
    )
    epochs = config.search.epochs
    augment = config.data.augment
    return SearchSetup(
        space=space,
        network=lambda rngs, **options: network(rngs=rngs, **options),
        weight_optimizer=weight_optimizer(config.optim.weights, epochs, steps_per_epoch),
        arch_optimizer=arch_optimizer(config.optim.arch, epochs * steps_per_epoch),
        learning_rate=weight_schedule(config.optim.weights, epochs, steps_per_epoch),
        preprocess=make_preprocess(dataset.mean, dataset.std, augment.crop_padding, augment.flip),
        max_skip_connect=config.search.discretizer.max_skip_connect,
        epochs=epochs,
        steps_per_epoch=steps_per_epoch,
        jit=jit_for(config.run.execution),
    )


class _AlphaHistory:
    """Architecture weights per epoch, rewritten atomically to alphas.npz each epoch."""

    def __init__(self, path: Path, space: Any, keep_epochs: int) -> None:
        self.path = path
        self.rows: dict[str, list[np.ndarray]] = {}
        self.extra = {
            "ops": np.array(space.ops),
            "edges": np.array(space.edges, dtype=np.int32),
        }
        if keep_epochs and path.exists():
            with np.load(path) as f:
                self.rows = {k: list(f[k][:keep_epochs]) for k in f.files if k not in self.extra}

    def append(self, weights: dict[str, np.ndarray]) -> None:
        for k, v in weights.items():
            self.rows.setdefault(k, []).append(np.asarray(v))
        atomic_write_npz(self.path, **{k: np.stack(v) for k, v in self.rows.items()}, **self.extra)


def run_search(
    config: Config,
    run_dir: str | Path,
    *,
    resume: bool = False,
    overwrite: bool = False,
    on_epoch: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Runs a search as `config` says and writes its run directory; returns the summary.

    Args:
        config: the validated config.
        run_dir: where config.yaml, metrics.jsonl, genotype.json, alphas.npz,
            checkpoints/ and summary.json go.
        resume: continue from the last checkpoint in `run_dir`.
        overwrite: delete an existing `run_dir` first.
        on_epoch: called with each finished epoch's figures (`runloop.epoch_summary`).
    """
    wall_start = time.perf_counter()
    s, rc = config.search, config.run
    dataset = load_dataset(config.data.name, config.data.data_dir, config.data.num_classes)
    train_idx, val_idx = search_split(len(dataset.x_train), s.train_portion, config.seed)
    check_batch_size(dataset, s.batch_size, len(train_idx), "weight-step half of the training set")
    check_batch_size(
        dataset, s.batch_size, len(val_idx), "architecture-step half of the training set"
    )
    with open_run_dir(run_dir, resume=resume, overwrite=overwrite, command="search") as run_dir:
        if resume:
            check_resume_config(config, run_dir)
        else:
            atomic_write_text(run_dir / "config.yaml", config.to_yaml())
        steps_per_epoch = min(len(train_idx), len(val_idx)) // s.batch_size
        total_steps = steps_per_epoch * s.epochs
        dp = data_parallel(rc, {"search.batch_size": s.batch_size})

        setup = build_setup(config, dataset, steps_per_epoch)
        strategy: Strategy = STRATEGIES.get(s.strategy)(setup, s.strategy_options())
        state = strategy.init(jax.random.PRNGKey(config.seed))
        checkpoints = Checkpoints(run_dir / "checkpoints", keep=rc.checkpoint_keep)
        views = RunViews(run_dir, tensorboard=rc.tensorboard, plots=rc.plots)
        metrics_log = MetricsLog(run_dir / "metrics.jsonl", sinks=views.sinks)
        resumed = restore_or_start(checkpoints, metrics_log, state, resume)
        state = dp.put_state(resumed.state)
        alphas = _AlphaHistory(run_dir / "alphas.npz", setup.space, keep_epochs=resumed.start[0])

        n_params = count_leaves(state.params) if hasattr(state, "params") else None
        progress = LoopProgress(
            total_steps, s.epochs, enabled=rc.progress, label=f"search {s.strategy}"
        )
        progress.log(
            f"{dataset.name}: {len(train_idx)} + {len(val_idx)} search images, "
            f"{steps_per_epoch} steps per epoch"
            + (f", each batch split over {dp.size} devices" if dp.size > 1 else "")
            + "; compiling the search step (cached for later runs)"
        )
        sample = dp.put_batch(
            next(batches(dataset.x_train, dataset.y_train, train_idx, s.batch_size))
        )
        compile_start = time.perf_counter()
        key = program_key(config, dataset, steps_per_epoch, dp)
        if key not in _COMPILED:
            step = guard_step(strategy.step, rc)
            _COMPILED[key] = (
                # No weight steps (epochs 0: trained weights came with the config): no program.
                compile_program(
                    step, (state, sample, sample), rc.execution, donate=True, remat=rc.remat
                )
                if s.epochs
                else None,
                # Compiled at the first evaluation, so the first step comes sooner.
                jit_for(rc.execution)(strategy.evaluate),
                None
                if strategy.evaluate_cell is None
                else jit_for(rc.execution)(strategy.evaluate_cell),
            )
            while len(_COMPILED) > _COMPILED_KEEP:
                _COMPILED.pop(next(iter(_COMPILED)))
        step_fn, eval_fn, cell_eval_fn = _COMPILED[key]
        compile_seconds = time.perf_counter() - compile_start
        to_first_step = time.perf_counter() - wall_start
        progress.log(f"compiled in {compile_seconds:.0f} s")

        def epoch_batches(epoch: int, first: int) -> Iterator[tuple[Batch, Batch]]:
            streams = [
                prefetch(
                    batches(
                        dataset.x_train,
                        dataset.y_train,
                        epoch_order(idx, config.seed, epoch, stream),
                        s.batch_size,
                        first,
                    ),
                    put=dp.put_batch,
                )
                for stream, idx in enumerate((train_idx, val_idx))
            ]
            return zip(*streams)

        test: dict[str, float] = {}
        derived: dict[str, Genotype] = {}

        def select_batches() -> Iterator[Batch]:
            """The validation half in a fixed order, for strategies that score candidates."""
            return map(
                dp.put_batch, batches(dataset.x_train, dataset.y_train, val_idx, s.batch_size)
            )

        selection = {"seconds": 0.0, "calls": 0}

        def test_metrics(state: Any, genotype: Genotype | None) -> dict[str, float]:
            """Test loss and accuracy: of the selected cell where the strategy can run one
            cell (`evaluate_cell`), else of the supernet as its `evaluate` says."""
            fn = eval_fn
            if cell_eval_fn is not None and genotype is not None:
                paths = {
                    k: jnp.asarray(p) for k, p in genotype_paths(genotype, setup.space).items()
                }
                fn = partial(_with_paths, cell_eval_fn, paths)
            return evaluate(
                fn, state, dataset.x_test, dataset.y_test, s.batch_size, put=dp.put_batch
            )

        def current_genotype(state: Any) -> Genotype:
            if strategy.select is None:
                return strategy.derive(state)
            tick = time.perf_counter()
            genotype = strategy.select(state, select_batches())
            selection["seconds"] += time.perf_counter() - tick
            selection["calls"] += 1
            return genotype

        def phase_batches(epoch: int) -> Iterator[Batch]:
            """Validation batches for a strategy's after-epoch phase, reshuffled per pass."""
            for sweep in itertools.count():
                order = epoch_order(val_idx, config.seed, epoch * 1_000 + sweep, stream=2)
                for batch in batches(dataset.x_train, dataset.y_train, order, s.batch_size):
                    yield dp.put_batch(batch)

        def after_epoch(state: Any, epoch: int, step: int) -> tuple[Any, list[dict[str, Any]]]:
            tick = time.perf_counter()
            state, pending = strategy.after_epoch(state, phase_batches(epoch))
            if not pending:
                return state, []
            names = list(pending[0])  # the strategy's order (the host copy sorts them)
            host = pending_to_host(pending)
            check_finite(host, epoch, step)
            seconds = time.perf_counter() - tick
            record = {k: float(np.mean([h[k] for h in host])) for k in host[0]}
            record.update(kind="phase", epoch=epoch + 1, step=step, phase_steps=len(host))
            record["phase_steps_per_sec"] = len(host) / seconds
            progress.log(
                f"epoch {epoch + 1}: {len(host)} {s.strategy} phase steps, "
                + "  ".join(f"{k} {record[k]:.4g}" for k in names[:3])
            )
            return state, [record]

        def end_epoch(state: Any, epoch: int, step: int) -> dict[str, Any]:
            evaluating = is_eval_epoch(epoch, s.epochs, s.eval_every)
            weights = strategy.arch_weights(state)
            alphas.append(weights)
            views.arch_epoch(weights, setup.space.ops, np.array(setup.space.edges), epoch, step)
            if strategy.select is None or evaluating:  # selection costs a sweep of candidates
                genotype = derived["latest"] = current_genotype(state)
                genotype.save(run_dir / "genotype.json")
            if evaluating:
                test.update(test_metrics(state, derived.get("latest")))
                progress.log(
                    f"epoch {epoch + 1}: test accuracy {test['accuracy']:.4f}  "
                    f"genotype {_describe(genotype)}"
                )
                return {"test_loss": test["loss"], "test_acc": test["accuracy"]}
            return {}

        deadline = None if rc.time_limit is None else wall_start + rc.time_limit - resumed.elapsed
        with closing_all(checkpoints.close, views.close):
            result = run_epochs(
                state,
                step_fn,
                epoch_batches,
                epochs=s.epochs,
                steps_per_epoch=steps_per_epoch,
                batch_size=s.batch_size,
                start=resumed.start,
                pending=resumed.pending,
                run=rc,
                kind="search",
                metrics_log=metrics_log,
                progress=progress,
                save=checkpoint_writer(checkpoints, resumed.elapsed, wall_start),
                end_epoch=end_epoch,
                shown=("train_loss", "train_acc", "val_loss", "val_acc", "images_per_sec"),
                resume_hint=f"continue with: nasax search CONFIG --resume --out {run_dir}",
                deadline=deadline,
                after_epoch=after_epoch if strategy.after_epoch is not None else None,
                on_epoch=on_epoch,
            )
            views.arch_history(alphas.rows, setup.space.ops, np.array(setup.space.edges))
        state, step, images, search_seconds = result[:4]

        genotype = derived.get("latest") or current_genotype(state)
        if not test or result.stopped_early:  # evaluate the state the search ended with
            test = test_metrics(state, genotype)
        genotype.save(run_dir / "genotype.json")
        summary = {
            "kind": "search",
            "strategy": s.strategy,
            "dataset": dataset.name,
            "seed": config.seed,
            "epochs": s.epochs,
            "steps": step,
            "batch_size": s.batch_size,
            "test_loss": test["loss"],
            "test_accuracy": test["accuracy"],
            "params": n_params,
            "wall_seconds": resumed.elapsed + time.perf_counter() - wall_start,
            "compile_seconds": compile_seconds,
            "seconds_to_first_step": to_first_step,
            "images_per_sec": images / search_seconds if search_seconds else None,
            "peak_rss_mb": peak_rss_mb(),
            "select_seconds": selection["seconds"] if selection["calls"] else None,
            "select_calls": selection["calls"],
            "genotype": genotype.to_dict(),
            "genotype_text": _describe(genotype),
            "stopped_early": result.stopped_early,
            "time_limit": rc.time_limit,
        }
        atomic_write_json(run_dir / "summary.json", summary)
        return summary


def _with_paths(cell_eval_fn: Callable, paths: dict[str, jax.Array], state: Any, batch: Batch):
    """`cell_eval_fn` with its cell fixed, in the (state, batch) form `evaluate` calls."""
    return cell_eval_fn(state, paths, batch)


def _describe(genotype: Genotype) -> str:
    """One line: the arch string of one-cell spaces (NAS-Bench-201 can look it up), else
    the normal cell's `op<-input` pairs."""
    if len(get_space(genotype.space).cell_kinds) == 1:
        return genotype.to_arch_string()
    return "normal " + " ".join(f"{op}<-{src}" for node in genotype.normal for op, src in node)


__all__ = ["build_setup", "run_search"]
