"""Pictures of a genotype's cells: a text rendering for the terminal, Graphviz `dot` source,
and PNG/SVG drawn by Graphviz's `dot` program where it is installed (`nasax show`)."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

from nasax.core.errors import NasaxError
from nasax.core.io import atomic_write_bytes, atomic_write_text
from nasax.core.registry import Registry
from nasax.supernet.genotypes import Genotype

GRAPHVIZ_HINT = (
    "install Graphviz for PNG/SVG pictures (Debian/Ubuntu: apt-get install graphviz; "
    "macOS: brew install graphviz; conda: conda install graphviz)"
)


class GraphvizMissing(NasaxError):
    """Graphviz's `dot` program is not on PATH."""


def node_names(genotype: Genotype) -> list[str]:
    """Names of a cell's nodes by index: the inputs, then the intermediate nodes."""
    n_inputs = genotype.resolve_space().n_inputs
    inputs = ["c_{k-2}", "c_{k-1}"] if n_inputs == 2 else [f"in{i}" for i in range(n_inputs)]
    n_nodes = max(len(nodes) for nodes, _ in genotype.cells.values())
    return inputs[-n_inputs:] + [str(n_inputs + i) for i in range(n_nodes)]


def cell_kinds(genotype: Genotype) -> tuple[str, ...]:
    """The genotype's cell kinds (`normal`, `reduce`)."""
    return tuple(genotype.cells)


def cell_text(genotype: Genotype, kind: str) -> str:
    """One line per node (`node 2 = sep_conv_3x3(c_{k-1}) + ...`) and the cell's output."""
    nodes, concat = genotype.cell(kind)
    names = node_names(genotype)
    n_inputs = genotype.resolve_space().n_inputs
    lines = [f"{kind} cell"]
    for i, node in enumerate(nodes):
        terms = " + ".join(f"{op}({names[src]})" for op, src in node) or "0"
        lines.append(f"  node {names[n_inputs + i]} = {terms}")
    joined = ", ".join(names[c] for c in concat)
    output = f"concat({joined})" if len(concat) > 1 else joined
    lines.append(f"  output c_{{k}} = {output}")
    return "\n".join(lines)


def genotype_text(genotype: Genotype) -> str:
    """Every cell of the genotype as text, NAS-Bench-201 string first for such spaces."""
    parts = [cell_text(genotype, kind) for kind in cell_kinds(genotype)]
    if len(cell_kinds(genotype)) == 1:
        parts.insert(0, genotype.to_arch_string())
    return "\n".join(parts)


def _quote(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def genotype_dot(genotype: Genotype) -> str:
    """Graphviz source: one cluster per cell kind, an edge per (op, input) labelled by op."""
    names = node_names(genotype)
    n_inputs = genotype.resolve_space().n_inputs
    lines = [
        "digraph genotype {",
        "  rankdir=LR;",
        '  node [shape=box, style="rounded,filled", fontname="Helvetica", fontsize=11];',
        '  edge [fontname="Helvetica", fontsize=9];',
    ]
    for kind in cell_kinds(genotype):
        nodes, concat = genotype.cell(kind)

        def ident(index: int, kind: str = kind) -> str:
            return _quote(f"{kind}:{names[index]}")

        lines += [f"  subgraph cluster_{kind} {{", f"    label={_quote(kind + ' cell')};"]
        for i in range(n_inputs):
            lines.append(f"    {ident(i)} [label={_quote(names[i])}, fillcolor=darkseagreen2];")
        for i in range(len(nodes)):
            index = n_inputs + i
            lines.append(f"    {ident(index)} [label={_quote(names[index])}, fillcolor=lightblue];")
        out = _quote(f"{kind}:c_{{k}}")
        lines.append(f'    {out} [label="c_{{k}}", fillcolor=palegoldenrod];')
        for i, node in enumerate(nodes):
            for op, src in node:
                style = ", style=dashed, color=gray50" if op == "none" else ""
                lines.append(
                    f"    {ident(src)} -> {ident(n_inputs + i)} [label={_quote(op)}{style}];"
                )
        for c in concat:
            lines.append(f"    {ident(c)} -> {out} [color=gray40];")
        lines.append("  }")
    lines.append("}")
    return "\n".join(lines) + "\n"


def run_dot(source: str, fmt: str) -> bytes:
    """Runs Graphviz's `dot -T<fmt>` on `source`; GraphvizMissing when it is not installed."""
    dot = shutil.which("dot")
    if dot is None:
        raise GraphvizMissing(f"Graphviz's dot program is not on PATH; {GRAPHVIZ_HINT}")
    done = subprocess.run(
        [dot, f"-T{fmt}"], input=source.encode(), capture_output=True, check=False, timeout=60
    )
    if done.returncode != 0:
        raise NasaxError(f"dot -T{fmt} failed: {done.stderr.decode(errors='replace').strip()}")
    return done.stdout


WRITERS: Registry[Callable[[Genotype, Path], None]] = Registry("picture format")
"""File suffix -> writer(genotype, path) for `nasax show --out`."""


@WRITERS.decorator(".dot")
def _write_dot(genotype: Genotype, path: Path) -> None:
    atomic_write_text(path, genotype_dot(genotype))


@WRITERS.decorator(".png")
def _write_png(genotype: Genotype, path: Path) -> None:
    atomic_write_bytes(path, run_dot(genotype_dot(genotype), "png"))


@WRITERS.decorator(".svg")
def _write_svg(genotype: Genotype, path: Path) -> None:
    atomic_write_bytes(path, run_dot(genotype_dot(genotype), "svg"))


def draw_genotype(genotype: Genotype, out: str | os.PathLike) -> Path:
    """Draws the genotype to `out` (.png, .svg or .dot); returns the path written.

    Without Graphviz a .png/.svg request raises GraphvizMissing; `nasax show` then
    writes the .dot text beside it.
    """
    path = Path(out)
    if path.suffix.lower() not in WRITERS:
        raise NasaxError(
            f"cannot draw to {str(path)!r}: the suffix must be one of {', '.join(WRITERS)}"
        )
    WRITERS.get(path.suffix.lower())(genotype, path)
    return path


__all__ = [
    "GRAPHVIZ_HINT",
    "WRITERS",
    "GraphvizMissing",
    "cell_text",
    "draw_genotype",
    "genotype_dot",
    "genotype_text",
    "run_dot",
]
