"""The retraining loop: a genotype trained from scratch with the DARTS protocol."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path
from typing import Any

import jax
import numpy as np
import yaml

from nasax.blocks import compile_program, jit_for
from nasax.checkpoint import Checkpoints
from nasax.config import Config, validate_config
from nasax.data import (
    Batch,
    Dataset,
    batches,
    check_batch_size,
    epoch_order,
    load_dataset,
    make_preprocess,
)
from nasax.errors import ConfigError, GenotypeError, RunDirError
from nasax.io import atomic_write_json, atomic_write_text
from nasax.optim import weight_optimizer, weight_schedule
from nasax.parallel import data_parallel
from nasax.progress import LoopProgress
from nasax.rundir import MetricsLog, open_run_dir
from nasax.runlock import RunLock, share_run_dir
from nasax.runloop import (
    check_resume_config,
    checkpoint_writer,
    closing_all,
    evaluate,
    guard_step,
    is_eval_epoch,
    peak_rss_mb,
    prefetch,
    restore_or_start,
    run_epochs,
)
from nasax.supernet.discrete import param_counts
from nasax.supernet.genotypes import Genotype, load_genotype
from nasax.supernet.skeletons import skeleton_of
from nasax.supernet.spaces import get_space
from nasax.train.trainer import Regularizers, Trainer, TrainState
from nasax.views import RunViews


def check_train_config(config: Config) -> None:
    """Refuses `train` options the space's skeleton cannot build, before a run starts."""
    space = get_space(config.model.space)
    t = config.train
    if t.auxiliary and t.auxiliary_weight > 0 and not skeleton_of(space).auxiliary:
        raise ConfigError(
            f"train.auxiliary: the {space.skeleton} network of space {space.name!r} has no "
            "auxiliary head; set train.auxiliary=false"
        )


def build_trainer(config: Config, genotype: Genotype, dataset: Dataset) -> Trainer:
    """The network, optimizer, preprocessing and regularisers a retraining run uses; the
    network comes from the skeleton of the genotype's space."""
    t, m = config.train, config.model
    steps_per_epoch = len(dataset.x_train) // t.batch_size
    network = partial(
        skeleton_of(genotype.resolve_space()).discrete_network,
        genotype,
        num_classes=dataset.num_classes,
        channels=m.channels,
        layers=m.layers,
        in_channels=dataset.image_shape[-1],
        stem_multiplier=m.stem_multiplier,
        auxiliary=t.auxiliary and t.auxiliary_weight > 0,
    )
    augment = config.data.augment
    return Trainer.create(
        lambda rngs: network(rngs=rngs),
        optimizer=weight_optimizer(config.optim.weights, t.epochs, steps_per_epoch),
        learning_rate=weight_schedule(config.optim.weights, t.epochs, steps_per_epoch),
        preprocess=make_preprocess(dataset.mean, dataset.std, augment.crop_padding, augment.flip),
        regularizers=Regularizers(
            t.drop_path, t.auxiliary_weight if t.auxiliary else 0.0, t.cutout
        ),
        steps_per_epoch=steps_per_epoch,
        epochs=t.epochs,
    )


def _resolve_genotype(
    config: Config, genotype: Genotype | str | None, run_dir: Path, resume: bool
) -> Genotype:
    """The genotype to train: given, named in the config, or (resuming) the run's own."""
    if isinstance(genotype, str):
        genotype = load_genotype(genotype)
    if resume:
        saved = Genotype.load(run_dir / "genotype.json")
        if genotype is not None and genotype != saved:
            raise RunDirError(
                f"cannot resume {run_dir}: it trains a different genotype than the one given; "
                "resume without --genotype or with the same one"
            )
        return saved
    if genotype is None and config.train.genotype is not None:
        genotype = load_genotype(config.train.genotype)
    if genotype is None:
        raise GenotypeError(
            "no genotype to train: pass --genotype PATH_OR_NAME (a genotype.json, a search run "
            "directory, or a published name such as DARTS_V2) or set train.genotype"
        )
    return genotype.validate()


