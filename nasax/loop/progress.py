"""A live progress display (rich) for long loops, silent when disabled.

Each bar is one line that fits the terminal: its pieces (label, epoch, bar, count, the
latest figures, elapsed time, ETA) keep their whole text, and as the terminal narrows
the least useful pieces go first (`fit_line`) instead of rich cutting labels short.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import NamedTuple

from rich.cells import cell_len
from rich.console import Console
from rich.progress import Progress, ProgressBar, Task
from rich.table import Table
from rich.text import Text

BAR_WIDTHS = (10, 40)
"""The bar's narrowest and widest: it takes the room the other pieces leave, up to the
widest, and goes when less than the narrowest is left."""


class Piece(NamedTuple):
    """A piece of a progress line: its text (None: the bar), and its rank in the order
    pieces are dropped as the line narrows (1 goes first; 0 never goes)."""

    text: str | None
    drop: int
    style: str = ""


DROP_ORDER = (
    "elapsed",
    "rate",
    "count",
    "other",
    "train_acc",
    "bar",
    "train_loss",
    "eta",
    "val_acc",
    "val_loss",
)
"""The order pieces go in as the line narrows, least useful first; the label and the
epoch never go."""
_DROP = {name: rank for rank, name in enumerate(DROP_ORDER, 1)}

_STATS: dict[str, tuple[str, int]] = {
    "train_loss": ("loss", _DROP["train_loss"]),
    "train_acc": ("acc", _DROP["train_acc"]),
    "val_loss": ("val loss", _DROP["val_loss"]),
    "val_acc": ("val acc", _DROP["val_acc"]),
    "images_per_sec": ("img/s", _DROP["rate"]),
    "lr": ("lr", _DROP["other"]),
}
"""Metric key -> (the label the line shows, its drop rank). Keras' short names: `loss`
and `acc` are the training batch's, `val loss` and `val acc` the validation batch's."""


def stat_pieces(stats: Mapping[str, float]) -> list[Piece]:
    """The latest figures as pieces: losses and accuracies to 3 decimals, rates whole,
    the learning rate to 3 significant digits."""
    pieces = []
    for key, value in stats.items():
        label, drop = _STATS.get(key, (key.replace("_", " "), _DROP["other"]))
        if key.endswith("per_sec"):
            text = f"{label} {value:.0f}"
        elif key == "lr":
            text = f"{label} {value:.3g}"
        else:
            text = f"{label} {value:.3f}"
        pieces.append(Piece(text, drop))
    return pieces


def fit_line(pieces: Sequence[Piece], width: int) -> tuple[list[Piece], int]:
    """The pieces of a line that fit `width` columns (one space apart), in their order,
    and the bar's width (0: no bar). Pieces go in their drop order until the rest fit,
    the bar with at least `BAR_WIDTHS[0]` columns, so what stays is always the most
    useful; pieces that never drop stay even if they alone overflow."""
    kept = list(pieces)
    while (bar := _bar_width(kept, width)) is None:
        droppable = [p for p in kept if p.drop]
        if not droppable:
            return [p for p in kept if p.text is not None], 0
        kept.remove(min(droppable, key=lambda p: p.drop))
    return kept, bar


def _bar_width(pieces: Sequence[Piece], width: int) -> int | None:
    """The bar's width when `pieces` fit `width` columns (0 without a bar), else None."""
    texts = [p.text for p in pieces if p.text is not None]
    room = width - sum(cell_len(t) for t in texts) - (len(pieces) - 1)
    if len(texts) == len(pieces):
        return 0 if room >= 0 else None
    narrow, wide = BAR_WIDTHS
    return min(room, wide) if room >= narrow else None


def _clock(seconds: float | None) -> str:
    """h:mm:ss, or -:--:-- before there is an estimate."""
    if seconds is None:
        return "-:--:--"
    minutes, s = divmod(int(max(seconds, 0)), 60)
    return f"{minutes // 60:d}:{minutes % 60:02d}:{s:02d}"


def _count(task: Task) -> str:
    total = "?" if task.total is None else f"{int(task.total)}"
    return f"{int(task.completed)}/{total}"


