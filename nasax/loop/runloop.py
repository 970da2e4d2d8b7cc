"""Machinery shared by the search and the retraining loops: signals, prefetch, evaluation."""

from __future__ import annotations

import contextlib
import resource
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, NamedTuple, Protocol

import jax
import jax.numpy as jnp
import numpy as np
import optax
import yaml

from nasax.core.checkpoint import Checkpoints
from nasax.core.config import Config, RunConfig, validate_config
from nasax.core.errors import NasaxError, NonFiniteError, RunDirError
from nasax.core.rundir import MetricsLog
from nasax.loop.data import Batch, eval_batches, shuffled_order
from nasax.loop.progress import LoopProgress, TaskProgress


class Interrupted(NasaxError):
    """The run was stopped by a signal after saving a checkpoint."""

    def __init__(self, message: str, signum: int = signal.SIGINT) -> None:
        super().__init__(message)
        self.signum = signum

    @property
    def exit_code(self) -> int:
        """The shell's convention for a process ended by a signal: 128 + its number."""
        return 128 + int(self.signum)


class StopRequests:
    """Turns SIGINT/SIGTERM into a request the loop honours after the current step.

    A second signal interrupts at once. Outside the main thread nothing is installed.
    """

    def __init__(self) -> None:
        self.signum: int | None = None
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, frame: Any) -> None:
        if self.signum is not None:
            raise KeyboardInterrupt
        self.signum = signum

    def __enter__(self) -> StopRequests:
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(ValueError):  # not the main thread: leave signals alone
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


@contextlib.contextmanager
def closing_all(*closers: Callable[[], None]) -> Iterator[None]:
    """Closes a run's writers (checkpoints, TensorBoard) when the block ends.

    After a failure every closer still runs, and what they raise is dropped: the failure
    that stopped the run is the one to report (a full disk also fails the last flushes).
    """
    try:
        yield
    except BaseException:
        for close in closers:
            with contextlib.suppress(Exception):
                close()
        raise
    errors = []
    for close in closers:
        try:
            close()
        except Exception as e:
            errors.append(e)
    if errors:
        raise errors[0]


def prefetch(
    it: Iterator[Batch], size: int = 2, put: Callable[[Batch], Batch] = jax.device_put
) -> Iterator[Batch]:
    """Starts host-to-device copies (`put`, e.g. `DataParallel.put_batch`) `size` batches
    ahead."""
    queue: list[Batch] = []
    for batch in it:
        queue.append(put(batch))
        if len(queue) > size:
            yield queue.pop(0)
    yield from queue


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def count_leaves(tree: Any) -> int:
    """Number of scalars in a pytree (a parameter count)."""
    return int(sum(np.size(x) for x in jax.tree.leaves(tree)))


def evaluate(
    eval_fn: Callable[[Any, Batch], dict[str, jax.Array]],
    state: Any,
    x: np.ndarray,
    y: np.ndarray,
    batch_size: int,
    *,
    put: Callable[[Batch], Batch] = jax.device_put,
    progress: str | None = None,
) -> dict[str, float]:
    """Loss and accuracy over every example of (x, y); `eval_fn` returns per-batch sums.

    `progress` names a bar to show (for evaluations that stand alone, as `nasax
    evaluate`; inside a training loop its own bar is live and this stays None).
    """
    totals: dict[str, float] = {"loss_sum": 0.0, "correct": 0.0, "count": 0.0}
    sums = []
    with TaskProgress(len(x), enabled=progress is not None, label=progress or "") as bar:
        for b in prefetch(eval_batches(x, y, batch_size, shuffled_order(len(x))), put=put):
            sums.append(eval_fn(state, b))
            if progress is not None:
                jax.block_until_ready(sums[-1])  # so the bar's rate is the real one
                bar.advance(int(b["mask"].sum()), bar.rate_text())
    for s in jax.device_get(sums):
        for k in totals:
            totals[k] += float(s[k])
    return {
        "loss": totals["loss_sum"] / totals["count"],
        "accuracy": totals["correct"] / totals["count"],
    }