def run_train(
    config: Config,
    run_dir: str | Path,
    *,
    genotype: Genotype | str | None = None,
    resume: bool = False,
    overwrite: bool = False,
    on_epoch: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Retrains a genotype from scratch as `config` says; returns the summary.

    Args:
        config: the validated config (its `train`, `model`, `data`, `optim` sections).
        run_dir: where config.yaml, genotype.json, metrics.jsonl, checkpoints/ and
            summary.json go.
        genotype: a Genotype, a genotype.json path, a search run directory, or a
            published name; default `train.genotype` (or, resuming, the run's own).
        resume: continue from the last checkpoint in `run_dir`.
        overwrite: delete an existing `run_dir` first.
        on_epoch: called with each finished epoch's figures (`runloop.epoch_summary`).
    """
    wall_start = time.perf_counter()
    t, rc = config.train, config.run
    check_train_config(config)
    dataset = load_dataset(config.data.name, config.data.data_dir, config.data.num_classes)
    check_batch_size(dataset, t.batch_size, len(dataset.x_train), "training set")
    if not resume:
        genotype = _resolve_genotype(config, genotype, Path(run_dir), resume=False)
        genotype.validate(get_space(config.model.space))
    with open_run_dir(run_dir, resume=resume, overwrite=overwrite, command="train") as run_dir:
        if resume:
            genotype = _resolve_genotype(config, genotype, run_dir, resume=True)
            check_resume_config(config, run_dir, ignore=("train.genotype",))
        else:
            atomic_write_text(run_dir / "config.yaml", config.to_yaml())
            genotype.save(run_dir / "genotype.json")

        trainer = build_trainer(config, genotype, dataset)
        steps_per_epoch, total_steps = trainer.steps_per_epoch, trainer.steps_per_epoch * t.epochs
        dp = data_parallel(rc, {"train.batch_size": t.batch_size})
        state = trainer.init(jax.random.PRNGKey(config.seed))
        checkpoints = Checkpoints(run_dir / "checkpoints", keep=rc.checkpoint_keep)
        views = RunViews(run_dir, tensorboard=rc.tensorboard, plots=False)
        metrics_log = MetricsLog(run_dir / "metrics.jsonl", sinks=views.sinks)
        resumed = restore_or_start(checkpoints, metrics_log, state, resume)
        state = dp.put_state(resumed.state)

        counts = param_counts(trainer.module(state))
        progress = LoopProgress(total_steps, t.epochs, enabled=rc.progress, label="train")
        progress.log(
            f"{dataset.name}: {len(dataset.x_train)} training images, {steps_per_epoch} steps per "
            f"epoch; {counts['params']:,} parameters (+{counts['params_auxiliary']:,} auxiliary); "
            "compiling the training step (cached for later runs)"
        )
        order = np.arange(len(dataset.x_train))
        sample = dp.put_batch(next(batches(dataset.x_train, dataset.y_train, order, t.batch_size)))
        compile_start = time.perf_counter()
        step = guard_step(trainer.step, rc)
        step_fn = compile_program(step, (state, sample), rc.execution, donate=True, remat=rc.remat)
        eval_fn = jit_for(rc.execution)(trainer.evaluate)  # compiled at the first evaluation
        compile_seconds = time.perf_counter() - compile_start
        progress.log(f"compiled in {compile_seconds:.0f} s")

        def epoch_batches(epoch: int, first: int) -> Iterator[tuple[Batch]]:
            idx = epoch_order(order, config.seed, epoch, 0)
            stream = prefetch(
                batches(dataset.x_train, dataset.y_train, idx, t.batch_size, first),
                put=dp.put_batch,
            )
            return ((batch,) for batch in stream)

        test: dict[str, float] = {}

        def end_epoch(state: TrainState, epoch: int, step: int) -> dict[str, Any]:
            if is_eval_epoch(epoch, t.epochs, t.eval_every):
                test.update(
                    evaluate(
                        eval_fn,
                        state,
                        dataset.x_test,
                        dataset.y_test,
                        t.batch_size,
                        put=dp.put_batch,
                    )
                )
                progress.log(
                    f"epoch {epoch + 1}: test accuracy {test['accuracy']:.4f}, "
                    f"loss {test['loss']:.4f}"
                )
                return {"test_loss": test["loss"], "test_acc": test["accuracy"]}
            return {}

        deadline = None if rc.time_limit is None else wall_start + rc.time_limit - resumed.elapsed
        with closing_all(checkpoints.close, views.close):
            result = run_epochs(
                state,
                step_fn,
                epoch_batches,
                epochs=t.epochs,
                steps_per_epoch=steps_per_epoch,
                batch_size=t.batch_size,
                start=resumed.start,
                pending=resumed.pending,
                run=rc,
                kind="train",
                metrics_log=metrics_log,
                progress=progress,
                save=checkpoint_writer(checkpoints, resumed.elapsed, wall_start),
                end_epoch=end_epoch,
                shown=("train_loss", "train_acc", "images_per_sec"),
                resume_hint=f"continue with: nasax train CONFIG --resume --out {run_dir}",
                deadline=deadline,
                on_epoch=on_epoch,
            )
        state, step, images, train_seconds = result[:4]

        if not test or result.stopped_early:  # evaluate the state the training ended with
            test = evaluate(
                eval_fn, state, dataset.x_test, dataset.y_test, t.batch_size, put=dp.put_batch
            )
        summary = {
            "kind": "train",
            "dataset": dataset.name,
            "seed": config.seed,
            "epochs": t.epochs,
            "steps": step,
            "batch_size": t.batch_size,
            "test_loss": test["loss"],
            "test_accuracy": test["accuracy"],
            **counts,
            "wall_seconds": resumed.elapsed + time.perf_counter() - wall_start,
            "compile_seconds": compile_seconds,
            "images_per_sec": images / train_seconds if train_seconds else None,
            "peak_rss_mb": peak_rss_mb(),
            "genotype": genotype.to_dict(),
            "stopped_early": result.stopped_early,
            "time_limit": rc.time_limit,
        }
        atomic_write_json(run_dir / "summary.json", summary)
        return summary


def load_train_run(
    run_dir: str | Path,
) -> tuple[Config, Genotype, Dataset, Trainer, TrainState, dict]:
    """Config, genotype, data, trainer and the latest checkpointed state of a retraining run."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise RunDirError(f"run directory {run_dir} does not exist")
    config_path, genotype_path = run_dir / "config.yaml", run_dir / "genotype.json"
    if not config_path.is_file() or not genotype_path.is_file():
        raise RunDirError(
            f"{run_dir} is not a retraining run directory (it needs config.yaml and "
            "genotype.json from nasax train)"
        )
    if not (run_dir / "checkpoints").is_dir() or (run_dir / "alphas.npz").exists():
        kind = "a search run" if (run_dir / "alphas.npz").exists() else "a run without checkpoints"
        raise RunDirError(
            f"{run_dir} is {kind}, not a retraining run; retrain its cell first: "
            f"nasax train CONFIG --genotype {genotype_path}"
        )
    config = validate_config(yaml.safe_load(config_path.read_text()), str(config_path))
    genotype = Genotype.load(genotype_path)
    dataset = load_dataset(config.data.name, config.data.data_dir, config.data.num_classes)
    trainer = build_trainer(config, genotype, dataset)
    checkpoints = Checkpoints(run_dir / "checkpoints", keep=config.run.checkpoint_keep)
    try:
        if checkpoints.latest_step() is None:
            raise RunDirError(f"{run_dir}/checkpoints holds no checkpoint yet")
        state, meta = checkpoints.restore(trainer.init(jax.random.PRNGKey(config.seed)))
    finally:
        checkpoints.close()
    return config, genotype, dataset, trainer, state, meta


def reading_run(run_dir: str | Path) -> RunLock:
    """The shared lock of a run directory, for commands that read its checkpoints: a run
    still writing them is refused. A directory that is not there is left to the checks."""
    return share_run_dir(run_dir) if Path(run_dir).is_dir() else RunLock(Path(run_dir), None)


def evaluate_run(run_dir: str | Path, *, progress: bool = False) -> dict[str, Any]:
    """Test loss and top-1 of the latest checkpoint of a finished or interrupted retraining.

    Raises:
        RunDirBusy: the run is still running (its checkpoints may change while read).
    """
    with reading_run(run_dir):
        config, _, dataset, trainer, state, meta = load_train_run(run_dir)
    eval_fn = jit_for(config.run.execution)(trainer.evaluate)
    test = evaluate(
        eval_fn,
        state,
        dataset.x_test,
        dataset.y_test,
        config.train.batch_size,
        progress="evaluate" if progress else None,
    )
    return {
        "run_dir": str(run_dir),
        "epochs_done": meta["epoch"],
        "epochs": config.train.epochs,
        "step": meta["step"],
        "finished": meta["epoch"] == config.train.epochs and meta["batch"] == 0,
        "test_loss": test["loss"],
        "test_accuracy": test["accuracy"],
        "examples": len(dataset.y_test),
    }


__all__ = [
    "build_trainer",
    "check_train_config",
    "evaluate_run",
    "load_train_run",
    "reading_run",
    "run_train",
]