class FittedProgress(Progress):
    """A rich `Progress` whose task lines are laid out by `fit_line` at the console's
    current width, from the pieces `pieces(task)` gives."""

    def __init__(
        self, pieces: Callable[[Task], list[Piece]], console: Console, *, enabled: bool
    ) -> None:
        super().__init__(console=console, disable=not enabled, transient=False)
        self._pieces = pieces

    def make_tasks_table(self, tasks: Iterable[Task]) -> Table:
        rows = Table.grid()
        for task in tasks:
            if task.visible:
                rows.add_row(self._line(task))
        return rows

    def _line(self, task: Task) -> Table:
        kept, bar_width = fit_line(self._pieces(task), self.console.width)
        line = Table.grid(padding=(0, 1))
        cells = []
        for piece in kept:
            line.add_column(no_wrap=True)
            if piece.text is None:
                cells.append(
                    ProgressBar(
                        total=task.total,
                        completed=max(0, task.completed),
                        width=bar_width,
                        pulse=not task.started,
                        animation_time=task.get_time(),
                    )
                )
            else:
                cells.append(Text(piece.text, style=piece.style))
        line.add_row(*cells)
        return line


def _frame(task: Task, label: str) -> tuple[list[Piece], list[Piece]]:
    """The pieces around the figures: (label, bar, count) and (elapsed, ETA)."""
    head = [Piece(label, 0, "bold"), Piece(None, _DROP["bar"]), Piece(_count(task), _DROP["count"])]
    tail = [
        Piece(_clock(task.elapsed), _DROP["elapsed"]),
        Piece(f"ETA {_clock(task.time_remaining)}", _DROP["eta"]),
    ]
    return head, tail


class LoopProgress:
    """One bar over all steps of a run, with the epoch and the latest figures beside it."""

    def __init__(
        self,
        total_steps: int,
        epochs: int,
        *,
        enabled: bool,
        label: str,
        console: Console | None = None,
    ) -> None:
        self.epochs = epochs
        self.enabled = enabled
        self.label = label
        self.console = console or Console(stderr=True)
        self._progress = FittedProgress(self._pieces, self.console, enabled=enabled)
        self._task = self._progress.add_task(label, total=total_steps, epoch=1, stats={})

    def _pieces(self, task: Task) -> list[Piece]:
        head, tail = _frame(task, self.label)
        epoch = Piece(f"epoch {task.fields['epoch']}/{self.epochs}", 0)
        return [head[0], epoch, *head[1:], *stat_pieces(task.fields["stats"]), *tail]

    def __enter__(self) -> LoopProgress:
        self._progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._progress.stop()

    def advance(self, completed: int, epoch: int) -> None:
        """Sets the bar to `completed` steps during `epoch` (0-based)."""
        self._progress.update(self._task, completed=completed, epoch=epoch + 1)

    def span(self, total_steps: int, epochs: int) -> None:
        """The run now ends after `epochs` epochs, `total_steps` steps (a time-limit plan)."""
        self.epochs = epochs
        self._progress.update(self._task, total=total_steps)

    def show(self, stats: Mapping[str, float]) -> None:
        """Shows the latest figures (metric keys as the run logs them, `train_loss`, ...)."""
        self._progress.update(self._task, stats=dict(stats))

    def log(self, message: str) -> None:
        """A line above the bar; nothing in quiet mode."""
        if self.enabled:
            self.console.print(message)


class TaskProgress:
    """A bar for a shorter job (evaluation batches, export stages): count, rate, ETA."""

    def __init__(
        self,
        total: int,
        *,
        enabled: bool,
        label: str,
        unit: str = "images",
        console: Console | None = None,
    ) -> None:
        self.enabled, self.unit, self.label = enabled, unit, label
        console = console or Console(stderr=True)
        self._progress = FittedProgress(self._pieces, console, enabled=enabled)
        self._task = self._progress.add_task(label, total=total, stats="")

    def _pieces(self, task: Task) -> list[Piece]:
        head, tail = _frame(task, self.label)
        stats = task.fields["stats"]
        return [*head, *([Piece(stats, _DROP["other"])] if stats else []), *tail]

    def __enter__(self) -> TaskProgress:
        self._progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._progress.stop()

    def advance(self, amount: int = 1, stats: str | None = None) -> None:
        """Moves the bar on by `amount`, optionally with a new figure or stage beside it."""
        fields = {} if stats is None else {"stats": stats}
        self._progress.update(self._task, advance=amount, **fields)

    def rate_text(self) -> str:
        """`<rate> <unit>/s` from rich's own speed estimate (empty before it has one)."""
        speed = self._progress.tasks[0].speed
        return f"{speed:.0f} {self.unit}/s" if speed else ""