def check_resume_config(config: Config, run_dir: Path, ignore: tuple[str, ...] = ()) -> None:
    """A resumed run must use the config it started with (the `run` section may differ).

    `ignore` lists dotted keys checked elsewhere (e.g. `train.genotype`).
    """
    saved_path = run_dir / "config.yaml"
    if not saved_path.exists():
        raise RunDirError(f"cannot resume: {saved_path} is missing")
    saved = validate_config(yaml.safe_load(saved_path.read_text()), str(saved_path)).to_dict()
    given = config.to_dict()
    for key in ignore:
        section, _, name = key.partition(".")
        for data in (saved, given):
            data.get(section, {}).pop(name, None)
    for section in saved:
        if section in ("run", "name"):
            continue
        if saved[section] != given.get(section):
            raise RunDirError(
                f"cannot resume {run_dir}: its config.yaml differs from the given config in "
                f"section {section!r}; resume with the same config"
            )


def pending_to_host(pending: list[dict[str, Any]]) -> list[dict[str, float]]:
    """Step metrics as plain floats (for a checkpoint), fetched in one transfer."""
    return [{k: float(v) for k, v in m.items()} for m in jax.device_get(pending)]


def check_finite(
    values: list[dict[str, float]], epoch: int, step: int, skip_nonfinite: bool = False
) -> None:
    """Raises NonFiniteError naming the first step whose metrics are not finite.

    `values` are the metrics of the steps up to `step`. Steps a guarded step skipped
    (`skipped` = 1) are expected to hold NaN and pass.
    """
    first = step - len(values) + 1
    for offset, v in enumerate(values):
        if skip_nonfinite and v.get("skipped", 0.0) > 0:
            continue
        bad = [k for k, x in v.items() if not np.isfinite(x)]
        if bad:
            raise NonFiniteError(
                f"{bad[0]} became {v[bad[0]]} at step {first + offset} (epoch {epoch + 1}); "
                "the last checkpoint is kept; lower the learning rates (optim.weights.lr, "
                "optim.arch.lr), set optim.weights.grad_clip, or set run.nonfinite=skip to "
                "skip such steps"
            )


def flush_metrics(
    pending: list[dict[str, Any]],
    epoch: int,
    step: int,
    kind: str = "search",
    skip_nonfinite: bool = False,
) -> dict[str, Any]:
    """Brings the pending step metrics to the host, checks them and averages them.

    With `skip_nonfinite`, steps that were skipped are left out of the averages and
    counted in `skipped`.
    """
    values = pending_to_host(pending)
    pending.clear()
    check_finite(values, epoch, step, skip_nonfinite)
    record: dict[str, Any] = {"kind": kind, "epoch": epoch + 1, "step": step}
    kept = [v for v in values if not v.get("skipped", 0.0)] or values
    for key in values[0]:
        if key == "skipped":
            record[key] = int(sum(v[key] for v in values))
            continue
        series = np.array([v[key] for v in kept])
        finite = series[np.isfinite(series)]
        record[key] = float(finite.mean()) if finite.size else float("nan")
    return record


def skip_nonfinite_steps(
    step_fn: Callable[..., tuple[Any, dict[str, jax.Array]]],
) -> Callable[..., tuple[Any, dict[str, jax.Array]]]:
    """Wraps a step so that a non-finite metric (loss, gradient norm) leaves the state as it was.

    Only the `step` counter of the state advances, so the data and random numbers move
    on; weights, optimizer and architecture states keep their last finite values. The
    metrics gain `skipped` (1 for a skipped step). All of it stays inside the jitted step.
    """

    def guarded(state: Any, *batches: Batch) -> tuple[Any, dict[str, jax.Array]]:
        new_state, metrics = step_fn(state, *batches)
        ok = jnp.all(jnp.stack([jnp.all(jnp.isfinite(v)) for v in jax.tree.leaves(metrics)]))
        kept = jax.tree.map(lambda new, old: jnp.where(ok, new, old), new_state, state)
        if hasattr(kept, "with_step"):  # a state whose counter sits deeper (ENAS)
            kept = kept.with_step(new_state.step)
        elif hasattr(kept, "_replace") and hasattr(kept, "step"):
            kept = kept._replace(step=new_state.step)
        return kept, {**metrics, "skipped": 1.0 - ok.astype(jnp.float32)}

    return guarded


def guard_step(
    step_fn: Callable[..., tuple[Any, dict[str, jax.Array]]], run: RunConfig
) -> Callable[..., tuple[Any, dict[str, jax.Array]]]:
    """The step as `run.nonfinite` asks: as it is (`stop`) or skipping bad steps (`skip`)."""
    return skip_nonfinite_steps(step_fn) if run.nonfinite == "skip" else step_fn


