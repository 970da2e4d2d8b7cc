"""The retraining task: a genotype trained from scratch with the DARTS protocol; `run` does the
rest."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path
from typing import Any, NamedTuple, TypedDict, Unpack, cast

import jax
import numpy as np

from nasax.core.config import Config
from nasax.core.errors import ConfigError, GenotypeError, RunDirError
from nasax.engine.blocks import compile_program, jit_for
from nasax.loop.data import Batch, Dataset, batches, check_batch_size, epoch_order, make_preprocess
from nasax.loop.optim import spanned_weight_optimizer, spanned_weight_schedule
from nasax.loop.run import (
    RunContext,
    RunOptions,
    RunSummary,
    Task,
    TaskRun,
    run,
)
from nasax.loop.runloop import evaluate, guard_step, prefetch
from nasax.supernet.discrete import param_counts
from nasax.supernet.genotypes import Genotype, load_genotype
from nasax.supernet.skeletons import resolve_model_config, skeleton_of
from nasax.supernet.spaces import get_space
from nasax.train.trainer import Regularizers, Trainer, TrainState


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
    t, m, weights = config.train, config.model, config.optim.weights
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
        optimizer=spanned_weight_optimizer(weights, t.epochs, steps_per_epoch),
        learning_rate=spanned_weight_schedule(weights, t.epochs, steps_per_epoch),
        preprocess=make_preprocess(dataset.mean, dataset.std, augment.crop_padding, augment.flip),
        regularizers=Regularizers(
            t.drop_path, t.auxiliary_weight if t.auxiliary else 0.0, t.cutout
        ),
        steps_per_epoch=steps_per_epoch,
        epochs=t.epochs,
    )


def resolve_genotype(
    config: Config,
    genotype: Genotype | str | None,
    run_dir: Path,
    resume: bool,
    example: str = "DARTS_V2",
) -> Genotype:
    """The genotype to train: given, named in the config, or (resuming) the run's own;
    the error without one names a published `example`."""
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
            f"directory, or a published name such as {example}) or set train.genotype"
        )
    return genotype.validate()


class TrainFields(TypedDict):
    """A retraining's own fields of summary.json (DARTS reports `params`, without the
    auxiliary head)."""

    params: int
    params_auxiliary: int
    params_total: int
    genotype: dict[str, Any]


class TrainSummary(RunSummary, TrainFields):
    """summary.json of a retraining."""


class TrainPlan(NamedTuple):
    """A retraining's sizes and the genotype it trains (None until the run directory
    says, on resume)."""

    epochs: int
    batch_size: int
    steps_per_epoch: int
    eval_every: int
    genotype: Genotype | None


class Retrained(NamedTuple):
    """What a retraining made besides its state: the cell, the data it saw, the trainer
    that runs the network, and the epochs it completed (for
    `nasax.train.export.TrainedModel`)."""

    genotype: Genotype
    dataset: Dataset
    trainer: Trainer
    epoch: int


class TrainTask(Task):
    """A genotype retrained from scratch on the whole training set, tested on the test set.

    `genotype` is a Genotype, a genotype.json path, a search run directory or a published
    name; default `train.genotype` (or, resuming, the run's own).
    """

    kind = "train"
    step_name = "training step"
    shown = ("train_loss", "train_acc", "images_per_sec")
    resume_ignore = ("train.genotype",)

    def __init__(self, genotype: Genotype | str | None = None) -> None:
        self.genotype = genotype

    def resolve(self, config: Config) -> Config:
        return resolve_model_config(config)

    def prepare(self, config: Config, dataset: Dataset, workdir: Path, resume: bool) -> TrainPlan:
        t = config.train
        check_train_config(config)
        check_batch_size(dataset, t.batch_size, len(dataset.x_train), "training set")
        genotype = None
        if not resume:
            genotype = resolve_genotype(config, self.genotype, workdir, resume=False)
            genotype.validate(get_space(config.model.space))
        steps = len(dataset.x_train) // t.batch_size
        return TrainPlan(t.epochs, t.batch_size, steps, t.eval_every, genotype)

    def open(self, config: Config, run_dir: Path, resume: bool, plan: TrainPlan) -> TrainPlan:
        if resume:
            genotype = resolve_genotype(config, self.genotype, run_dir, resume=True)
            return plan._replace(genotype=genotype)
        assert plan.genotype is not None
        plan.genotype.save(run_dir / "genotype.json")
        return plan

    def build(self, ctx: RunContext, plan: TrainPlan) -> TrainRun:
        return TrainRun(self, ctx, plan)


class TrainRun(TaskRun):
    """One retraining: the trainer of the plan's genotype and its compiled programs. Its
    lr and drop path span the state's `epochs`, which the run loop fits to a time limit
    (`horizon`)."""

    plan: TrainPlan

    def __init__(self, task: TrainTask, ctx: RunContext, plan: TrainPlan) -> None:
        super().__init__(task, ctx, plan)
        assert plan.genotype is not None
        self.genotype = plan.genotype
        self.trainer = build_trainer(self.config, self.genotype, ctx.dataset)
        self.order = np.arange(len(self.data.x_train))
        self.counts: dict[str, int] = {}  # parameters, counted at the start
        self.eval_fn: Callable | None = None  # set with the step (`compile`)

    def init(self, key: jax.Array) -> TrainState:
        return self.trainer.init(key)

    def horizon(self, state: TrainState) -> int:
        return int(jax.device_get(state.epochs))

    def with_horizon(self, state: TrainState, epochs: int) -> TrainState:
        return state._replace(epochs=jax.device_put(np.int32(epochs), state.epochs.sharding))

    def start(self, state: TrainState, start: tuple[int, int]) -> None:
        self.counts = param_counts(self.trainer.module(state))

    def describe(self) -> str:
        return (
            f"{self.data.name}: {len(self.data.x_train)} training images, "
            f"{self.steps_per_epoch} steps per epoch; {self.counts['params']:,} parameters "
            f"(+{self.counts['params_auxiliary']:,} auxiliary)"
        )

    def compile(self, state: TrainState) -> Callable[..., tuple[TrainState, dict[str, jax.Array]]]:
        """The step, and the evaluation compiled at its first call; a later run given the
        same program cache (another trial of the same cell) reuses them."""
        step, self.eval_fn = self.cached_programs(
            partial(self._build_programs, state),
            genotype=self.genotype.to_json(),
            steps=self.steps_per_epoch,
        )
        return step

    def _build_programs(self, state: TrainState, key: str) -> tuple[Any, Any]:
        """(step, evaluate), the step compiled for `state`'s shapes."""
        rc, data = self.config.run, self.data
        sample = self.ctx.dp.put_batch(
            next(batches(data.x_train, data.y_train, self.order, self.batch_size))
        )
        stored = f"train|{key}" if rc.plan_cache else None  # plans kept on disk
        step = compile_program(
            guard_step(self.trainer.step, rc),
            (state, sample),
            rc.execution,
            donate=True,
            remat=rc.remat,
            cache_key=stored and f"{stored}|step",
        )
        return step, jit_for(rc.execution, cache_key=stored)(self.trainer.evaluate)

    def epoch_batches(self, epoch: int, first: int) -> Iterator[tuple[Batch]]:
        idx = epoch_order(self.order, self.config.seed, epoch, 0)
        data = self.data
        stream = prefetch(
            batches(data.x_train, data.y_train, idx, self.batch_size, first),
            put=self.ctx.dp.put_batch,
        )
        return ((batch,) for batch in stream)

    def test(self, state: TrainState) -> dict[str, float]:
        data = self.data
        return evaluate(
            self.eval_fn,
            state,
            data.x_test,
            data.y_test,
            self.batch_size,
            put=self.ctx.dp.put_batch,
        )

    def test_line(self, test: dict[str, float]) -> str:
        return f", loss {test['loss']:.4f}"

    def summary(self, state: TrainState) -> TrainFields:
        counts = self.counts
        return {
            "params": counts["params"],
            "params_auxiliary": counts["params_auxiliary"],
            "params_total": counts["params_total"],
            "genotype": self.genotype.to_dict(),
        }

    def made(self, state: TrainState) -> Retrained:
        epoch = int(jax.device_get(state.step)) // self.steps_per_epoch
        return Retrained(self.genotype, self.data, self.trainer, epoch)


def run_train(
    config: Config,
    run_dir: str | Path,
    *,
    genotype: Genotype | str | None = None,
    **options: Unpack[RunOptions],
) -> TrainSummary:
    """Retrains a genotype from scratch as `config` says; returns the summary.

    Args:
        config: the validated config (its `train`, `model`, `data`, `optim` sections).
        run_dir: where config.yaml, genotype.json, metrics.jsonl, checkpoints/ and
            summary.json go.
        genotype: a Genotype, a genotype.json path, a search run directory, or a
            published name; default `train.genotype` (or, resuming, the run's own).
        options: `nasax.loop.run.run`'s (resume, overwrite, on_epoch, programs, data).
    """
    return cast(TrainSummary, run(TrainTask(genotype), config, run_dir, **options).summary)


__all__ = [
    "Retrained",
    "TrainPlan",
    "TrainRun",
    "TrainSummary",
    "TrainTask",
    "build_trainer",
    "check_train_config",
    "run_train",
]
