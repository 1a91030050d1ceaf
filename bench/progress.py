"""The one progress display: named stages, each a bar with done/total, elapsed time and an ETA (rich), or the
caller's `progress(stage, done, total)` callback when one is given (tests, notebooks). `quiet_libraries` keeps the
libraries' own progress bars and known-noisy warnings off the console, so that only this display shows."""

from __future__ import annotations

import contextlib
import logging
import os
import warnings
from typing import Callable

from rich import progress as bars
from rich.console import Console

NOISY_LOGGERS = ("transformers", "datasets", "huggingface_hub", "trl", "accelerate", "peft", "filelock")


def quiet_libraries(verbose: bool = False) -> None:
    """Unless `verbose` (`bench run -v`): no third-party progress bars (tqdm, Hugging Face), the Hugging Face
    libraries' loggers at ERROR, and no FutureWarnings (deprecation notices meant for library authors). Levels only:
    errors and the project's own warnings still show. Environment variables reach the local Ray workers too."""
    if verbose:
        return
    for variable in ("TQDM_DISABLE", "HF_HUB_DISABLE_PROGRESS_BARS", "HF_DATASETS_DISABLE_PROGRESS_BARS"):
        os.environ.setdefault(variable, "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")  # read when transformers is imported
    os.environ.setdefault("PYTHONWARNINGS", "ignore::FutureWarning")  # for worker processes
    for name in NOISY_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", category=FutureWarning)


class Stages:
    """`stage(name, total)` returns an `advance(k=1)` function for a stage of `total` units."""

    def __init__(self, progress: Callable[[str, int, int], None] | None = None, console: Console | None = None):
        self.callback = progress
        self.bar = None
        if progress is None:
            self.bar = bars.Progress(bars.TextColumn("{task.description:<34}"), bars.BarColumn(),
                                     bars.MofNCompleteColumn(), bars.TimeElapsedColumn(), bars.TextColumn("eta"),
                                     bars.TimeRemainingColumn(), console=console or Console(stderr=True),
                                     transient=False)
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
