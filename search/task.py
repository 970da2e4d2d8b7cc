"""The search task: what a strategy's search trains, logs and reports; `run` does the rest."""

from __future__ import annotations

import itertools
import json
import time
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path
from typing import Any, NamedTuple, TypedDict, Unpack, cast

import jax
import jax.numpy as jnp
import numpy as np

from nasax.core.config import Config
from nasax.core.io import atomic_write_npz
from nasax.engine.blocks import compile_program, jit_for
from nasax.loop.data import (
    Batch,
    Dataset,
    batch_images,
    batches,
    check_batch_size,
    epoch_order,
    make_preprocess,
    search_split,
)
from nasax.loop.optim import (
    arch_lr_ratio,
    arch_optimizer,
    weight_lr_ratio,
    weight_optimizer,
    weight_schedule,
)
from nasax.loop.run import (
    RunContext,
    RunOptions,
    RunSummary,
    Task,
    TaskRun,
    run,
)
from nasax.loop.runloop import (
    LoopResult,
    check_finite,
    count_leaves,
    evaluate,
    guard_step,
    pending_to_host,
    prefetch,
)
from nasax.search.budget import Budget, cell_costs, deploy_of, make_budget
from nasax.search.options import resolve_config, strategy_options
from nasax.search.single_path import genotype_paths
from nasax.search.strategy import STRATEGIES, SearchSetup, Strategy, SupernetState
from nasax.supernet.genotypes import Genotype
from nasax.supernet.skeletons import data_kind, skeleton_of
from nasax.supernet.spaces import get_space


def build_setup(
    config: Config, dataset: Dataset, steps_per_epoch: int, budget: Budget | None = None
) -> SearchSetup:
    """The space, supernet and optimizers a strategy needs, from the config, and its
    budget (`make_budget`)."""
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
        arch_lr_ratio=arch_lr_ratio(config.optim.arch, steps_per_epoch, epochs),
        weight_lr_ratio=weight_lr_ratio(config.optim.weights, epochs, steps_per_epoch),
        learning_rate=weight_schedule(config.optim.weights, epochs, steps_per_epoch),
        preprocess=batch_images(
            make_preprocess(dataset.mean, dataset.std, augment.crop_padding, augment.flip)
        ),
        max_skip_connect=config.search.discretizer.max_skip_connect,
        epochs=epochs,
        steps_per_epoch=steps_per_epoch,
        jit=jit_for(config.run.execution),
        budget=budget,
    )


class _AlphaHistory:
    """Architecture weights per epoch, rewritten atomically to alphas.npz each epoch."""

    def __init__(self, path: Path, space: Any) -> None:
        self.path = path
        self.rows: dict[str, list[np.ndarray]] = {}
        self.extra = {
            "ops": np.array(space.ops),
            "edges": np.array(space.edges, dtype=np.int32),
        }

    def keep(self, epochs: int) -> None:
        """Starts from the first `epochs` rows on disk (a resume), or from none."""
        self.rows = {}
        if epochs and self.path.exists():
            with np.load(self.path) as f:
                self.rows = {k: list(f[k][:epochs]) for k in f.files if k not in self.extra}

    def append(self, weights: dict[str, np.ndarray]) -> None:
        for k, v in weights.items():
            self.rows.setdefault(k, []).append(np.asarray(v))
        atomic_write_npz(self.path, **{k: np.stack(v) for k, v in self.rows.items()}, **self.extra)


class SearchFields(TypedDict):
    """A search's own fields of summary.json."""

    strategy: str
    params: int | None
    """Weights of the supernet (None: a strategy whose state holds none)."""
    select_seconds: float | None
    select_calls: int
    genotype: dict[str, Any]
    genotype_text: str
    cost: dict[str, Any] | None
    """With a budget: the found cell's cost at the deployed size (`cell_costs`)."""


class SearchSummary(RunSummary, SearchFields):
    """summary.json of a search."""


class SearchPlan(NamedTuple):
    """A search's sizes and the two halves of the training set (indices)."""

    epochs: int
    batch_size: int
    steps_per_epoch: int
    eval_every: int
    train_idx: np.ndarray
    val_idx: np.ndarray
    budget: Budget | None


