"""The audit as a section of every task's leaderboard (registered for every task in the entry-point group
`irl_bench.report_sections`, see bench/reporting/sections.py): pair accuracy per kind of pair, agreement with R* by
R* bin, and what each recovered reward penalises, with CIs over seeds. Only the numbers that need no refit
(bench/audit/evidence.py): the leaderboard loads neither Ray nor torch. Failure pairs with their texts and the
refitted token probe are `bench inspect`'s (bench/audit/view.py)."""

from __future__ import annotations

import html
from pathlib import Path

from bench.audit.evidence import summary
from bench.audit.render import html_tables, markdown_tables, scored_line
from bench.reporting.document import load_trials

TOP = 10  # K: words or tokens listed and precision@K, as `bench inspect`'s default
MIN_COUNT = 2  # as `bench inspect --min-count`'s default


class AuditSections:
    """Report sections (bench/reporting/sections.py) holding the audit's stored-reward numbers under "audit"."""

    def document(self, group_dir: Path, selection, doc: dict) -> dict:
        _, data, ok, failed = load_trials(group_dir)
        if not ok:
            return {}
        audit, _ = summary(data, ok, failed, TOP, MIN_COUNT)
        return {"audit": audit}

    @staticmethod
    def _intro(doc: dict) -> str:
        return (f"{scored_line(doc['audit'])}. Failure pairs with their texts: `bench inspect --task {doc['task']} "
                f"--method NAME`.")

    def markdown(self, doc: dict) -> list[str]:
        if "audit" not in doc:
            return []
        return ["", "## Audit: where each recovered reward fails and what it penalises", "", self._intro(doc)] \
            + markdown_tables(doc["audit"]) + [""]

    def html(self, doc: dict) -> list[str]:
        if "audit" not in doc:
            return []
        return ["<h2>Audit: where each recovered reward fails and what it penalises</h2>",
                f"<p class='note'>{html.escape(self._intro(doc))}</p>"] + html_tables(doc["audit"], level=3)


AUDIT_SECTIONS = AuditSections()
