"""Machinery shared by the search and the retraining loops: signals, prefetch, evaluation."""

from __future__ import annotations

import contextlib
import resource
import signal
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
import yaml

from nasax.config import Config, validate_config
from nasax.data import Batch, eval_batches
from nasax.errors import NasaxError, NonFiniteError, RunDirError
from nasax.progress import LoopProgress
from nasax.rundir import MetricsLog


class Interrupted(NasaxError):
    """The run was stopped by a signal after saving a checkpoint."""


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


def prefetch(it: Iterator[Batch], size: int = 2) -> Iterator[Batch]:
    """Starts host-to-device copies `size` batches ahead."""
    queue: list[Batch] = []
    for batch in it:
        queue.append(jax.device_put(batch))
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
) -> dict[str, float]:
    """Loss and accuracy over every example of (x, y); `eval_fn` returns per-batch sums."""
    totals: dict[str, float] = {"loss_sum": 0.0, "correct": 0.0, "count": 0.0}
    sums = [eval_fn(state, b) for b in prefetch(eval_batches(x, y, batch_size))]
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


def flush_metrics(
    pending: list[dict[str, jax.Array]], epoch: int, step: int, kind: str = "search"
) -> dict[str, Any]:
    """Brings the pending step metrics to the host, averages them and checks they are finite."""
    values = jax.device_get(pending)
    pending.clear()
    record: dict[str, Any] = {"kind": kind, "epoch": epoch + 1, "step": step}
    for key in values[0]:
        series = np.array([float(v[key]) for v in values])
        if not np.all(np.isfinite(series)):
            bad = step - len(series) + 1 + int(np.argmin(np.isfinite(series)))
            raise NonFiniteError(
                f"{key} became {series[~np.isfinite(series)][0]} at step {bad} "
                f"(epoch {epoch + 1}); "
                "the last checkpoint is kept; lower the learning rates (optim.weights.lr, "
                "optim.arch.lr) or set optim.weights.grad_clip"
            )
        record[key] = float(series.mean())
    return record


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
    """Where an epoch loop ended and how fast it ran."""

    state: Any
    step: int
    images: int
    seconds: float


def run_epochs(
    state: Any,
    step_fn: Callable[..., tuple[Any, dict[str, jax.Array]]],
    epoch_batches: Callable[[int, int], Iterator[tuple[Batch, ...]]],
    *,
    epochs: int,
    steps_per_epoch: int,
    batch_size: int,
    start: tuple[int, int],
    log_every: int,
    kind: str,
    metrics_log: MetricsLog,
    progress: LoopProgress,
    save: Callable[[Any, int, int, int], None],
    end_epoch: Callable[[Any, int, int], dict[str, Any]],
    shown: Sequence[str],
    resume_hint: str,
) -> LoopResult:
    """Runs jitted steps epoch by epoch with logging, checkpoints and Ctrl-C handling.

    Metrics stay on the device until a log step, where they are averaged, checked for
    NaN and written. Ctrl-C or SIGTERM saves a checkpoint after the current step and
    raises `Interrupted`.

    Args:
        state: the state to start from.
        step_fn: (state, *batches) -> (state, metrics), compiled.
        epoch_batches: (epoch, first batch) -> iterator of the batches of each step.
        start: (epoch, batch) to start at; (0, 0) for a fresh run.
        kind: the `kind` of the per-step metric records.
        save: save(state, epoch, batch, step) writes a checkpoint; `batch` 0 means the
            epoch is complete.
        end_epoch: end_epoch(state, epoch, step) -> extra fields of the epoch record.
        shown: metric names the progress bar shows.
        resume_hint: how to continue, for the message of an interrupted run.
    """
    start_epoch, start_batch = start
    step = start_epoch * steps_per_epoch + start_batch
    pending: list[dict[str, jax.Array]] = []
    images, seconds_total = 0, 0.0
    with progress, StopRequests() as stop:
        progress.advance(step, start_epoch)
        for epoch in range(start_epoch, epochs):
            first = start_batch if epoch == start_epoch else 0
            stream = epoch_batches(epoch, first)
            tick, since = time.perf_counter(), 0
            for batch_index in range(first, steps_per_epoch):
                state, metrics = step_fn(state, *next(stream))
                pending.append(metrics)
                step, since = step + 1, since + 1
                if step % log_every == 0 or batch_index == steps_per_epoch - 1:
                    record = flush_metrics(pending, epoch, step, kind=kind)
                    seconds = time.perf_counter() - tick
                    record["images_per_sec"] = since * batch_size / seconds
                    images, seconds_total = images + since * batch_size, seconds_total + seconds
                    metrics_log.write(record)
                    progress.show({k: record[k] for k in shown if k in record})
                    tick, since = time.perf_counter(), 0
                progress.advance(step, epoch)
                if stop.signum is not None:
                    pending.clear()
                    save(state, epoch, batch_index + 1, step)
                    raise Interrupted(
                        f"interrupted at epoch {epoch + 1} step {step}; checkpoint saved; "
                        f"{resume_hint}"
                    )
            record = {"kind": "epoch", "epoch": epoch + 1, "step": step}
            record.update(end_epoch(state, epoch, step))
            metrics_log.write(record)
            save(state, epoch + 1, 0, step)
    return LoopResult(state, step, images, seconds_total)
