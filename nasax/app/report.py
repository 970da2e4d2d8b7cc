"""`nasax report RUN_DIR`: one static HTML page of a run, every picture inlined as a data
URI, so it opens anywhere without a server or network access."""

from __future__ import annotations

import base64
import html
import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from nasax.core.errors import RunDirError
from nasax.core.io import atomic_write_text

REPORT_NAME = "report.html"

_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2rem auto; max-width: 1100px;
       color: #222; line-height: 1.4; padding: 0 1rem; }
h1 { font-size: 1.5rem; } h2 { font-size: 1.2rem; border-bottom: 1px solid #ddd; }
table { border-collapse: collapse; } td, th { padding: 0.2rem 0.8rem; text-align: left;
       border-bottom: 1px solid #eee; }
figure { margin: 1rem 0; } figure img { max-width: 100%; border: 1px solid #eee; }
figcaption { color: #555; font-size: 0.9rem; }
pre { background: #f6f6f6; padding: 0.8rem; overflow-x: auto; font-size: 0.85rem; }
.note { color: #a33; }
"""

_SUMMARY_FIELDS = (
    ("kind", "run"),
    ("strategy", "strategy"),
    ("dataset", "dataset"),
    ("seed", "seed"),
    ("epochs", "epochs"),
    ("steps", "steps"),
    ("batch_size", "batch size"),
    ("test_accuracy", "test accuracy"),
    ("test_loss", "test loss"),
    ("params", "parameters"),
    ("params_auxiliary", "parameters of the auxiliary head"),
    ("wall_seconds", "wall time (s)"),
    ("compile_seconds", "compilation (s)"),
    ("images_per_sec", "images/s"),
    ("peak_rss_mb", "peak memory (MB)"),
    ("stopped_early", "stopped at the time limit"),
    ("time_limit", "time limit (s)"),
    ("genotype_text", "cell"),
)


def _format(value: Any) -> str:
    if isinstance(value, bool) or value is None:
        return "yes" if value is True else "no" if value is False else "—"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:.4f}" if abs(value) < 10 else f"{value:,.1f}"
    return str(value)


def _img(figure_id: str, data: bytes, mime: str, caption: str) -> str:
    uri = f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"
    return (
        f'<figure id="{figure_id}"><img id="img-{figure_id}" alt="{html.escape(caption)}" '
        f'src="{uri}"><figcaption>{html.escape(caption)}</figcaption></figure>'
    )


def _read_records(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    records = []
    for line in path.read_text().splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:  # a line a killed run left half-written
            continue
    return records


def _summary_section(summary: dict[str, Any]) -> list[str]:
    if not summary:
        return ["<h2>Final figures</h2>", '<p class="note">no summary.json: unfinished run</p>']
    rows = [
        f"<tr><th>{html.escape(label)}</th><td>{html.escape(_format(summary[key]))}</td></tr>"
        for key, label in _SUMMARY_FIELDS
        if key in summary
    ]
    return ["<h2>Final figures</h2>", '<table id="summary">', *rows, "</table>"]


def _curves_section(records: list[dict[str, Any]]) -> list[str]:
    from nasax.loop.plots import curves_figure, png_bytes

    if not records:
        return []
    png = png_bytes(curves_figure(records))
    caption = "loss and accuracy by step (training, validation, test at epoch ends)"
    return ["<h2>Curves</h2>", _img("curves", png, "image/png", caption)]


_COST_FIELDS = (
    ("metric", "budget metric"),
    ("target", "budget target"),
    ("within_target", "within the target"),
    ("params", "parameters at the deployed size"),
    ("flops", "FLOPs per image at the deployed size"),
    ("latency_ms_predicted", "latency predicted (ms)"),
    ("latency_ms_measured", "latency measured here (ms)"),
    ("latency_batch_size", "latency batch size"),
)


def _cost_section(summary: dict[str, Any], records: list[dict[str, Any]]) -> list[str]:
    """A budgeted search's cost: the found cell's figures and the expected cost by step."""
    from nasax.loop.plots import cost_figure, png_bytes

    cost = summary.get("cost") if summary else None
    if not cost:
        return []
    rows = [
        f"<tr><th>{html.escape(label)}</th><td>{html.escape(_format(cost[key]))}</td></tr>"
        for key, label in _COST_FIELDS
        if key in cost
    ]
    out = ["<h2>Budget</h2>", '<table id="cost">', *rows, "</table>"]
    if any("expected_cost" in r for r in records):
        unit = {"params": "parameters", "flops": "FLOPs", "latency": "ms"}[cost["metric"]]
        png = png_bytes(cost_figure(records, cost["target"], unit))
        caption = "expected cost of the architecture by step, and the target"
        out.append(_img("cost", png, "image/png", caption))
    return out


def _arch_section(run_dir: Path) -> list[str]:
    from nasax.loop.plots import arch_kinds, evolution_figure, heatmap_figure, png_bytes

    path = run_dir / "alphas.npz"
    if not path.is_file():
        return []
    with np.load(path) as f:
        arrays = {k: f[k] for k in f.files}
    kinds = arch_kinds(arrays)
    if not kinds or "ops" not in arrays:
        return []
    ops, edges = [str(o) for o in arrays["ops"]], arrays["edges"]
    epochs = next(iter(kinds.values())).shape[0]
    out = ["<h2>Architecture weights</h2>"]
    last = {k: v[-1] for k, v in kinds.items()}
    png = png_bytes(heatmap_figure(last, ops, edges, f"after epoch {epochs}"))
    out.append(_img("arch-final", png, "image/png", "softmax weights per edge and op at the end"))
    for kind, history in kinds.items():
        fig = evolution_figure(history, ops, edges, f"{kind} cell over the search")
        caption = f"{kind} cell: each edge's softmax weights by epoch"
        out.append(_img(f"arch-evolution-{kind}", png_bytes(fig), "image/png", caption))
    return out


def _cells_section(run_dir: Path) -> list[str]:
    from nasax.supernet.drawing import GraphvizMissing, genotype_dot, genotype_text, run_dot
    from nasax.supernet.genotypes import Genotype

    path = run_dir / "genotype.json"
    if not path.is_file():
        return []
    genotype = Genotype.load(path)
    out = ["<h2>Cells</h2>", f'<pre id="cells">{html.escape(genotype_text(genotype))}</pre>']
    try:
        svg = run_dot(genotype_dot(genotype), "svg")
        out.append(_img("cells-drawing", svg, "image/svg+xml", "the derived cells"))
    except GraphvizMissing as e:
        out.append(f'<p class="note">{html.escape(str(e))}</p>')
    return out


def _config_section(run_dir: Path) -> list[str]:
    path = run_dir / "config.yaml"
    if not path.is_file():
        return []
    return ["<h2>Config</h2>", f'<pre id="config">{html.escape(path.read_text())}</pre>']


def render_report(run_dir: str | os.PathLike) -> str:
    """The HTML page of a search or retraining run directory."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir() or not (run_dir / "config.yaml").is_file():
        raise RunDirError(f"{run_dir} is not a nasax run directory (it needs config.yaml)")
    summary_path = run_dir / "summary.json"
    summary = json.loads(summary_path.read_text()) if summary_path.is_file() else {}
    records = _read_records(run_dir / "metrics.jsonl")
    title = f"nasax {summary.get('kind', 'run')}: {run_dir.name}"
    sections: Iterable[str] = [
        *_summary_section(summary),
        *_curves_section(records),
        *_cost_section(summary, records),
        *_arch_section(run_dir),
        *_cells_section(run_dir),
        *_config_section(run_dir),
    ]
    return "\n".join(
        [
            "<!DOCTYPE html>",
            '<html lang="en"><head><meta charset="utf-8">',
            f"<title>{html.escape(title)}</title><style>{_STYLE}</style></head><body>",
            f"<h1>{html.escape(title)}</h1>",
            f"<p>{html.escape(str(run_dir.absolute()))}</p>",
            *sections,
            "</body></html>",
        ]
    )


def write_report(run_dir: str | os.PathLike, out: str | os.PathLike | None = None) -> Path:
    """Writes the report (default RUN_DIR/report.html) atomically; returns its path."""
    path = Path(out) if out else Path(run_dir) / REPORT_NAME
    atomic_write_text(path, render_report(run_dir))
    return path


__all__ = ["REPORT_NAME", "render_report", "write_report"]
