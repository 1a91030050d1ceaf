"""Report sections a task contributes to its own leaderboard, so the core never names a task.

A task lists an object in the entry-point group `irl_bench.report_sections` under its name (see pyproject.toml);
the object has three methods, each given the leaderboard document:

    document(group_dir, selection, doc) -> dict   extra top-level keys from the stored run and the generic
                                                document (JSON-ready)
    markdown(doc) -> list[str]               Markdown lines placed after the failed trials
    html(doc) -> list[str]                   HTML parts (e.g. figures) placed after the generic figures

An entry named `*` is shown on every task's board, after the task's own (the audit, bench/audit/section.py).
The core adds its own sections after those, in the same way: the Ambiguity table (bench/reporting/ambiguity.py),
which a board shows only when its run group has one, so other boards are unchanged.
"""

from __future__ import annotations

import functools
from importlib.metadata import entry_points
from pathlib import Path
from typing import Protocol

from bench.reporting.ambiguity import SECTION as AMBIGUITY


class ReportSections(Protocol):
    def document(self, group_dir: Path, selection, doc: dict) -> dict: ...

    def markdown(self, doc: dict) -> list[str]: ...

    def html(self, doc: dict) -> list[str]: ...


EVERY_TASK = "*"


class Combined:
    """Several tasks' worth of sections shown as one, in order; each document() sees the keys of those before."""

    def __init__(self, parts: list[ReportSections]):
        self.parts = parts

    def document(self, group_dir: Path, selection, doc: dict) -> dict:
        extra: dict = {}
        for part in self.parts:
            extra.update(part.document(group_dir, selection, doc | extra))
        return extra

    def markdown(self, doc: dict) -> list[str]:
        return [line for part in self.parts for line in part.markdown(doc)]

    def html(self, doc: dict) -> list[str]:
        return [piece for part in self.parts for piece in part.html(doc)]


@functools.cache
def sections_for(task: str) -> ReportSections:
    """The task's report sections, those of every task, then the core's (the Ambiguity table)."""
    found = entry_points(group="irl_bench.report_sections")
    parts = [ep.load() for name in (task, EVERY_TASK) for ep in sorted(found, key=lambda ep: ep.value)
             if ep.name == name]
    return Combined(parts + [AMBIGUITY])