def is_eval_epoch(epoch: int, epochs: int, eval_every: int) -> bool:
    """Whether epoch `epoch` (from 0) ends with a test evaluation: every `eval_every`, the last."""
    return epoch == epochs - 1 or bool(eval_every and (epoch + 1) % eval_every == 0)


def masked_sums(logits: jax.Array, labels: jax.Array, mask: jax.Array) -> dict[str, jax.Array]:
    """Summed loss and correct count over the real (mask=1) examples of a padded batch."""
    mask = mask.astype(jnp.float32)
    losses = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
    correct = (jnp.argmax(logits, -1) == labels).astype(jnp.float32)
    return {
        "loss_sum": jnp.sum(losses * mask),
        "correct": jnp.sum(correct * mask),
        "count": jnp.sum(mask),
    }


class LoopResult(NamedTuple):
    """Where an epoch loop ended, how fast it ran, and whether the time limit stopped it."""

    state: Any
    step: int
    images: int
    seconds: float
    stopped_early: bool = False
    planned_epochs: int | None = None
    """The epochs the schedules spanned at the end when a time-limit plan changed them."""


def fit_epochs(done: int, seconds_left: float, epoch_seconds: float, most: int) -> int:
    """How many epochs a run completes in all: the `done` ones, plus the whole epochs of
    `epoch_seconds` that fit in `seconds_left`, at most `most`."""
    more = int(max(seconds_left, 0.0) // epoch_seconds) if epoch_seconds > 0 else most
    return min(most, done + more)


def past(deadline: float | None) -> bool:
    """Whether `deadline` (a `time.perf_counter()` value; None: no limit) has passed."""
    return deadline is not None and time.perf_counter() >= deadline


class LoopTask(Protocol):
    """What the epoch loop reads of a task (`nasax.loop.run.Task`): sizes, batches, hooks."""

    kind: str
    shown: tuple[str, ...]
    epochs: int
    steps_per_epoch: int
    batch_size: int
    after_epoch: Callable[[Any, int, int], tuple[Any, list[dict[str, Any]]]] | None

    def epoch_batches(self, epoch: int, first: int) -> Iterator[tuple[Batch, ...]]: ...

    def horizon(self, state: Any) -> int | None: ...

    def with_horizon(self, state: Any, epochs: int) -> Any: ...


class LoopIO(NamedTuple):
    """Where an epoch loop reports: the metrics log, the progress bar, the checkpoint
    writer `save(state, meta)`, and the caller's per-epoch callback."""

    metrics_log: MetricsLog
    progress: LoopProgress
    save: Callable[[Any, dict[str, Any]], None]
    on_epoch: Callable[[dict[str, Any]], None] | None = None


def run_epochs(
    task: LoopTask,
    state: Any,
    step_fn: Callable[..., tuple[Any, dict[str, jax.Array]]],
    io: LoopIO,
    *,
    run: RunConfig,
    start: tuple[int, int],
    pending: list[dict[str, float]],
    end_epoch: Callable[[Any, int, int, int], dict[str, Any]],
    resume_hint: str,
    deadline: float | None = None,
) -> LoopResult:
    """Runs `task`'s compiled steps epoch by epoch with logging, checkpoints and Ctrl-C.

    Metrics stay on the device until a log step (`run.log_every`), where they are
    checked for NaN, averaged and written. A checkpoint is written at every epoch end,
    every `run.checkpoint_minutes`, and on Ctrl-C or SIGTERM (then `Interrupted` is
    raised); it never holds a state whose metrics were not finite.

    Args:
        task: sizes, `epoch_batches(epoch, first batch)`, the progress bar's metrics
            (`shown`), the step records' `kind`, and `after_epoch(state, epoch, step) ->
            (state, records to log)`: a phase run after the epoch's steps, before
            `end_epoch` and the epoch's checkpoint (not after a partial epoch the time
            limit ended). `horizon(state)` is the epochs the state's schedules span (None:
            `task.epochs`, fixed); the loop runs that many, and under a deadline sets it
            with `with_horizon(state, epochs)` to the epochs that fit (see `deadline`).
        state: the state to start from.
        step_fn: (state, *batches) -> (state, metrics), compiled and guarded as
            `run.nonfinite` asks.
        io: where to report; `save(state, meta)` gets the position (`epoch`, `batch`,
            `step`; batch 0 means the epoch is complete), the metrics logged so far and
            the pending ones; `on_epoch` each complete epoch's figures.
        run: the config's `run` section.
        start: (epoch, batch) to start at; (0, 0) for a fresh run.
        pending: step metrics not logged yet when the run was checkpointed.
        end_epoch: end_epoch(state, epoch, step, epochs) -> extra fields of the epoch
            record; `epochs` is the run's length as it stands (its horizon).
        resume_hint: how to continue, for the message of an interrupted run.
        deadline: a `time.perf_counter()` time (the run's time limit): the loop stops at
            the first step or epoch boundary after it, checkpoints, marks the epoch
            record it ends with `"stopped": "time_limit"` (`end_epoch` runs for a partial
            epoch too), and returns with `stopped_early`. Every epoch it enters runs at
            least one step. A task whose schedules have a `horizon` instead ends on a
            complete epoch: from the second epoch this process runs (the first holds the
            first calls), each epoch's end times the epochs (the mean of the last three)
            and fits the horizon to the epochs that end before the deadline (the first
            fit may also lengthen it, up to `task.epochs`; later ones only shorten it),
            so the schedules (warm-up, temperature, regulariser weight; a retraining's
            cosine lr and drop-path ramp) run their whole course in the time given.
    """
    steps_per_epoch, batch_size = task.steps_per_epoch, task.batch_size
    horizon = task.horizon(state)  # read once: the loop keeps it from here on
    epochs = horizon or task.epochs
    planned = None  # epochs a time-limit plan set in this process
    kind, shown, after_epoch = task.kind, task.shown, task.after_epoch
    metrics_log, progress, save, on_epoch = io
    log_every, skip_nonfinite = run.log_every, run.nonfinite == "skip"
    checkpoint_seconds = 60 * run.checkpoint_minutes if run.checkpoint_minutes else None
    start_epoch, start_batch = start
    step = start_epoch * steps_per_epoch + start_batch
    queued: list[dict[str, Any]] = list(pending or [])
    images, seconds_total = 0, 0.0
    last_save = time.monotonic()
    mark, epoch_seconds = time.perf_counter(), []  # epoch-end times, this process's epochs

    def checkpoint(state: Any, epoch: int, batch: int) -> None:
        nonlocal last_save
        host = pending_to_host(queued)
        check_finite(host, epoch, step, skip_nonfinite)
        queued[:] = host
        position = {"epoch": epoch, "batch": batch, "step": step}
        save(state, {**position, "metrics": metrics_log.records, "pending": host})
        last_save = time.monotonic()

    def log_steps(epoch: int, tick: float, since: int) -> dict[str, Any]:
        """Writes the record of the `since` steps queued since `tick`; counts their images."""
        nonlocal images, seconds_total
        record = flush_metrics(queued, epoch, step, kind, skip_nonfinite)
        seconds = time.perf_counter() - tick
        record["images_per_sec"] = since * batch_size / seconds
        images, seconds_total = images + since * batch_size, seconds_total + seconds
        metrics_log.write(record)
        return record

    with progress, StopRequests() as stop:
        if epochs != task.epochs:  # resumed from a checkpoint of a time-limit plan
            progress.span(epochs * steps_per_epoch, epochs)
        progress.advance(step, start_epoch)
        stopped = False
        epoch = start_epoch - 1
        while epoch + 1 < epochs:
            epoch += 1
            first = start_batch if epoch == start_epoch else 0
            stream = task.epoch_batches(epoch, first)
            tick, since = time.perf_counter(), 0
            for batch_index in range(first, steps_per_epoch):
                if batch_index > first and past(deadline):
                    stopped = True
                    break
                state, metrics = step_fn(state, *next(stream))
                queued.append(metrics)
                step, since = step + 1, since + 1
                if step % log_every == 0 or batch_index == steps_per_epoch - 1:
                    record = log_steps(epoch, tick, since)
                    progress.show({k: record[k] for k in shown if k in record})
                    tick, since = time.perf_counter(), 0
                progress.advance(step, epoch)
                if stop.signum is not None:
                    checkpoint(state, epoch, batch_index + 1)
                    name = signal.Signals(stop.signum).name
                    raise Interrupted(
                        f"stopped by {name} at epoch {epoch + 1} step {step}; checkpoint "
                        f"saved; {resume_hint}",
                        stop.signum,
                    )
                due = (
                    checkpoint_seconds is not None
                    and time.monotonic() - last_save >= checkpoint_seconds
                    and batch_index < steps_per_epoch - 1  # the epoch end saves anyway
                )
                if due:
                    checkpoint(state, epoch, batch_index + 1)
            if stopped:  # mid-epoch: log what ran, save the position, close the epoch
                if queued:
                    log_steps(epoch, tick, since)
                checkpoint(state, epoch, batch_index)
            elif after_epoch is not None:
                state, records = after_epoch(state, epoch, step)
                for r in records:
                    metrics_log.write(r)
            record = {"kind": "epoch", "epoch": epoch + 1, "step": step}
            record.update(end_epoch(state, epoch, step, epochs))
            now = time.perf_counter()
            if epoch > start_epoch and not stopped:
                epoch_seconds.append(now - mark)
            mark = now
            if deadline is not None and epoch_seconds and not stopped and horizon is not None:
                recent = float(np.mean(epoch_seconds[-3:]))  # epochs cost more after a warm-up
                fit = fit_epochs(epoch + 1, deadline - now, recent, task.epochs)
                fit = max(fit if planned is None else min(fit, epochs), epoch + 1)
                if fit != epochs:
                    state, epochs = task.with_horizon(state, fit), fit
                    progress.span(fit * steps_per_epoch, fit)
                    progress.log(
                        f"time limit: the schedules now span {fit} of {task.epochs} epochs"
                    )
                planned = fit
                record["epochs_planned"] = fit
            ended_by_plan = epoch == epochs - 1 and epochs < task.epochs
            at_limit = stopped or ended_by_plan or (epoch < epochs - 1 and past(deadline))
            if at_limit:
                record["stopped"] = "time_limit"
            metrics_log.write(record)
            if not stopped:  # a complete epoch
                checkpoint(state, epoch + 1, 0)
                if on_epoch is not None:
                    on_epoch(epoch_summary(metrics_log.records, epoch + 1))
            if ended_by_plan and not stopped:
                stopped = True
                progress.log(
                    f"time limit: the run ends after epoch {epoch + 1} of {task.epochs}, "
                    "where its schedules end"
                )
            elif at_limit:
                stopped = True
                progress.log(
                    f"time limit reached after {step} steps (epoch {epoch + 1} of {task.epochs}); "
                    f"stopping with the latest state; {resume_hint}"
                )
                break
    changed = epochs if epochs != task.epochs else None
    return LoopResult(state, step, images, seconds_total, stopped, changed)


def epoch_summary(records: list[dict[str, Any]], epoch: int) -> dict[str, Any]:
    """One epoch's figures: the means of its logged step metrics, then the fields of its
    phase and epoch records (test accuracy on evaluation epochs)."""
    mine = [r for r in records if r.get("epoch") == epoch]
    steps = [r for r in mine if r.get("kind") in ("search", "train")]
    summary: dict[str, Any] = {}
    for key in steps[0] if steps else ():
        values = [r[key] for r in steps if isinstance(r.get(key), int | float)]
        if values and key not in ("epoch", "step"):
            summary[key] = float(np.mean(values))
    for r in mine:
        if r.get("kind") not in ("search", "train"):
            summary.update({k: v for k, v in r.items() if k != "kind"})
    summary["epoch"] = epoch
    return summary


class Resumed(NamedTuple):
    """Where a run starts: its state, (epoch, batch), unlogged metrics, seconds spent before."""

    state: Any
    start: tuple[int, int]
    pending: list[dict[str, float]]
    elapsed: float


def restore_or_start(
    checkpoints: Checkpoints, metrics_log: MetricsLog, fresh: Any, resume: bool
) -> Resumed:
    """The fresh state, or the latest checkpoint with metrics.jsonl rewritten to match it."""
    if not resume:
        return Resumed(fresh, (0, 0), [], 0.0)
    if checkpoints.latest_step() is None:
        raise RunDirError(
            f"cannot resume: {checkpoints.directory} holds no complete checkpoint; "
            "start over with --overwrite"
        )
    state, meta = checkpoints.restore(fresh)
    metrics_log.restore(meta["metrics"])
    return Resumed(state, (meta["epoch"], meta["batch"]), meta["pending"], meta["elapsed"])


def checkpoint_writer(
    checkpoints: Checkpoints, elapsed_before: float, wall_start: float
) -> Callable[[Any, dict[str, Any]], None]:
    """save(state, meta) for `run_epochs`, adding the wall seconds the run has taken."""

    def save(state: Any, meta: dict[str, Any]) -> None:
        elapsed = elapsed_before + time.perf_counter() - wall_start
        checkpoints.save(meta["step"], state, {**meta, "elapsed": elapsed})

    return save
