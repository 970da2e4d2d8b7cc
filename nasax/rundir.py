"""Run directories: creation rules, the metrics log, and what a finished run leaves."""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from nasax.errors import RunDirError
from nasax.io import atomic_write_text, is_primary
from nasax.parallel import sync_processes


def default_run_dir(out_dir: str, name: str) -> Path:
    """`<out_dir>/<name>-<YYYYmmdd-HHMMSS>`: a new folder per run."""
    return Path(out_dir) / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}"


def prepare_run_dir(path: str | os.PathLike, *, resume: bool, overwrite: bool) -> Path:
    """Creates (or, resuming, checks) a run directory; never overwrites without being told."""
    path = Path(path)
    sync_processes("nasax: run directory check")  # no process deletes while one looks
    if resume and overwrite:
        raise RunDirError("--resume and --overwrite exclude each other")
    if resume:
        if not (path / "checkpoints").is_dir():
            raise RunDirError(f"cannot resume: {path} holds no checkpoints/ from an earlier run")
        return path
    if path.exists() and any(path.iterdir()):
        if not overwrite:
            raise RunDirError(
                f"run directory {path} exists and is not empty; pass --resume to continue it "
                "or --overwrite to start over"
            )
        sync_processes("nasax: run directory checked")
        if is_primary():
            shutil.rmtree(path)
    if is_primary():
        path.mkdir(parents=True, exist_ok=True)
    sync_processes("nasax: run directory ready")
    return path


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
        with self.path.open("a") as f:
            f.write(json.dumps(record) + "\n")
            f.flush()
        for sink in self.sinks:
            sink(record)
