"""What a run shows while it runs, besides the progress bar: TensorBoard event files and
architecture-weight pictures (`run.tensorboard`, `run.plots` switch them)."""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from nasax.core.io import atomic_write_bytes, is_primary
from nasax.loop.plots import arch_kinds, evolution_figure, heatmap_figure, png_bytes, softmax

ARCH_DIR = "arch"
"""Pictures of the architecture weights inside a run directory: `epoch_NNN.png` (the
heatmap at the end of each epoch) and `evolution_<kind>.png` (over the whole search)."""


class RunViews:
    """TensorBoard scalars for every metric record, and per-epoch architecture pictures."""

    def __init__(self, run_dir: str | os.PathLike, *, tensorboard: bool, plots: bool) -> None:
        # In a multi-host job process 0 shows the run (the others hold the same figures).
        self.run_dir, self.plots = Path(run_dir), plots and is_primary()
        self.tensorboard = None
        if tensorboard and is_primary():
            from nasax.loop.tensorboard_log import TensorBoardLog

            self.tensorboard = TensorBoardLog(self.run_dir)

    @property
    def sinks(self) -> list[Callable[[Mapping[str, Any]], None]]:
        """Extra consumers of metric records, for `MetricsLog(sinks=...)`."""
        return [self.tensorboard.record] if self.tensorboard else []

    def arch_epoch(
        self,
        weights: Mapping[str, np.ndarray],
        ops: Sequence[str],
        edges: np.ndarray,
        epoch: int,
        step: int,
    ) -> None:
        """The heatmap of the softmax weights after `epoch` (from 0) as PNG (`plots`), and
        in TensorBoard as histograms (and the heatmap image when `plots` drew it)."""
        kinds = arch_kinds(weights)
        png = None
        if kinds and self.plots:
            figure = heatmap_figure(kinds, ops, np.asarray(edges), f"epoch {epoch + 1}")
            png = png_bytes(figure, dpi=80)  # one per epoch: small and quick
            atomic_write_bytes(self.run_dir / ARCH_DIR / f"epoch_{epoch + 1:03d}.png", png)
        if kinds and self.tensorboard:  # the heatmap image only where it was drawn anyway
            probs = {k: softmax(v) for k, v in kinds.items()}
            self.tensorboard.arch_weights(probs, ops, step, png)

    def arch_history(
        self, history: Mapping[str, Sequence[np.ndarray]], ops: Sequence[str], edges: np.ndarray
    ) -> None:
        """How each edge's weights evolved over the epochs: one PNG per cell kind."""
        if not self.plots:
            return
        for kind, rows in arch_kinds({k: np.stack(v) for k, v in history.items() if v}).items():
            fig = evolution_figure(rows, ops, np.asarray(edges), f"{kind} cell over the search")
            png = png_bytes(fig, dpi=80)
            atomic_write_bytes(self.run_dir / ARCH_DIR / f"evolution_{kind}.png", png)

    def close(self) -> None:
        if self.tensorboard:
            self.tensorboard.close()


__all__ = ["ARCH_DIR", "RunViews"]