class SearchTask(Task):
    """A strategy's search: weight and architecture steps on the two halves of the training
    set; at every epoch the architecture weights and the derived (or selected) cell; the
    test figure of that cell where the strategy can run one cell, else of the supernet."""

    kind = "search"
    step_name = "search step"
    shown = ("train_loss", "train_acc", "val_loss", "val_acc", "images_per_sec")
    plots = True

    def resolve(self, config: Config) -> Config:
        return resolve_config(config)

    def label(self, config: Config) -> str:
        return f"search {config.search.strategy}"

    def prepare(self, config: Config, dataset: Dataset, workdir: Path, resume: bool) -> SearchPlan:
        s = config.search
        train_idx, val_idx = search_split(len(dataset.x_train), s.train_portion, config.seed)
        for idx, half in ((train_idx, "weight-step"), (val_idx, "architecture-step")):
            check_batch_size(dataset, s.batch_size, len(idx), f"{half} half of the training set")
        steps = min(len(train_idx), len(val_idx)) // s.batch_size
        budget = make_budget(config, dataset)  # a budget no cell meets fails here
        return SearchPlan(s.epochs, s.batch_size, steps, s.eval_every, train_idx, val_idx, budget)

    def build(self, ctx: RunContext, plan: SearchPlan) -> SearchRun:
        return SearchRun(self, ctx, plan)


