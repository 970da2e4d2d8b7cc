"""A live progress display (rich) for long loops, silent when disabled."""

from __future__ import annotations

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)


def _bar(console: Console, enabled: bool, *, epoch: bool) -> Progress:
    """Label, [epoch,] bar, count, latest figures, elapsed time and ETA."""
    columns = [TextColumn("[bold]{task.description}")]
    if epoch:
        columns.append(TextColumn("epoch {task.fields[epoch]}"))
    columns += [
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[stats]}"),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
    ]
    return Progress(*columns, console=console, disable=not enabled, transient=False)


class LoopProgress:
    """One bar over all steps of a run, with the epoch and the latest figures beside it."""

    def __init__(self, total_steps: int, epochs: int, *, enabled: bool, label: str) -> None:
        self.epochs = epochs
        self.enabled = enabled
        self.console = Console(stderr=True)
        self._progress = _bar(self.console, enabled, epoch=True)
        self._task = self._progress.add_task(
            label, total=total_steps, epoch=f"1/{epochs}", stats=""
        )

    def __enter__(self) -> LoopProgress:
        self._progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._progress.stop()

    def advance(self, completed: int, epoch: int) -> None:
        """Sets the bar to `completed` steps during `epoch` (0-based)."""
        self._progress.update(self._task, completed=completed, epoch=f"{epoch + 1}/{self.epochs}")

    def span(self, total_steps: int, epochs: int) -> None:
        """The run now ends after `epochs` epochs, `total_steps` steps (a time-limit plan)."""
        self.epochs = epochs
        self._progress.update(self._task, total=total_steps)

    def show(self, stats: dict[str, float]) -> None:
        """Shows the latest figures: losses and accuracies to 3-4 digits, images/s whole."""
        parts = [
            f"{k.replace('_', ' ')} {v:.0f}"
            if k.endswith("per_sec")
            else f"{k.replace('_', ' ')} {v:.3f}"
            for k, v in stats.items()
        ]
        self._progress.update(self._task, stats="  ".join(parts))

    def log(self, message: str) -> None:
        """A line above the bar; nothing in quiet mode."""
        if self.enabled:
            self.console.print(message)


class TaskProgress:
    """A bar for a shorter job (evaluation batches, export stages): count, rate, ETA."""

    def __init__(self, total: int, *, enabled: bool, label: str, unit: str = "images") -> None:
        self.enabled, self.unit = enabled, unit
        self._progress = _bar(Console(stderr=True), enabled, epoch=False)
        self._task = self._progress.add_task(label, total=total, stats="")

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
