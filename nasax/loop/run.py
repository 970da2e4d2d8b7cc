"""One run loop for every kind of run: `run(task, config, workdir)`.

A `Task` says what a kind of run trains and reports: the search of a strategy, the
retraining of a genotype. `run` owns the rest, written once: the data, the run directory,
compiling, logging, checkpoints, resume, the time limit and progress, in the spirit of
flax's `train_and_evaluate(config, workdir)`.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator, Mapping
from functools import partial
from pathlib import Path
from typing import Any, ClassVar, NamedTuple, Protocol, TypedDict

import jax

from nasax.core.checkpoint import Checkpoints
from nasax.core.config import Config
from nasax.core.io import atomic_write_json, atomic_write_text
from nasax.core.rundir import MetricsLog, open_run_dir
from nasax.engine.blocks import resolve_execution, resolve_remat
from nasax.engine.compilation_cache import release_if_crowded
from nasax.engine.parallel import DataParallel, data_parallel
from nasax.loop.data import Batch, Dataset, load_dataset
from nasax.loop.programs import ProgramCache
from nasax.loop.progress import LoopProgress
from nasax.loop.runloop import (
    LoopIO,
    LoopResult,
    check_resume_config,
    checkpoint_writer,
    closing_all,
    is_eval_epoch,
    peak_rss_mb,
    restore_or_start,
    run_epochs,
)
from nasax.loop.views import RunViews


def program_key(config: Config, dataset: Dataset, dp: DataParallel, **extra: Any) -> str:
    """Everything a task's compiled programs depend on besides code: a later run in the same
    process (a resume, another trial) reuses them, and the plan store keys on it.

    The seed and the `run` section (apart from `nonfinite`, `execution` and `remat`) only
    change the state or the host side, not the programs. The data enter through their
    signature, not where they were read from (`data.name`, `data.data_dir`), so the same
    data at another path reuse the stored plans. `extra` adds what the task's programs
    also close over (steps per epoch, the genotype).
    """
    resolved = config.to_dict()
    for key in ("name", "seed", "run", "tune"):
        resolved.pop(key, None)
    for key in ("name", "data_dir"):
        resolved["data"].pop(key, None)
    return json.dumps(
        {
            "config": resolved,
            "nonfinite": config.run.nonfinite,
            "execution": resolve_execution(config.run.execution),
            "remat": resolve_remat(config.run.remat, config.run.execution),
            "data": dataset.signature,
            "devices": [str(d) for d in dp.mesh.devices.flat],
            **extra,
        },
        sort_keys=True,
    )


class RunContext(NamedTuple):
    """What `run` opened for a task: the config, directory, data, devices and outputs."""

    config: Config
    run_dir: Path
    dataset: Dataset
    dp: DataParallel
    progress: LoopProgress
    views: RunViews
    programs: ProgramCache
    """Compiled programs shared with the caller's other runs (`run(..., programs=)`)."""


class RunSummary(TypedDict):
    """What summary.json holds for every run; a task adds its own fields
    (`TaskRun.summary`), and names the whole in a TypedDict of its own."""

    kind: str
    dataset: str
    seed: int
    epochs: int
    epochs_planned: int
    steps: int
    batch_size: int
    test_loss: float
    test_accuracy: float
    wall_seconds: float
    compile_seconds: float
    step_plan: str | None
    """`loaded` or `traced` (block execution: was the step's plan stored?); None: fused."""
    seconds_to_first_step: float
    images_per_sec: float | None
    peak_rss_mb: float
    stopped_early: bool
    time_limit: float | None


class RunResult(NamedTuple):
    """What a run made: its summary (as written to summary.json), the state it ended
    with, and the task's product (`TaskRun.made`: the searched cell, the retrained
    network), for callers that go on in memory (`ImageClassifier`)."""

    summary: RunSummary
    state: Any
    made: Any = None


class RunOptions(TypedDict, total=False):
    """`run`'s keyword arguments, for the functions that pass them on (`run_search`)."""

    data: Dataset | None
    resume: bool
    overwrite: bool
    on_epoch: Callable[[dict[str, Any]], None] | None
    programs: ProgramCache | None


class Sizes(Protocol):
    """A run's sizes, as a task's `prepare` returns them (with anything else the task
    settles before the run directory is touched)."""

    epochs: int
    batch_size: int
    steps_per_epoch: int
    eval_every: int