class SearchRun(TaskRun):
    """One search: the strategy built for the run's data, its compiled programs, and the
    cell it derives or selects as the epochs end."""

    plan: SearchPlan

    def __init__(self, task: SearchTask, ctx: RunContext, plan: SearchPlan) -> None:
        super().__init__(task, ctx, plan)
        self.setup = self.build_setup()
        self.strategy: Strategy = STRATEGIES.get(self.config.search.strategy)(
            self.setup, strategy_options(self.config.search)
        )
        if self.strategy.after_epoch is not None:
            self.after_epoch = self._after_epoch
        self.alphas = _AlphaHistory(ctx.run_dir / "alphas.npz", self.setup.space)
        self.genotype: Genotype | None = None  # the latest derived or selected cell
        self.selection = {"seconds": 0.0, "calls": 0}
        self.eval_fn: Callable | None = None  # set with the step (`compile`)
        self.cell_eval_fn: Callable | None = None

    def build_setup(self) -> SearchSetup:
        """The space, supernet and optimizers of this run's strategy (`build_setup`)."""
        plan = self.plan
        return build_setup(self.config, self.data, plan.steps_per_epoch, plan.budget)

    def init(self, key: jax.Array) -> Any:
        return self.strategy.init(key)

    def horizon(self, state: Any) -> int | None:
        net = getattr(state, "net", state)  # ENAS keeps the supernet's state in `net`
        return int(net.epochs) if isinstance(net, SupernetState) else None

    def with_horizon(self, state: Any, epochs: int) -> Any:
        if isinstance(state, SupernetState):
            return state._replace(epochs=jax.device_put(np.int32(epochs), state.epochs.sharding))
        return state._replace(net=self.with_horizon(state.net, epochs))

    def start(self, state: Any, start: tuple[int, int]) -> None:
        self.alphas.keep(start[0])

    def describe(self) -> str:
        dp = self.ctx.dp
        return (
            f"{self.data.name}: {len(self.plan.train_idx)} + {len(self.plan.val_idx)} search "
            "images, "
            f"{self.steps_per_epoch} steps per epoch"
            + (f", each batch split over {dp.size} devices" if dp.size > 1 else "")
        )

    def compile(self, state: Any) -> Callable[..., tuple[Any, dict[str, jax.Array]]]:
        """The step, and the evaluations compiled at their first call; a later run given
        the same program cache (a resume, another trial) reuses them."""
        build = partial(self._build_programs, state)
        budget = self.plan.budget  # its prices are constants of the step (a measured table)
        table = None if budget is None else json.dumps(budget.table.to_json(), sort_keys=True)
        programs = self.cached_programs(
            build, steps_per_epoch=self.steps_per_epoch, cost_table=table
        )
        step_fn, self.eval_fn, self.cell_eval_fn = programs
        return step_fn

    def _build_programs(self, state: Any, key: str) -> tuple[Any, Any, Any]:
        """(step, evaluate, evaluate one cell): the step compiled for `state`'s shapes;
        none without weight steps (epochs 0: trained weights came with the config)."""
        rc, dp = self.config.run, self.ctx.dp
        sample = dp.put_batch(
            next(
                batches(self.data.x_train, self.data.y_train, self.plan.train_idx, self.batch_size)
            )
        )
        stored = f"search|{key}" if rc.plan_cache else None  # plans kept on disk
        jit = jit_for(rc.execution, cache_key=stored)
        step = None
        if self.epochs:
            step = compile_program(
                guard_step(self.strategy.step, rc),
                (state, sample, sample),
                rc.execution,
                donate=True,
                remat=rc.remat,
                cache_key=stored and f"{stored}|step",
            )
        cell = None if self.strategy.evaluate_cell is None else jit(self.strategy.evaluate_cell)
        return step, jit(self.strategy.evaluate), cell

    def epoch_batches(self, epoch: int, first: int) -> Iterator[tuple[Batch, Batch]]:
        """Weight-step and architecture-step batches, each half in its own epoch order."""
        seed, data = self.config.seed, self.data
        streams = [
            prefetch(
                batches(
                    data.x_train,
                    data.y_train,
                    epoch_order(idx, seed, epoch, stream),
                    self.batch_size,
                    first,
                ),
                put=self.ctx.dp.put_batch,
            )
            for stream, idx in enumerate((self.plan.train_idx, self.plan.val_idx))
        ]
        return zip(*streams)

    def end_epoch(self, state: Any, epoch: int, step: int, evaluating: bool) -> None:
        weights = self.strategy.arch_weights(state)
        self.alphas.append(weights)
        space = self.setup.space
        self.ctx.views.arch_epoch(weights, space.ops, np.array(space.edges), epoch, step)
        if self.strategy.select is None or evaluating:  # selection costs a sweep of candidates
            self.genotype = self.current_genotype(state)
            self.genotype.save(self.ctx.run_dir / "genotype.json")

    def test(self, state: Any) -> dict[str, float]:
        """Test loss and accuracy: of the selected cell where the strategy can run one cell
        (`evaluate_cell`), else of the supernet as its `evaluate` says."""
        fn = self.eval_fn
        if self.cell_eval_fn is not None and self.genotype is not None:
            paths = genotype_paths(self.genotype, self.setup.space)
            fn = partial(
                _with_paths, self.cell_eval_fn, {k: jnp.asarray(p) for k, p in paths.items()}
            )
        data = self.data
        return evaluate(
            fn, state, data.x_test, data.y_test, self.batch_size, put=self.ctx.dp.put_batch
        )

    def test_line(self, test: dict[str, float]) -> str:
        assert self.genotype is not None  # derived at every evaluating epoch's end
        return f"  genotype {_describe(self.genotype)}"

    def close(self, state: Any) -> None:
        space = self.setup.space
        self.ctx.views.arch_history(self.alphas.rows, space.ops, np.array(space.edges))

    def finish(self, state: Any, result: LoopResult) -> None:
        if self.genotype is None:  # no epoch ended (epochs 0)
            self.genotype = self.current_genotype(state)
        self.genotype.save(self.ctx.run_dir / "genotype.json")

    def summary(self, state: Any) -> SearchFields:
        assert self.genotype is not None
        calls = self.selection["calls"]
        return {
            "strategy": self.config.search.strategy,
            "params": count_leaves(state.params) if hasattr(state, "params") else None,
            "select_seconds": self.selection["seconds"] if calls else None,
            "select_calls": calls,
            "genotype": self.genotype.to_dict(),
            "genotype_text": _describe(self.genotype),
            "cost": self._cost(),
        }

    def _cost(self) -> dict[str, Any] | None:
        """The found cell's cost at the deployed size, with its latency measured here."""
        budget = self.plan.budget
        if budget is None:
            return None
        deploy = deploy_of(self.config, self.data)
        return cell_costs(self.genotype, budget, deploy, measure=True)

    def made(self, state: Any) -> Genotype:
        """The searched cell."""
        assert self.genotype is not None
        return self.genotype

    def current_genotype(self, state: Any) -> Genotype:
        """The strategy's cell now: derived from its parameters, or selected by scoring
        candidates on the validation half."""
        if self.strategy.select is None:
            return self.strategy.derive(state)
        tick = time.perf_counter()
        genotype = self.strategy.select(state, self._select_batches())
        self.selection["seconds"] += time.perf_counter() - tick
        self.selection["calls"] += 1
        return genotype

    def _select_batches(self) -> Iterator[Batch]:
        """The validation half in a fixed order, for strategies that score candidates."""
        data = self.data
        return map(
            self.ctx.dp.put_batch,
            batches(data.x_train, data.y_train, self.plan.val_idx, self.batch_size),
        )

    def _phase_batches(self, epoch: int) -> Iterator[Batch]:
        """Validation batches for a strategy's after-epoch phase, reshuffled per pass."""
        data = self.data
        for sweep in itertools.count():
            order = epoch_order(
                self.plan.val_idx, self.config.seed, epoch * 1_000 + sweep, stream=2
            )
            for batch in batches(data.x_train, data.y_train, order, self.batch_size):
                yield self.ctx.dp.put_batch(batch)

    def _after_epoch(self, state: Any, epoch: int, step: int) -> tuple[Any, list[dict[str, Any]]]:
        """The strategy's phase after an epoch (ENAS' controller), logged as one record."""
        tick = time.perf_counter()
        state, pending = self.strategy.after_epoch(state, self._phase_batches(epoch))
        if not pending:
            return state, []
        names = list(pending[0])  # the strategy's order (the host copy sorts them)
        host = pending_to_host(pending)
        check_finite(host, epoch, step)
        seconds = time.perf_counter() - tick
        record = {k: float(np.mean([h[k] for h in host])) for k in host[0]}
        record.update(kind="phase", epoch=epoch + 1, step=step, phase_steps=len(host))
        record["phase_steps_per_sec"] = len(host) / seconds
        self.ctx.progress.log(
            f"epoch {epoch + 1}: {len(host)} {self.config.search.strategy} phase steps, "
            + "  ".join(f"{k} {record[k]:.4g}" for k in names[:3])
        )
        return state, [record]


