"""The progress line fits the terminal: whole labels, the least useful pieces gone first."""

from __future__ import annotations

import io
import itertools
import re

import pytest
from rich.console import Console

from nasax.loop.progress import DROP_ORDER, LoopProgress, Piece, TaskProgress, fit_line

FIGURES = {
    "train_loss": 0.006,
    "train_acc": 1.0,
    "val_loss": 0.102,
    "val_acc": 0.966,
    "images_per_sec": 1234.5,
}
PIECES = (
    "search beta_darts",
    "epoch 50/50",
    "800/800",
    "loss 0.006",
    "acc 1.000",
    "val loss 0.102",
    "val acc 0.966",
    "img/s 1234",
    "ETA 0:00:00",
    "0:00:00",
)
"""Every piece a finished search's line can show, whole, but the bar."""


def _final_line(width: int) -> str:
    """The last line a finished search's bar leaves in a terminal `width` columns wide."""
    console = Console(file=io.StringIO(), width=width, color_system=None)
    with LoopProgress(800, 50, enabled=True, label="search beta_darts", console=console) as bar:
        bar.advance(400, 24)
        bar.show(FIGURES)
        bar.advance(800, 49)
    (line,) = console.file.getvalue().splitlines()
    return line


def _pieces(line: str) -> list[str]:
    """The line's pieces, in order ('bar' for the bar); fails on anything not whole."""
    found, rest = [], line.rstrip()
    while rest:
        if bar := re.match(r"[━╸╺]+ ?", rest):
            found.append("bar")
            rest = rest[bar.end() :]
            continue
        piece = next((p for p in PIECES if rest == p or rest.startswith(p + " ")), None)
        assert piece is not None, f"a cut or unknown piece at {rest!r} in {line!r}"
        found.append(piece)
        rest = rest[len(piece) + 1 :]
    return found


@pytest.mark.parametrize("width", [60, 80, 120])
def test_the_search_line_fits_with_whole_labels(width):
    line = _final_line(width)
    assert len(line) <= width and "…" not in line
    pieces = _pieces(line)
    assert pieces[:2] == ["search beta_darts", "epoch 50/50"]
    assert {"val loss 0.102", "val acc 0.966"} <= set(pieces)  # what goes last
    if width >= 80:
        assert "ETA 0:00:00" in pieces
    if width >= 120:
        assert {"bar", "800/800", "loss 0.006", "acc 1.000"} <= set(pieces)


def test_narrower_lines_drop_the_least_useful_pieces_first():
    lines = [_pieces(_final_line(w)) for w in (160, 120, 100, 80, 60, 40)]
    assert set(lines[0]) == {*PIECES, "bar"}  # everything fits at 160
    for wider, narrower in itertools.pairwise(lines):
        assert set(narrower) <= set(wider)  # nothing comes back as the line narrows
    assert "0:00:00" not in lines[1] and "img/s 1234" not in lines[1]  # elapsed, then rate
    assert lines[-1] == ["search beta_darts", "epoch 50/50"]  # never dropped


def test_fit_line_drops_in_rank_order_and_keeps_what_never_drops():
    pieces = [Piece("label", 0), Piece(None, 3), Piece("count", 1), Piece("figure", 4)]
    # The texts and their 3 spaces take 19 columns; the bar the rest, up to 40.
    assert fit_line(pieces, 80) == (pieces, 40)
    assert fit_line(pieces, 50) == (pieces, 50 - 19)
    # Under 10 columns for the bar, the count goes first (rank 1), and the bar widens.
    assert fit_line(pieces, 28) == ([pieces[0], pieces[1], pieces[3]], 28 - 13)
    assert fit_line(pieces, 20) == ([pieces[0], pieces[3]], 0)  # then the bar
    assert fit_line(pieces, 3) == ([pieces[0]], 0)  # the label alone, even too wide
    assert DROP_ORDER[0] == "elapsed" and DROP_ORDER[-2:] == ("val_acc", "val_loss")


def test_a_task_bar_keeps_its_label_at_any_width():
    for width in (40, 80):
        console = Console(file=io.StringIO(), width=width, color_system=None)
        with TaskProgress(400, enabled=True, label="evaluate", console=console) as bar:
            bar.advance(100, "532 images/s")
        (line,) = console.file.getvalue().splitlines()
        assert line.startswith("evaluate ") and len(line) <= width and "…" not in line