class Task:
    """A kind of run, made before anything is opened. `run` calls `resolve`, `prepare`,
    `open` and `build` in that order; what `build` returns does the rest (`TaskRun`).
    Each hook returns what it settles, so a task holds nothing but what its constructor
    was given."""

    kind: ClassVar[str]
    """`search` or `train`: the command named in messages and the step records' kind."""
    step_name: ClassVar[str]
    """What the first progress line says is compiling (`search step`)."""
    shown: ClassVar[tuple[str, ...]]
    """Step metrics the progress bar shows."""
    plots: ClassVar[bool] = False
    """Whether the run directory gets plots (when `run.plots` is on)."""
    resume_ignore: ClassVar[tuple[str, ...]] = ()
    """Dotted config keys a resume may change (checked by the task itself)."""

    def resolve(self, config: Config) -> Config:
        """The config as this kind of run reads it: the sections the core keeps raw (a
        strategy's options, a space defined as a mapping) checked and filled in; `run`
        uses what this returns. ConfigError in one line if they do not fit."""
        return config

    def label(self, config: Config) -> str:
        """The progress bar's label."""
        return self.kind

    def load_data(self, config: Config) -> Dataset:
        """The data `config.data` names, when the caller passed none; a task of another
        kind of data (text) returns its own, with `name` and `signature` as `Dataset`."""
        return load_dataset(config.data.name, config.data.data_dir, config.data.num_classes)

    def prepare(self, config: Config, dataset: Dataset, workdir: Path, resume: bool) -> Sizes:
        """The run's sizes, once what can fail before the run directory is touched has
        been checked."""
        raise NotImplementedError

    def open(self, config: Config, run_dir: Path, resume: bool, plan: Sizes) -> Sizes:
        """Writes the task's own files in a new run directory, or reads them back on
        resume; returns `plan` with what they settle."""
        return plan

    def build(self, ctx: RunContext, plan: Sizes) -> TaskRun:
        """The run-time half, made once the data, devices and directory are open."""
        raise NotImplementedError


class TaskRun:
    """A task's run-time half: what one run of a task trains, tests and reports, built
    from what `run` opened (`ctx`) and the task's `plan`. `run` calls the methods in the
    order they are listed; those without a body here must be written."""

    after_epoch: Callable[[Any, int, int], tuple[Any, list[dict[str, Any]]]] | None = None
    """A phase after each complete epoch (ENAS' controller): (state, epoch, step) ->
    (state, records to log); see `runloop.run_epochs`."""

    def __init__(self, task: Task, ctx: RunContext, plan: Sizes) -> None:
        self.task, self.ctx, self.plan = task, ctx, plan

    @property
    def config(self) -> Config:
        return self.ctx.config

    @property
    def data(self) -> Dataset:
        return self.ctx.dataset

    @property
    def kind(self) -> str:
        return self.task.kind

    @property
    def shown(self) -> tuple[str, ...]:
        return self.task.shown

    @property
    def epochs(self) -> int:
        return self.plan.epochs

    @property
    def batch_size(self) -> int:
        return self.plan.batch_size

    @property
    def steps_per_epoch(self) -> int:
        return self.plan.steps_per_epoch

    @property
    def eval_every(self) -> int:
        return self.plan.eval_every

    def cached_programs(self, build: Callable[[str], Any], **key_extra: Any) -> Any:
        """The programs of this run's config, data and devices (and `key_extra`, what
        they also close over), from the run's program cache; `build(key)` makes them
        the first time."""
        ctx = self.ctx
        key = program_key(ctx.config, ctx.dataset, ctx.dp, **key_extra)
        return ctx.programs.get(key, partial(build, key))

    def init(self, key: jax.Array) -> Any:
        """The fresh state; resuming, the checkpoint is restored into its structure."""
        raise NotImplementedError

    def start(self, state: Any, start: tuple[int, int]) -> None:
        """The run starts from `state` at (epoch, batch) `start`: (0, 0), or where a resumed
        run's checkpoint left off."""

    def describe(self) -> str:
        """The run's first progress line: the data and the sizes."""
        raise NotImplementedError

    def compile(self, state: Any) -> Callable[..., tuple[Any, dict[str, jax.Array]]]:
        """The step program, (state, *batches) -> (state, metrics), guarded as `run.nonfinite`
        asks."""
        raise NotImplementedError

    def epoch_batches(self, epoch: int, first: int) -> Iterator[tuple[Batch, ...]]:
        """The batches of each step of `epoch`, from its batch `first`, on the devices."""
        raise NotImplementedError

    def horizon(self, state: Any) -> int | None:
        """The epochs `state`'s schedules span, when the loop may fit them to a time limit
        (`runloop.run_epochs`); None: the task's epochs are fixed."""
        return None

    def with_horizon(self, state: Any, epochs: int) -> Any:
        """`state` with its schedules spanning `epochs` (only called when `horizon` is not
        None)."""
        raise NotImplementedError

    def end_epoch(self, state: Any, epoch: int, step: int, evaluating: bool) -> None:
        """Work at an epoch's end before its test evaluation (architecture weights, the cell)."""

    def test(self, state: Any) -> dict[str, float]:
        """Test `loss` and `accuracy` of `state`."""
        raise NotImplementedError

    def test_line(self, test: dict[str, float]) -> str:
        """What an epoch's progress line says after its test accuracy."""
        return f"loss {test['loss']:.4f}"

    def close(self, state: Any) -> None:
        """Last writes of the loop's outputs (the views are still open)."""

    def finish(self, state: Any, result: LoopResult) -> None:
        """Work once the loop is over, before the final test (the final cell)."""

    def summary(self, state: Any) -> Mapping[str, Any]:
        """The task's own fields of `summary.json`, for the state the run ended with."""
        return {}

    def made(self, state: Any) -> Any:
        """What the run made besides its state (`RunResult.made`)."""
        return None