def run_search(config: Config, run_dir: str | Path, **options: Unpack[RunOptions]) -> SearchSummary:
    """Runs a search as `config` says and writes its run directory; returns the summary.

    The run directory holds config.yaml, metrics.jsonl, genotype.json, alphas.npz,
    checkpoints/ and summary.json. `options` are `nasax.loop.run.run`'s (resume,
    overwrite, on_epoch, programs, data).
    """
    return cast(SearchSummary, run(search_task(config), config, run_dir, **options).summary)


def search_task(config: Config) -> SearchTask:
    """The search task of `config`'s data: image cells, or recurrent cells of language
    models on text (`nasax.search.language`)."""
    if data_kind(config.data.name) == "text":
        from nasax.search.language import LanguageSearchTask

        return LanguageSearchTask()
    return SearchTask()


def _with_paths(cell_eval_fn: Callable, paths: dict[str, jax.Array], state: Any, batch: Batch):
    """`cell_eval_fn` with its cell fixed, in the (state, batch) form `evaluate` calls."""
    return cell_eval_fn(state, paths, batch)


def _describe(genotype: Genotype) -> str:
    """One line: the arch string of one-cell spaces (NAS-Bench-201 can look it up), else
    the first cell kind's `op<-input` pairs."""
    kinds = get_space(genotype.space).cell_kinds
    if len(kinds) == 1:
        return genotype.to_arch_string()
    nodes, _ = genotype.cell(kinds[0])
    return f"{kinds[0]} " + " ".join(f"{op}<-{src}" for node in nodes for op, src in node)


__all__ = [
    "SearchPlan",
    "SearchRun",
    "SearchSummary",
    "SearchTask",
    "build_setup",
    "run_search",
    "search_task",
]
