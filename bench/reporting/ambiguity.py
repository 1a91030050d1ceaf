"""The leaderboard's Ambiguity section, a core report section (bench/reporting/sections.py) every task gets: shown
when its run group has an `ambiguity.json` (written by `bench ambiguity`, bench/execution/ambiguity.py), absent
otherwise, so boards without one are unchanged. Definitions: docs/ambiguity.md."""

from __future__ import annotations

import html
from pathlib import Path

from bench.scoring.ambiguity import AmbiguityReport
from bench.scoring.estimate import format_estimate

KEY = "ambiguity"
SPREADS = ("seeds", "data", "identifiability")
DIGITS = 4  # trained linear heads' seed spreads are of order 0.001: three decimals would show 0.001 for all


class AmbiguitySection:
    def document(self, group_dir: Path, selection, doc: dict) -> dict:
        report = AmbiguityReport.read(group_dir)
        return {} if report is None else {KEY: report.to_json()}

    def markdown(self, doc: dict) -> list[str]:
        if KEY not in doc:
            return []
        lines = ["", "## Ambiguity", "", _intro(doc[KEY]), ""]
        lines += [f"- **{name}**: {doc[KEY]['definitions'][name]}" for name in SPREADS]
        lines += ["", "| " + " | ".join(_header()) + " |", "|---" * len(_header()) + "|"]
        lines += ["| " + " | ".join(cells) + " |" for cells in _rows(doc[KEY])]
        return lines

    def html(self, doc: dict) -> list[str]:
        if KEY not in doc:
            return []
        e = html.escape
        parts = ["<h2>Ambiguity</h2>", f'<p class="note">{e(_intro(doc[KEY]))}</p>', '<dl class="metrics">']
        parts += [f"<dt>{name}</dt><dd>{e(doc[KEY]['definitions'][name])}</dd>" for name in SPREADS]
        parts += ["</dl>", '<div class="scroll"><table><thead><tr>'
                  + "".join(f"<th>{e(h)}</th>" for h in _header()) + "</tr></thead><tbody>"]
        parts += ["<tr>" + "".join(f"<td>{e(c)}</td>" for c in cells) + "</tr>" for cells in _rows(doc[KEY])]
        return parts + ["</tbody></table></div>"]


def _intro(report: dict) -> str:
    s = report["settings"]
    return (f"Three spreads of each method's recovered reward, one distance: {report['distance']}. Fits: the board's "
            f"seeds, {s['resamples']} bootstrap resamples of the training prompts, seeds 0–{s['seeds'] - 1}; "
            f"ε = the {s['epsilon']} (scale-free Bradley–Terry log-loss on validation pairs). Lower is less "
            f"ambiguous; – means fewer than two fits.")


def _header() -> list[str]:
    return ["method", "seeds ↓", "data ↓", "identifiability ↓", "fits within ε", "regulariser grid"]


def _rows(report: dict) -> list[list[str]]:
    rows = []
    for method, m in report["methods"].items():
        ident = m["identifiability"]
        grid = f"{m['regulariser']} ∈ {{{', '.join(f'{v:.3g}' for v in m['grid'])}}}" if m["regulariser"] else "none"
        rows.append([method, *(format_estimate(m[name], DIGITS) for name in SPREADS),
                     f"{ident['n_fits']} of {ident['of_fits']}" + _failed(m), grid])
    return rows


def _failed(m: dict) -> str:
    return f" ({len(m['failed_fits'])} failed: {m['failed_fits'][0]['error']})" if m.get("failed_fits") else ""


SECTION = AmbiguitySection()