def _open_context(
    task: Task,
    config: Config,
    run_dir: Path,
    dataset: Dataset,
    plan: Sizes,
    resume: bool,
    programs: ProgramCache | None,
) -> RunContext:
    """What a task's run works with, once its directory is open: config.yaml written (or
    checked, resuming), the devices, views, progress and the program cache."""
    rc = config.run
    if resume:
        check_resume_config(config, run_dir, ignore=task.resume_ignore)
    else:
        atomic_write_text(run_dir / "config.yaml", config.to_yaml())
    dp = data_parallel(rc, {f"{task.kind}.batch_size": plan.batch_size})
    views = RunViews(run_dir, tensorboard=rc.tensorboard, plots=task.plots and rc.plots)
    progress = LoopProgress(
        plan.steps_per_epoch * plan.epochs,
        plan.epochs,
        enabled=rc.progress,
        label=task.label(config),
    )
    programs = ProgramCache() if programs is None else programs
    return RunContext(config, run_dir, dataset, dp, progress, views, programs)


def _compile(
    task: Task, task_run: TaskRun, state: Any, progress: LoopProgress
) -> tuple[Callable[..., Any], float, str | None]:
    """The step program, the seconds it took, and whether its plan was `loaded` or
    `traced` (block execution; None: one fused program)."""
    progress.log(f"{task_run.describe()}; compiling the {task.step_name} (cached for later runs)")
    start = time.perf_counter()
    release_if_crowded()
    step_fn = task_run.compile(state)
    seconds = time.perf_counter() - start
    loaded = getattr(step_fn, "loaded", None)
    progress.log(f"compiled in {seconds:.0f} s" + (" (stored plan)" if loaded else ""))
    return step_fn, seconds, {True: "loaded", False: "traced"}.get(loaded)


def _epoch_end(
    task_run: TaskRun, plan: Sizes, progress: LoopProgress, test: dict[str, float]
) -> Callable[[Any, int, int, int], dict[str, Any]]:
    """The epoch loop's `end_epoch`: the task's work, then on evaluation epochs the test
    figures, kept in `test` and returned as the epoch record's fields."""

    def end_epoch(state: Any, epoch: int, step: int, epochs: int) -> dict[str, Any]:
        evaluating = is_eval_epoch(epoch, epochs, plan.eval_every)
        task_run.end_epoch(state, epoch, step, evaluating)
        if not evaluating:
            return {}
        test.update(task_run.test(state))
        line = task_run.test_line(test)
        progress.log(f"epoch {epoch + 1}: test accuracy {test['accuracy']:.4f}{line}")
        extra = {f"test_{k}": v for k, v in test.items() if k not in ("loss", "accuracy")}
        return {"test_loss": test["loss"], "test_acc": test["accuracy"], **extra}

    return end_epoch


