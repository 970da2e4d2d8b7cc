"""Pictures of a run (matplotlib, PNG): architecture-weight heatmaps and their evolution,
and loss/accuracy curves from metrics.jsonl. Headless: the Agg backend, no display."""

from __future__ import annotations

import io
import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from nasax.core.io import atomic_write_bytes


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def softmax(alphas: np.ndarray) -> np.ndarray:
    """Softmax over the last axis (the ops of an edge), in float64 for stable pictures."""
    a = np.asarray(alphas, np.float64)
    e = np.exp(a - a.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def edge_labels(edges: np.ndarray) -> list[str]:
    """'src → node' per edge, nodes numbered as in genotypes (inputs first)."""
    edges = np.asarray(edges)
    n_inputs = int(np.sum(edges[:, 0] == 0))
    return [f"{int(src)} → {int(node) + n_inputs}" for node, src in edges]


def arch_kinds(arrays: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The alpha arrays of an alphas.npz-like mapping by cell kind: {'normal': ...}."""
    return {
        k.removeprefix("alpha_"): np.asarray(v) for k, v in arrays.items() if k.startswith("alpha_")
    }


def heatmap_figure(
    weights: Mapping[str, np.ndarray], ops: Sequence[str], edges: np.ndarray, title: str
) -> Any:
    """One heatmap per cell kind: softmax weight per edge (rows) and op (columns)."""
    plt = _pyplot()
    kinds = list(weights)
    n_edges = len(edges)
    fig, axes = plt.subplots(
        1,
        len(kinds),
        figsize=(1.0 + 0.8 * len(ops) * len(kinds), 1.4 + 0.35 * n_edges),
        squeeze=False,
    )
    for ax, kind in zip(axes[0], kinds):
        probs = softmax(weights[kind])
        # The colour range follows the data: early in a search the weights differ by little.
        image = ax.imshow(probs, cmap="viridis", aspect="auto")
        ax.set_xticks(range(len(ops)), [str(o) for o in ops], rotation=60, ha="right", fontsize=7)
        ax.set_yticks(range(n_edges), edge_labels(edges), fontsize=7)
        ax.set_title(f"{kind} cell", fontsize=9)
        middle = (probs.max() + probs.min()) / 2
        for (row, col), value in np.ndenumerate(probs):
            shade = "black" if value > middle else "white"
            ax.text(col, row, f"{value:.3f}", ha="center", va="center", fontsize=6, color=shade)
        fig.colorbar(image, ax=ax, shrink=0.8, label="softmax weight")
    fig.suptitle(title, fontsize=10)
    return fig


def evolution_figure(history: np.ndarray, ops: Sequence[str], edges: np.ndarray, title: str) -> Any:
    """How each edge's softmax weights moved over the epochs: one panel per edge, one
    line per op. `history` is (epochs, edges, ops) of raw architecture parameters."""
    plt = _pyplot()
    probs = softmax(history)
    n_edges = probs.shape[1]
    cols = min(n_edges, 4 if n_edges > 6 else 3)
    rows = -(-n_edges // cols)
    fig, axes = plt.subplots(
        rows, cols, figsize=(3.2 * cols, 2.2 * rows + 0.8), squeeze=False, sharey=True
    )  # the y range follows the data, as small moves matter early in a search
    epochs = np.arange(1, probs.shape[0] + 1)
    labels = edge_labels(edges)
    for e, ax in enumerate(axes.flat):
        if e >= n_edges:
            ax.axis("off")
            continue
        for o, op in enumerate(ops):
            ax.plot(epochs, probs[:, e, o], marker="." if len(epochs) < 20 else None, label=op)
        ax.set_title(f"edge {labels[e]}", fontsize=8)
        ax.tick_params(labelsize=7)
    axes.flat[0].legend(fontsize=6, loc="upper left")
    fig.supxlabel("epoch", fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.subplots_adjust(hspace=0.45, wspace=0.12, top=0.9)  # cheaper than tight_layout
    return fig


def curves_figure(records: Sequence[Mapping[str, Any]]) -> Any:
    """Loss and accuracy by step: the logged training/validation means and the
    per-epoch test figures of a metrics.jsonl."""
    plt = _pyplot()
    fig, (loss_ax, acc_ax) = plt.subplots(1, 2, figsize=(10, 3.6))
    steps = [r for r in records if r.get("kind") != "epoch"]
    epochs = [r for r in records if r.get("kind") == "epoch" and "test_acc" in r]
    for key, ax in (("loss", loss_ax), ("acc", acc_ax)):
        for prefix in ("train", "val"):
            points = [(r["step"], r[f"{prefix}_{key}"]) for r in steps if f"{prefix}_{key}" in r]
            if points:
                ax.plot(*zip(*points), label=prefix)
        points = [(r["step"], r[f"test_{key}"]) for r in epochs if f"test_{key}" in r]
        if points:
            ax.plot(*zip(*points), marker="o", label="test")
        ax.set_xlabel("step")
        ax.set_title("accuracy" if key == "acc" else "loss", fontsize=10)
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def cost_figure(records: Sequence[Mapping[str, Any]], target: float, unit: str) -> Any:
    """The expected cost of the architecture by step (a budgeted search), and its target."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 3.2))
    points = [(r["step"], r["expected_cost"]) for r in records if "expected_cost" in r]
    ax.plot(*zip(*points), label="expected cost")
    ax.axhline(target, color="#a33", linestyle="--", label="target")
    ax.set_xlabel("step")
    ax.set_ylabel(unit)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def pareto_figure(points: Sequence[tuple[float, float]], front: Sequence[int]) -> Any:
    """A tuning study's trials by cost and value, the front of those no other beats."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 3.6))
    ax.scatter(*zip(*points), color="#999", label="trials")
    line = sorted(points[i] for i in front)
    ax.plot(*zip(*line), marker="o", color="#a33", label="front")
    ax.set_xlabel("cost")
    ax.set_ylabel("value")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def png_bytes(fig: Any, dpi: int = 110) -> bytes:
    """The figure as PNG bytes; the figure is closed."""
    plt = _pyplot()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi, bbox_inches="tight")
    plt.close(fig)
    return buffer.getvalue()


def save_png(fig: Any, path: str | os.PathLike, dpi: int = 110) -> bytes:
    """Writes the figure to `path` atomically; returns the PNG bytes."""
    data = png_bytes(fig, dpi)
    atomic_write_bytes(path, data)
    return data


__all__ = [
    "arch_kinds",
    "curves_figure",
    "edge_labels",
    "evolution_figure",
    "heatmap_figure",
    "png_bytes",
    "save_png",
    "softmax",
]
