"""The progress bar of a run: done/total, ETA and running accuracy of the first vote."""

from __future__ import annotations

import sys

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn


class RunProgress:
    def __init__(self, total: int, done: int = 0, vote: str = "majority", enabled: bool = True) -> None:
        self.total, self.vote = total, vote
        self.correct = self.count = 0
        self._progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[acc]}"),
            TimeElapsedColumn(),
            TextColumn("ETA"),
            TimeRemainingColumn(),
            console=Console(file=sys.stderr),
            disable=not (enabled and sys.stderr.isatty()),  # a bar is for terminals, not log files
        )
        self._task = self._progress.add_task("generating", total=total, completed=done, acc="")

    def __enter__(self) -> RunProgress:
        self._progress.start()
        return self

    def __exit__(self, *exc) -> None:
        self._progress.stop()

    def advance(self, correct: bool) -> None:
        self.count += 1
        self.correct += bool(correct)
        acc = f"{self.vote} {self.correct / self.count:.1%} ({self.correct}/{self.count} new)"
        self._progress.update(self._task, advance=1, acc=acc)
