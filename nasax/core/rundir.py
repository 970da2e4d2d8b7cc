"""Run directories: creation rules, the lock of their writer, the metrics log, and what a
finished run leaves."""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import jax

from nasax.core.errors import NasaxError, RunDirBusy, RunDirError
from nasax.core.io import append_text, atomic_write_text, is_primary
from nasax.core.processes import process_zero_flag, sync_processes
from nasax.core.runlock import LOCK_NAME, RunLock, lock_run_dir
from nasax.core.storage import storage_errors


def default_run_dir(out_dir: str, name: str) -> Path:
    """`<out_dir>/<name>-<YYYYmmdd-HHMMSS>`: a new folder per run."""
    return Path(out_dir) / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}"


@contextmanager
def open_run_dir(
    path: str | os.PathLike, *, resume: bool, overwrite: bool, command: str
) -> Iterator[Path]:
    """Creates (or, resuming, checks) a run directory and holds its lock while the block
    runs; never overwrites without being told.

    The lock is taken before anything changes (before `overwrite` deletes the old run),
    by process 0 of a multi-host job only. `command` names the holder to other processes.

    Raises:
        RunDirError: the directory cannot be used as asked.
        RunDirBusy: another process holds its lock.
    """
    path = Path(path)
    sync_processes("nasax: run directory check")  # no process deletes while one looks
    if resume and overwrite:
        raise RunDirError("--resume and --overwrite exclude each other")
    if resume and not (path / "checkpoints").is_dir():
        raise RunDirError(f"cannot resume: {path} holds no checkpoints/ from an earlier run")
    if not resume and not overwrite:
        _refuse_old_run(path)
    with lock_on_process_zero(path, command):
        if not resume and not overwrite:
            _refuse_old_run(path)  # again: a run may have ended here since the first look
        if overwrite:
            sync_processes("nasax: run directory checked")
            if is_primary():
                _clear(path)
        sync_processes("nasax: run directory ready")
        yield path


def holds_run(path: Path) -> bool:
    """Whether `path` holds files of a run (its lock file alone does not count)."""
    return path.is_dir() and any(p.name != LOCK_NAME for p in path.iterdir())


def _refuse_old_run(path: Path) -> None:
    if holds_run(path):
        raise RunDirError(
            f"run directory {path} exists and is not empty; pass --resume to continue it "
            "or --overwrite to start over"
        )


def _clear(path: Path) -> None:
    """Deletes what `path` holds except the lock file (which this process holds)."""
    with storage_errors(path, "delete the old run in"):
        for child in path.iterdir():
            if child.name == LOCK_NAME:
                continue
            if child.is_dir() and not child.is_symlink():
                shutil.rmtree(child)
            else:
                child.unlink()


def lock_on_process_zero(path: Path, command: str) -> RunLock:
    """Process 0 takes the lock; in a multi-host job every process learns whether it did."""
    if jax.process_count() == 1:
        return lock_run_dir(path, command)
    lock, refusal = RunLock(path, None), None
    if is_primary():
        try:
            lock = lock_run_dir(path, command)
        except NasaxError as e:
            refusal = e
    if not process_zero_flag(refusal is None):
        raise refusal or RunDirBusy(
            f"run directory {path}: process 0 could not take its lock; see its message"
        )
    return lock


class MetricsLog:
    """Appends one JSON object per line to metrics.jsonl and keeps the records in memory.

    The records go into every checkpoint, so a resumed run rewrites the file exactly as
    it stood at that checkpoint, whatever a crash left behind.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        sinks: Sequence[Callable[[dict[str, Any]], None]] = (),
    ) -> None:
        self.path = Path(path)
        self.records: list[dict[str, Any]] = []
        self.sinks = list(sinks)  # e.g. TensorBoard: each new record goes there too

    def restore(self, records: list[dict[str, Any]]) -> None:
        """Replaces the log with `records` (from a checkpoint), atomically."""
        self.records = [dict(r) for r in records]
        atomic_write_text(self.path, "".join(json.dumps(r) + "\n" for r in self.records))

    def write(self, record: dict[str, Any]) -> None:
        self.records.append(record)
        if not is_primary():  # every process keeps the records; process 0 writes them
            return
        append_text(self.path, json.dumps(record) + "\n")
        for sink in self.sinks:
            sink(record)
