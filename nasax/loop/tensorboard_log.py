"""TensorBoard event files of a run (`tensorboard --logdir RUN_DIR`), written with tensorboardX.

Every metric record becomes scalars tagged `<kind>/<name>` at its step; the
architecture weights go in as histograms (one per cell kind and op, over the edges)
and as the heatmap picture of each epoch.

Events are written in the calling thread (tensorboardX's `EventsWriter`, not its
queue and writer thread), so a full disk raises here, as one `StorageError`, instead
of killing a background thread.
"""

from __future__ import annotations

import io
import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from nasax.core.storage import storage_errors

_POSITION = ("kind", "epoch", "step")


class TensorBoardLog:
    """Scalars, histograms and images of one run in `<run_dir>/tensorboard`."""

    def __init__(self, run_dir: str | os.PathLike) -> None:
        from tensorboardX.event_file_writer import EventsWriter

        self.directory = Path(run_dir) / "tensorboard"
        with storage_errors(self.directory, "write TensorBoard events to"):
            self.directory.mkdir(parents=True, exist_ok=True)
            self._events: Any = EventsWriter(str(self.directory / "events"))

    def _write(self, summaries: Sequence[Any], step: int, flush: bool) -> None:
        from tensorboardX.proto.event_pb2 import Event

        with storage_errors(self.directory, "write TensorBoard events to"):
            for summary in summaries:
                self._events.write_event(Event(wall_time=time.time(), step=step, summary=summary))
            if flush:
                self._events.flush()

    def record(self, record: Mapping[str, Any]) -> None:
        """Writes a metrics.jsonl record's numbers as scalars; epoch records flush."""
        from tensorboardX.summary import scalar

        kind, step = record.get("kind", "metrics"), int(record.get("step", 0))
        summaries = [
            scalar(f"{kind}/{key}", float(value))
            for key, value in record.items()
            if key not in _POSITION
            and not isinstance(value, bool)
            and isinstance(value, int | float)
            and np.isfinite(value)
        ]
        self._write(summaries, step, flush=kind == "epoch")

    def arch_weights(
        self, probs: Mapping[str, np.ndarray], ops: Sequence[str], step: int, png: bytes | None
    ) -> None:
        """Softmax weights per cell kind as histograms over the edges, one per op, and the
        heatmap PNG as an image."""
        from tensorboardX.summary import histogram, image

        summaries = [
            histogram(f"arch/{kind}/{op}", np.asarray(p)[:, o], bins="auto")
            for kind, p in probs.items()
            for o, op in enumerate(ops)
        ]
        if png is not None:
            from PIL import Image

            picture = np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))
            summaries.append(image("arch/heatmap", picture, dataformats="HWC"))
        self._write(summaries, step, flush=True)

    def close(self) -> None:
        with storage_errors(self.directory, "write TensorBoard events to"):
            self._events.close()


__all__ = ["TensorBoardLog"]
