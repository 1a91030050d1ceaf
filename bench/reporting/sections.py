"""Report sections a task contributes to its own leaderboard, so the core never names a task.

A task lists an object in the entry-point group `irl_bench.report_sections` under its name (see pyproject.toml);
the object has three methods, each given the leaderboard document:

    document(group_dir, selection, doc) -> dict   extra top-level keys from the stored run and the generic
                                                document (JSON-ready)
    markdown(doc) -> list[str]               Markdown lines placed after the failed trials
    html(doc) -> list[str]                   HTML parts (e.g. figures) placed after the generic figures
"""

from __future__ import annotations

import functools
from importlib.metadata import entry_points
from pathlib import Path
from typing import Protocol


class ReportSections(Protocol):
    def document(self, group_dir: Path, selection, doc: dict) -> dict: ...

    def markdown(self, doc: dict) -> list[str]: ...

    def html(self, doc: dict) -> list[str]: ...


@functools.cache
def sections_for(task: str) -> ReportSections | None:
    """The task's report sections, or None when it registers none."""
    found = [ep for ep in entry_points(group="irl_bench.report_sections") if ep.name == task]
    return found[0].load() if found else None
