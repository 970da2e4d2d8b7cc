"""The search loop shared by all strategies: data, jitted steps, logs, checkpoints, progress."""

from __future__ import annotations

import time
from functools import partial
from pathlib import Path
from typing import Any

import jax
import numpy as np

from nasax.checkpoint import Checkpoints
from nasax.config import Config
from nasax.data import (
    Dataset,
    batches,
    check_batch_size,
    epoch_order,
    eval_batches,
    load_dataset,
    make_preprocess,
    search_split,
)
from nasax.io import atomic_write_json, atomic_write_npz, atomic_write_text
from nasax.optim import arch_optimizer, weight_optimizer, weight_schedule
from nasax.progress import LoopProgress
from nasax.rundir import MetricsLog, prepare_run_dir
from nasax.runloop import (
    Interrupted,
    StopRequests,
    check_resume_config,
    count_leaves,
    evaluate,
    flush_metrics,
    peak_rss_mb,
    prefetch,
)
from nasax.search.strategy import STRATEGIES, SearchSetup, Strategy
from nasax.supernet.network import SearchNetwork
from nasax.supernet.spaces import get_space


def build_setup(config: Config, dataset: Dataset, steps_per_epoch: int) -> SearchSetup:
    """The space, supernet and optimizers a strategy needs, from the config."""
    space = get_space(config.model.space)
    network = partial(
        SearchNetwork,
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
        network=lambda rngs: network(rngs=rngs),
        weight_optimizer=weight_optimizer(config.optim.weights, epochs, steps_per_epoch),
        arch_optimizer=arch_optimizer(config.optim.arch),
        learning_rate=weight_schedule(config.optim.weights, epochs, steps_per_epoch),
        preprocess=make_preprocess(dataset.mean, dataset.std, augment.crop_padding, augment.flip),
        max_skip_connect=config.search.discretizer.max_skip_connect,
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
) -> dict[str, Any]:
    """Runs a search as `config` says and writes its run directory; returns the summary.

    Args:
        config: the validated config.
        run_dir: where config.yaml, metrics.jsonl, genotype.json, alphas.npz,
            checkpoints/ and summary.json go.
        resume: continue from the last checkpoint in `run_dir`.
        overwrite: delete an existing `run_dir` first.
    """
    wall_start = time.perf_counter()
    s, rc = config.search, config.run
    dataset = load_dataset(config.data.name, config.data.data_dir, config.data.num_classes)
    train_idx, val_idx = search_split(len(dataset.x_train), s.train_portion, config.seed)
    check_batch_size(dataset, s.batch_size, len(train_idx), "weight-step half of the training set")
    check_batch_size(
        dataset, s.batch_size, len(val_idx), "architecture-step half of the training set"
    )
    run_dir = prepare_run_dir(run_dir, resume=resume, overwrite=overwrite)
    if resume:
        check_resume_config(config, run_dir)
    else:
        atomic_write_text(run_dir / "config.yaml", config.to_yaml())
    steps_per_epoch = min(len(train_idx), len(val_idx)) // s.batch_size
    total_steps = steps_per_epoch * s.epochs

    setup = build_setup(config, dataset, steps_per_epoch)
    strategy: Strategy = STRATEGIES.get(s.strategy)(setup, s.strategy_options())
    state = strategy.init(jax.random.PRNGKey(config.seed))
    checkpoints = Checkpoints(run_dir / "checkpoints", keep=rc.checkpoint_keep)
    metrics_log = MetricsLog(run_dir / "metrics.jsonl")
    start_epoch, start_batch, elapsed_before = 0, 0, 0.0
    if resume:
        state, meta = checkpoints.restore(state)
        start_epoch, start_batch = meta["epoch"], meta["batch"]
        elapsed_before = meta["elapsed"]
        metrics_log.truncate_after(meta["step"])
    alphas = _AlphaHistory(run_dir / "alphas.npz", setup.space, keep_epochs=start_epoch)

    n_params = count_leaves(state.params) if hasattr(state, "params") else None
    progress = LoopProgress(
        total_steps, s.epochs, enabled=rc.progress, label=f"search {s.strategy}"
    )
    progress.log(
        f"{dataset.name}: {len(train_idx)} + {len(val_idx)} search images, "
        f"{steps_per_epoch} steps per epoch; compiling the search step (cached for later runs)"
    )
    sample = next(batches(dataset.x_train, dataset.y_train, train_idx, s.batch_size))
    eval_sample = next(eval_batches(dataset.x_test, dataset.y_test, s.batch_size))
    compile_start = time.perf_counter()
    step_fn = jax.jit(strategy.step, donate_argnums=(0,)).lower(state, sample, sample).compile()
    eval_fn = jax.jit(strategy.evaluate).lower(state, eval_sample).compile()
    compile_seconds = time.perf_counter() - compile_start
    progress.log(f"compiled in {compile_seconds:.0f} s")

    def save(epoch: int, batch: int, step: int) -> None:
        elapsed = elapsed_before + time.perf_counter() - wall_start
        checkpoints.save(
            step, state, {"epoch": epoch, "batch": batch, "step": step, "elapsed": elapsed}
        )

    step = start_epoch * steps_per_epoch + start_batch
    pending: list[dict[str, jax.Array]] = []
    images, search_seconds = 0, 0.0
    test: dict[str, float] = {}
    try:
        with progress, StopRequests() as stop:
            progress.advance(step, start_epoch)
            for epoch in range(start_epoch, s.epochs):
                train_order = epoch_order(train_idx, config.seed, epoch, 0)
                val_order = epoch_order(val_idx, config.seed, epoch, 1)
                first = start_batch if epoch == start_epoch else 0
                stream = zip(
                    prefetch(
                        batches(dataset.x_train, dataset.y_train, train_order, s.batch_size, first)
                    ),
                    prefetch(
                        batches(dataset.x_train, dataset.y_train, val_order, s.batch_size, first)
                    ),
                )
                tick, since = time.perf_counter(), 0
                for batch_index in range(first, steps_per_epoch):
                    train_batch, val_batch = next(stream)
                    state, metrics = step_fn(state, train_batch, val_batch)
                    pending.append(metrics)
                    step, since = step + 1, since + 1
                    last = batch_index == steps_per_epoch - 1
                    if step % rc.log_every == 0 or last:
                        record = flush_metrics(pending, epoch, step)
                        seconds = time.perf_counter() - tick
                        record["images_per_sec"] = since * s.batch_size / seconds
                        images += since * s.batch_size
                        search_seconds += seconds
                        metrics_log.write(record)
                        progress.show(_shown(record))
                        tick, since = time.perf_counter(), 0
                    progress.advance(step, epoch)
                    if stop.signum is not None:
                        pending.clear()
                        save(epoch, batch_index + 1, step)
                        raise Interrupted(
                            f"interrupted at epoch {epoch + 1} step {step}; checkpoint saved in "
                            f"{run_dir}; continue with --resume --out {run_dir}"
                        )
                genotype = strategy.derive(state)
                genotype.save(run_dir / "genotype.json")
                alphas.append(strategy.arch_weights(state))
                record = {"kind": "epoch", "epoch": epoch + 1, "step": step}
                last_epoch = epoch == s.epochs - 1
                if last_epoch or (s.eval_every and (epoch + 1) % s.eval_every == 0):
                    test = evaluate(eval_fn, state, dataset.x_test, dataset.y_test, s.batch_size)
                    record.update(test_loss=test["loss"], test_acc=test["accuracy"])
                    progress.log(
                        f"epoch {epoch + 1}: test accuracy {test['accuracy']:.4f}  "
                        f"genotype normal {_short(genotype.normal)}"
                    )
                metrics_log.write(record)
                save(epoch + 1, 0, step)
    finally:
        checkpoints.close()

    if not test:  # resumed after the last epoch's checkpoint: evaluate what we have
        test = evaluate(eval_fn, state, dataset.x_test, dataset.y_test, s.batch_size)
    genotype = strategy.derive(state)
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
        "wall_seconds": elapsed_before + time.perf_counter() - wall_start,
        "compile_seconds": compile_seconds,
        "images_per_sec": images / search_seconds if search_seconds else None,
        "peak_rss_mb": peak_rss_mb(),
        "genotype": genotype.to_dict(),
    }
    atomic_write_json(run_dir / "summary.json", summary)
    return summary


def _shown(record: dict[str, Any]) -> dict[str, float]:
    keys = ("train_loss", "train_acc", "val_loss", "val_acc", "images_per_sec")
    return {k: record[k] for k in keys if k in record}


def _short(cell: tuple) -> str:
    return " ".join(f"{op}<-{src}" for node in cell for op, src in node)


__all__ = ["Interrupted", "build_setup", "flush_metrics", "run_search"]
