"""The audit document (bench/audit/view.py) as plain text for the terminal and as a small self-contained HTML page.
Both are pure functions of the document and show the same tables: `tables(doc)` builds them once."""

from __future__ import annotations

import html
from pathlib import Path

from bench.audit.seeds import format_estimate
from bench.errors import BadInput
from bench.reporting.html import CSS
from bench.storage.artifacts import atomic_write_bytes


def _words(entries: list, digits: int = 2) -> str:
    return ", ".join(f"{w} ({v:+.{digits}f})" for w, v in entries) or "none (every token weighs the same)"


def tables(doc: dict) -> list[dict]:
    """[{"title", "notes": [str], "header": [str], "rows": [[str]]}] in reading order (failure pairs excluded)."""
    methods = doc["methods"]
    kinds = list(doc["kinds"])
    out = [{
        "title": f"Pair accuracy by kind of pair, {doc['split_name']} (R* labels of rejected → chosen)",
        "notes": [f"{k}: {text}" for k, text in doc["kinds"].items()]
        + ["cell: pair accuracy (agreement with the expert's choice) / R* order; " + doc["ci"]],
        "header": ["method"] + [f"{k} ({next(iter(methods.values()))['by_kind'][k]['pairs']} pairs)" for k in kinds],
        "rows": [[m] + [f"{format_estimate(e['by_kind'][k]['pair_accuracy'])} / "
                        f"{format_estimate(e['by_kind'][k]['rstar_order'])}" for k in kinds]
                 for m, e in methods.items()],
    }]
    bins = list(next(iter(methods.values()))["by_bin"])
    first = next(iter(methods.values()))["by_bin"]
    out.append({
        "title": "Agreement with R* by R* bin",
        "notes": [f"bins: {doc['bins']}",
                  "cell: R* order of the same-prompt item pairs that touch the bin / mean standardised r̂ of the bin's "
                  "items (per-prompt centred, z-scored per seed)"],
        "header": ["method"] + [f"{b} ({first[b]['items']} items)" for b in bins],
        "rows": [[m] + [f"{format_estimate(e['by_bin'][b]['rstar_order'])} / "
                        f"{format_estimate(e['by_bin'][b]['mean_z'], 2)}" for b in bins]
                 for m, e in methods.items()],
    })
    a = doc["attribution"]
    notes = [f"attribution: {a['why']}", f"reference: {a['reference']}"]
    if a["attribution"].startswith("token"):
        refit = a["attribution"] == "token probe (refit)"
        notes.append(f"R*'s {a['k']} most penalised tokens: {_words(a['truth_top'])}")
        notes.append(f"chance precision@{a['k']}: {a['chance_precision']} ({a['vocab_size']} tokens)")
        rows = [[m, e["how"] if e["how"] == "refit" else "least squares (no refit)",
                 format_estimate(e["precision_at_k"], 2), format_estimate(e["spearman"])]
                + ([format_estimate(e["stored_least_squares"]["precision_at_k"], 2)] if refit else [])
                + [_words(e["top_tokens"])] for m, e in a["methods"].items()]
        header = ["method", "weights from", f"precision@{a['k']}", "Spearman ρ (vocabulary)"] \
            + ([f"precision@{a['k']} (least squares, stored r̂)"] if refit else []) \
            + ["most penalised tokens (mean standardised weight)"]
        notes += [f"{m}: {e['how']}" for m, e in a["methods"].items() if refit and e["how"] != "refit"]
        notes += [f"{m}: the refit does not reproduce the stored test rewards (max |Δ| = {e['refit_drift']:.3g} × "
                  f"their sd); its weights describe the refitted reward" for m, e in a["methods"].items()
                  if e.get("reproduced") is False]
    else:
        notes.append(f"candidate words: {a['candidates']} (in ≥ {a['min_count']} scored completions); chance "
                     f"precision@{a['k']}: {a['chance_precision']}")
        notes.append(f"R*'s most penalised candidate words (same attribution on R*): {_words(a['rstar_top'])}")
        judge = a["judge"]
        if judge:
            notes.append(f"judge: {judge['name']}")
            notes.append(f"the judge's {a['k']} most penalised words: {_words(judge['top_words'])}")
            notes.append(f"the judge's most penalised candidate words: {_words(judge['top_candidates'])}")
            notes.append(f"R*'s own word effects overlap the judge's candidates at precision@{a['k']} "
                         f"{judge['rstar_overlap']} (the ceiling of this attribution on these completions)")
        header = ["method"] + ([f"overlap with judge @{a['k']}"] if judge else []) + \
            [f"overlap with R* effects @{a['k']}", "Spearman ρ with R* effects", "most penalised words (mean effect)"]
        rows = [[m] + ([format_estimate(e["overlap_judge"], 2)] if judge else [])
                + [format_estimate(e["overlap_rstar"], 2), format_estimate(e["spearman_rstar"]), _words(e["top_words"])]
                for m, e in a["methods"].items()]
    out.append({"title": "What each recovered reward penalises", "notes": notes, "header": header, "rows": rows})
    return out


