"""TensorBoard event files of a run (`tensorboard --logdir RUN_DIR`), written with tensorboardX.

Every metric record becomes scalars tagged `<kind>/<name>` at its step; the
architecture weights go in as histograms (one per cell kind and op, over the edges)
and as the heatmap picture of each epoch.
"""

from __future__ import annotations

import io
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

_POSITION = ("kind", "epoch", "step")


class TensorBoardLog:
    """Scalars, histograms and images of one run in `<run_dir>/tensorboard`."""

    def __init__(self, run_dir: str | os.PathLike) -> None:
        from tensorboardX import SummaryWriter

        self.directory = Path(run_dir) / "tensorboard"
        self._writer = SummaryWriter(str(self.directory), flush_secs=30)

    def record(self, record: Mapping[str, Any]) -> None:
        """Writes a metrics.jsonl record's numbers as scalars; epoch records flush."""
        kind, step = record.get("kind", "metrics"), int(record.get("step", 0))
        for key, value in record.items():
            if key in _POSITION or isinstance(value, bool) or not isinstance(value, int | float):
                continue
            if np.isfinite(value):
                self._writer.add_scalar(f"{kind}/{key}", float(value), step)
        if kind == "epoch":
            self._writer.flush()

    def arch_weights(
        self, probs: Mapping[str, np.ndarray], ops: Sequence[str], step: int, png: bytes | None
    ) -> None:
        """Softmax weights per cell kind as histograms over the edges, one per op, and the
        heatmap PNG as an image."""
        for kind, p in probs.items():
            for o, op in enumerate(ops):
                self._writer.add_histogram(f"arch/{kind}/{op}", np.asarray(p)[:, o], step)
        if png is not None:
            from PIL import Image

            image = np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))
            self._writer.add_image("arch/heatmap", image, step, dataformats="HWC")
        self._writer.flush()

    def close(self) -> None:
        self._writer.close()


__all__ = ["TensorBoardLog"]
