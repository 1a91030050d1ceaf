"""The worlds board as Markdown and as one self-contained HTML page (tables + a heat map), pure functions of the
board document (bench/reporting/worlds.py). Both render the same tables, built once here."""

from __future__ import annotations

import html

import numpy as np

from bench.reporting.html import CSS, figure_html, new_figure, plotting, png_bytes
from bench.reporting.markdown import TIE_MARK

METRIC_TITLES = {"starc": ("STARC to R* on test items", "↓"), "roc_auc": ("ROC-AUC on test items", "↑"),
                 "pool_starc": ("STARC to R* over the broad pool", "↓"), "seed_ambiguity": ("seed ambiguity", "↓")}
DIFFERENCES = [("failure_aware - bradley_terry", "starc", "FA − BT STARC"),
               ("failure_aware - max_margin", "starc", "FA − MM STARC"),
               ("failure_aware - bradley_terry", "roc_auc", "FA − BT ROC-AUC"),
               ("failure_aware - max_margin", "roc_auc", "FA − MM ROC-AUC"),
               ("failure_aware - bradley_terry", "seed_ambiguity", "FA − BT ambiguity"),
               ("failure_aware - bradley_terry", "pool_starc", "FA − BT pool STARC")]
SHORT = {"failure_aware": "FA", "bradley_terry": "BT", "max_margin": "MM"}


def _methods(doc: dict) -> list[str]:
    seen = []
    for col in doc["worlds"]:
        seen += [m for m in col["methods"] if m not in seen]
    return seen


def _cell(cell: dict | None, digits: int = 3) -> tuple[str, str]:
    """(text, standing) of one matrix cell."""
    if not cell or cell["mean"] is None:
        return "–", ""
    lo, hi = cell["ci"]
    text = f"{cell['mean']:.{digits}f} [{lo:.{digits}f}, {hi:.{digits}f}]" if lo is not None else f"{cell['mean']:.3f}"
    return text, cell.get("standing", "")


def tables(doc: dict) -> list[tuple[str, str, list[str], list[list[tuple[str, str]]]]]:
    """(title, note, header, rows of (text, standing)) for every table of the board."""
    worlds = [c["world"] for c in doc["worlds"]]
    out = []
    rows = [[(c["world"], ""), (c["stresses"], ""), (str(c["data"]["train_pairs"]), ""),
             (f"{c['data']['test_items']} ({c['data']['bad_test_items']} bad)", ""), (str(c["data"]["pool_items"]), ""),
             ("–" if c["linear_floor"] is None else f"{c['linear_floor']:.3f}", "")] for c in doc["worlds"]]
    out.append(("Worlds", "Each world is one stressor away from `clean`; R* and the expert's samples are exact.",
                ["world", "what it stresses", "train pairs", "test items", "pool items", "linear floor (STARC)"], rows))
    for metric, (title, arrow) in METRIC_TITLES.items():
        rows = []
        for m in _methods(doc):
            rows.append([(m, "")] + [_cell(c["methods"].get(m, {}).get(metric)) for c in doc["worlds"]])
        note = (f"Mean over seeds, 95% CI (two-level bootstrap). **Bold**: best in the world; {TIE_MARK}: the "
                f"paired bootstrap cannot separate it from the best (Holm over the methods, "
                f"p ≥ {doc['conventions']['alpha']}).")
        out.append((f"{title} {arrow}", note, ["method"] + worlds, rows))
    rows = [[("order by test STARC", "")] + [(" < ".join(SHORT.get(m, m) for m in c["coverage"]["order_test"]), "")
                                             for c in doc["worlds"]],
            [("order by pool STARC", "")] + [(" < ".join(SHORT.get(m, m) for m in c["coverage"]["order_pool"]), "")
                                             for c in doc["worlds"]],
            [("orders agree", "")] + [("yes" if c["coverage"]["agree"] else "**no**", "") for c in doc["worlds"]]]
    for m in ("bradley_terry", "max_margin", "failure_aware"):
        rows.append([(f"{SHORT[m]}: pool − test STARC", "")] + [
            _diff(c["coverage"].get(m)) for c in doc["worlds"]])
    out.append(("Coverage: on-policy test items vs the broad pool", doc["conventions"]["coverage"] + ".",
                ["", *worlds], rows))
    rows = []
    for c in doc["worlds"]:
        diffs = c.get("differences", {})
        rows.append([(c["world"], "")] + [_diff(diffs.get(name, {}).get(metric), holm=True)
                                          for name, metric, _ in DIFFERENCES])
    out.append(("Paired differences", doc["conventions"]["differences"] + "; * marks Holm p < "
                f"{doc['conventions']['alpha']}. STARC, ambiguity: negative = FA better; ROC-AUC: positive = FA "
                "better.", ["world"] + [heading for _, _, heading in DIFFERENCES], rows))
    rows = [[(h["id"], ""), (h["claim"], ""), (h["world"], ""), (f"**{h['verdict']}**", ""), (h["evidence"], "")]
            for h in doc["hypotheses"]]
    out.append(("Pre-stated hypotheses (leaderboards/hypotheses.md)",
                "Verdicts by the rules stated before the run.", ["id", "claim", "world", "verdict", "evidence"], rows))
    rows = []
    for c in doc["worlds"]:
        for m, t in c["tuning"].items():
            if t.get("source") == "defaults":
                continue
            b, cfg = t["budget"], c["configs"][m]
            rows.append([(c["world"], ""), (m, ""), (f"{b['completed']}/{b['configurations']}", ""),
                         (", ".join(str(s) for s in t["tuning_seeds"]), ""), (f"{t['objective']['value']:.4f}", ""),
                         (f"{b['cpu_hours']:.4f}", ""),
                         (f"head {cfg.get('head')}, lr {cfg.get('lr', 0):.3g}, epochs {cfg.get('epochs')}", "")])
    out.append(("Tuning record", "Every trained method: the same number of configurations per world, all completed "
                "(FIFO), on the same tuning seeds, scored by validation pair accuracy only; baselines use their "
                "defaults.", ["world", "method", "completed", "tuning seeds", "best val pair acc", "CPU-h",
                              "frozen configuration"], rows))
    return out