def failure_blocks(doc: dict) -> list[tuple[str, list[dict]]]:
    """[(heading, pair records with their texts)] per focused method and kind of pair."""
    blocks = []
    for method, per_kind in doc["failures"].items():
        for kind, entry in per_kind.items():
            heading = (f"{method} · {kind}: {entry['failures']} of {entry['pairs']} pairs fail"
                       + (f" (worst {len(entry['shown'])} shown)" if entry["failures"] > len(entry["shown"]) else ""))
            pairs = [p | {"prompt": doc["items"][str(p["chosen"])]["prompt"],
                          "chosen_text": doc["items"][str(p["chosen"])]["text"],
                          "rejected_text": doc["items"][str(p["rejected"])]["text"]} for p in entry["shown"]]
            blocks.append((heading, pairs))
    return blocks


def _pair_line(p: dict) -> str:
    return (f"margin {p['margin']:+.3f} ({p['kind']}, wrong in {p['seeds_wrong']:.0%} of seeds); "
            f"R* {p['rstar_chosen']:+.3f} vs {p['rstar_rejected']:+.3f}: {p['verdict']}")


def scored_line(doc: dict) -> str:
    """Which items the numbers come from, and how many."""
    s = doc["scored"]
    return (f"scored on the {doc['split_name']} ({doc['split']}): {s['items']} completions of {s['prompts']} "
            f"prompts, {s['pairs']} pairs, {s['bad_items']} bad items")


def html_tables(doc: dict, level: int = 2) -> list[str]:
    """The tables as HTML parts with headings of `level` (the leaderboard's section nests them one deeper)."""
    esc, parts = html.escape, []
    for table in tables(doc):
        parts.append(f"<h{level}>{esc(table['title'])}</h{level}>")
        parts += [f"<p class='note'>{esc(n)}</p>" for n in table["notes"]]
        head = "".join(f"<th>{esc(h)}</th>" for h in table["header"])
        body = "".join("<tr>" + "".join(f"<td>{esc(str(c))}</td>" for c in row) + "</tr>" for row in table["rows"])
        parts.append(f"<div class='scroll'><table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>")
    return parts


def markdown_tables(doc: dict, level: int = 3) -> list[str]:
    """The tables as Markdown lines with headings of `level`."""
    def cell(text) -> str:
        return str(text).replace("|", "\\|")

    lines = []
    for table in tables(doc):
        lines += ["", "#" * level + f" {table['title']}", ""] + [f"- {n}" for n in table["notes"]] + [""]
        lines.append("| " + " | ".join(cell(h) for h in table["header"]) + " |")
        lines.append("|" + "---|" * len(table["header"]))
        lines += ["| " + " | ".join(cell(c) for c in row) + " |" for row in table["rows"]]
    return lines


def render_text(doc: dict) -> str:
    lines = [f"bench inspect: {doc['task']} ({doc['profile']}), {doc['group']}",
             f"{scored_line(doc)}; methods in focus: {', '.join(doc['focus'])}", ""]
    for table in tables(doc):
        lines += [f"## {table['title']}"] + [f"  {n}" for n in table["notes"]]
        widths = [max(len(str(c)) for c in column) for column in zip(table["header"], *table["rows"])]
        for row in [table["header"]] + table["rows"]:
            lines.append("  " + "  ".join(str(c).ljust(w) for c, w in zip(row, widths)).rstrip())
        lines.append("")
    lines.append(f"## Failure pairs (misclassified, or |margin| < {doc['near_tie']} sd of the centred reward; "
                 f"margin averaged over seeds)")
    for heading, pairs in failure_blocks(doc):
        lines.append(f"### {heading}")
        for p in pairs:
            lines += [f"  - {_pair_line(p)}", f"    prompt:   {p['prompt']!r}", f"    chosen:   {p['chosen_text']!r}",
                      f"    rejected: {p['rejected_text']!r}"]
    return "\n".join(lines) + "\n"


def render_html(doc: dict) -> str:
    esc = html.escape
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>bench inspect: {esc(doc['task'])}</title>"
             f"<style>{CSS} td {{ white-space: normal; text-align: left; }}</style></head><body>",
             f"<h1>Audit view: {esc(doc['task'])} ({esc(doc['profile'])})</h1>",
             f"<p class='note'>{esc(doc['group'])}: {esc(scored_line(doc))}.</p>"]
    parts += html_tables(doc)
    parts.append("<h2>Failure pairs</h2><p class='note'>" + esc(
        f"misclassified, or |margin| < {doc['near_tie']} sd of the centred reward; margin averaged over seeds")
        + "</p>")
    for heading, pairs in failure_blocks(doc):
        parts.append(f"<h3>{esc(heading)}</h3>")
        if pairs:
            rows = "".join(f"<tr><td>{esc(_pair_line(p))}</td><td>{esc(p['prompt'])}</td><td>{esc(p['chosen_text'])}"
                           f"</td><td>{esc(p['rejected_text'])}</td></tr>" for p in pairs)
            parts.append("<table><thead><tr><th>verdict</th><th>prompt</th><th>chosen</th><th>rejected</th></tr>"
                         f"</thead><tbody>{rows}</tbody></table>")
    parts.append("</body></html>\n")
    return "\n".join(parts)


def write_html(doc: dict, path: Path) -> Path:
    """Writes the page atomically to `path`; a missing directory is bad input, named with its fix."""
    path = Path(path)
    if not path.parent.is_dir():
        raise BadInput(f"the directory of --html {path} does not exist; create {path.parent} or pick another path.")
    atomic_write_bytes(path, render_html(doc).encode())
    return path