def run(
    task: Task,
    config: Config,
    workdir: str | Path,
    *,
    data: Dataset | None = None,
    resume: bool = False,
    overwrite: bool = False,
    on_epoch: Callable[[dict[str, Any]], None] | None = None,
    programs: ProgramCache | None = None,
) -> RunResult:
    """Runs `task` as `config` says into the run directory `workdir`.

    Args:
        task: the kind of run.
        config: the validated config (`task.resolve` checks what the core keeps raw).
        workdir: where config.yaml, metrics.jsonl, checkpoints/, summary.json and the
            task's own files go.
        data: the dataset, when it is in memory (`dataset_from_arrays`); default: the
            one `data.name` names.
        resume: continue from the last checkpoint in `workdir`.
        overwrite: delete an existing `workdir` first.
        on_epoch: called with each finished epoch's figures (`runloop.epoch_summary`).
        programs: compiled programs to reuse and keep for later runs (a tuning study's
            trials); default: this run's own.

    Returns:
        The summary (also written to summary.json), the state the run ended with, and
        what the task made (`TaskRun.made`).
    """
    wall_start = time.perf_counter()
    config = task.resolve(config)
    rc = config.run
    dataset = task.load_data(config) if data is None else data
    plan = task.prepare(config, dataset, Path(workdir), resume)
    with open_run_dir(workdir, resume=resume, overwrite=overwrite, command=task.kind) as run_dir:
        plan = task.open(config, run_dir, resume, plan)
        ctx = _open_context(task, config, run_dir, dataset, plan, resume, programs)
        progress, views = ctx.progress, ctx.views
        task_run = task.build(ctx, plan)
        state = task_run.init(jax.random.PRNGKey(config.seed))
        checkpoints = Checkpoints(run_dir / "checkpoints", keep=rc.checkpoint_keep)
        metrics_log = MetricsLog(run_dir / "metrics.jsonl", sinks=views.sinks)
        resumed = restore_or_start(checkpoints, metrics_log, state, resume)
        state = ctx.dp.put_state(resumed.state)
        task_run.start(state, resumed.start)
        step_fn, compile_seconds, step_plan = _compile(task, task_run, state, progress)
        to_first_step = time.perf_counter() - wall_start
        test: dict[str, float] = {}  # the last evaluation's figures
        end_epoch = _epoch_end(task_run, plan, progress, test)

        deadline = None if rc.time_limit is None else wall_start + rc.time_limit - resumed.elapsed
        with closing_all(checkpoints.close, views.close):
            save = checkpoint_writer(checkpoints, resumed.elapsed, wall_start)
            result = run_epochs(
                task_run,
                state,
                step_fn,
                LoopIO(metrics_log, progress, save, on_epoch),
                run=rc,
                start=resumed.start,
                pending=resumed.pending,
                end_epoch=end_epoch,
                resume_hint=f"continue with: nasax {task.kind} CONFIG --resume --out {run_dir}",
                deadline=deadline,
            )
            task_run.close(result.state)
        task_run.finish(result.state, result)
        if not test or result.stopped_early:  # evaluate the state the run ended with
            test = task_run.test(result.state)
        summary: RunSummary = {
            "kind": task.kind,
            "dataset": dataset.name,
            "seed": config.seed,
            "epochs": plan.epochs,
            "epochs_planned": result.planned_epochs,
            "steps": result.step,
            "batch_size": plan.batch_size,
            "test_loss": test["loss"],
            "test_accuracy": test["accuracy"],
            **task_run.summary(result.state),
            "wall_seconds": resumed.elapsed + time.perf_counter() - wall_start,
            "compile_seconds": compile_seconds,
            "step_plan": step_plan,
            "seconds_to_first_step": to_first_step,
            "images_per_sec": result.images / result.seconds if result.seconds else None,
            "peak_rss_mb": peak_rss_mb(),
            "stopped_early": result.stopped_early,
            "time_limit": rc.time_limit,
        }
        atomic_write_json(run_dir / "summary.json", summary)
        return RunResult(summary, result.state, task_run.made(result.state))


__all__ = [
    "RunContext",
    "RunOptions",
    "RunResult",
    "RunSummary",
    "Sizes",
    "Task",
    "TaskRun",
    "program_key",
    "run",
]
