"""The one progress display: named stages, each a bar with done/total and elapsed time (rich), or the caller's
`progress(stage, done, total)` callback when one is given (tests, notebooks)."""

from __future__ import annotations

import contextlib
from typing import Callable

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn


class Stages:
    """`stage(name, total)` returns an `advance(k=1)` function for a stage of `total` units."""

    def __init__(self, progress: Callable[[str, int, int], None] | None = None, console: Console | None = None):
        self.callback = progress
        self.bar = None
        if progress is None:
            self.bar = Progress(TextColumn("{task.description:<34}"), BarColumn(), MofNCompleteColumn(),
                                TimeElapsedColumn(), console=console or Console(stderr=True), transient=False)
            self.bar.start()

    def stage(self, name: str, total: int) -> Callable[[int], None]:
        done = 0
        job = self.bar.add_task(name, total=total) if self.bar is not None else None

        def advance(k: int = 1) -> None:
            nonlocal done
            done += k
            if self.bar is not None:
                self.bar.update(job, completed=done)
            else:
                self.callback(name, done, total)

        return advance

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()

    def __enter__(self) -> "Stages":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


@contextlib.contextmanager
def progress_bar(what: str, total: int, console: Console | None = None):
    """A single stage; yields its `advance` function."""
    with Stages(console=console) as stages:
        yield stages.stage(what, total)