def _diff(entry: dict | None, holm: bool = False) -> tuple[str, str]:
    if not entry or entry.get("diff") is None:
        return "–", ""
    text = f"{entry['diff']:+.3f} [{entry['ci'][0]:+.3f}, {entry['ci'][1]:+.3f}]"
    if holm:
        text += f" p={entry['p_holm']:.3g}" + (" *" if entry["p_holm"] < 0.05 else "")
    return text, ""


def _md_text(text: str, standing: str) -> str:
    text = text.replace("|", "\\|")
    return f"**{text}**" if standing == "best" else f"{text} {TIE_MARK}" if standing == "tied" else text


def render_markdown(doc: dict) -> str:
    lines = [f"# Worlds matrix: `{doc['task']}`", "",
             "Every method on every stress world, 5 seeds per cell unless noted, on held-out test items. STARC uses "
             f"the null convention: {doc['conventions']['starc_null']}. The linear floor is "
             f"{doc['conventions']['linear_floor']}.", ""]
    for title, note, header, rows in tables(doc):
        lines += [f"## {title}", "", note, "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        lines += ["| " + " | ".join(_md_text(t, s) for t, s in row) + " |" for row in rows]
        lines.append("")
    lines += ["The HTML page (same name, .html) adds a heat map of the STARC and ROC-AUC matrices.", ""]
    return "\n".join(lines)


def render_html(doc: dict) -> str:
    e = html.escape
    parts = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
             f"<title>irl-bench worlds matrix: {e(doc['task'])}</title>", f"<style>{CSS}</style></head><body>",
             f"<h1>Worlds matrix: <code>{e(doc['task'])}</code></h1>",
             f'<p class="note">STARC null convention: {e(doc["conventions"]["starc_null"])}.</p>',
             figure_html(_heatmap(doc), "STARC (lower is better) and ROC-AUC (higher is better) per method and world; "
                                        "≈ marks methods tied with the world's best.")]
    for title, note, header, rows in tables(doc):
        parts += [f"<h2>{e(title)}</h2>", f'<p class="note">{e(note)}</p>', '<div class="scroll"><table><thead><tr>',
                  "".join(f"<th>{e(h)}</th>" for h in header), "</tr></thead><tbody>"]
        for row in rows:
            cells = "".join(f'<td class="{s}">{e(t.replace("**", ""))}{" " + TIE_MARK if s == "tied" else ""}</td>'
                            for t, s in row)
            parts.append(f"<tr>{cells}</tr>")
        parts.append("</tbody></table></div>")
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


@plotting
def _heatmap(doc: dict) -> bytes:
    methods, worlds = _methods(doc), [c["world"] for c in doc["worlds"]]
    fig = new_figure(1.1 * len(worlds) + 2.5, 0.9 * len(methods) + 1.6)
    axes = fig.subplots(1, 2)
    for ax, metric, cmap, limits in ((axes[0], "starc", "viridis_r", (0.0, 1.5)), (axes[1], "roc_auc", "viridis",
                                                                                    (0.5, 1.0))):
        values = np.full((len(methods), len(worlds)), np.nan)
        for j, col in enumerate(doc["worlds"]):
            for i, m in enumerate(methods):
                cell = col["methods"].get(m, {}).get(metric)
                if cell and cell["mean"] is not None:
                    values[i, j] = cell["mean"]
                    mark = TIE_MARK if cell.get("standing") == "tied" else "*" if cell.get("standing") == "best" else ""
                    frac = (values[i, j] - limits[0]) / (limits[1] - limits[0])
                    dark = frac > 0.6 if metric == "starc" else frac < 0.4  # the dark end of the colour map
                    ax.text(j, i, f"{cell['mean']:.2f}{mark}", ha="center", va="center", fontsize=7,
                            color="white" if dark else "black")
        image = ax.imshow(values, cmap=cmap, vmin=limits[0], vmax=limits[1], aspect="auto")
        ax.set_xticks(range(len(worlds)), worlds, rotation=40, ha="right")
        ax.set_yticks(range(len(methods)), methods)
        ax.set_title(f"{METRIC_TITLES[metric][0]} {METRIC_TITLES[metric][1]}")
        fig.colorbar(image, ax=ax, shrink=0.8)
    return png_bytes(fig)
