"""`bench compare A B`: per method and metric, the difference B − A between two leaderboards of one task.

A and B are leaderboard JSON files or stored run groups (`runs/<task>/<group>`, or `runs/<task>` for its latest
group). How the 95% CI of B − A is obtained depends on what the inputs allow:

- **two run groups on the same test set** (same demos and truth artifacts): a paired two-level bootstrap — both
  sides are scored under one set of prompt resamples and seed draws, so per-prompt difficulty cancels;
- **same seeds and same test set, but only leaderboard JSON**: paired over seeds — a t-interval of the per-seed
  differences (the JSON holds per-seed values, not per-prompt ones, so prompt sampling is not part of this CI);
- **otherwise** (different seeds, test sets or profiles, or a metric without per-seed values): unpaired — the
  difference of means with a normal-approximation CI built from the two reported CIs.

Every row says which of these it is.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from rich.table import Table
from scipy import stats as sps

from bench.errors import BadInput
from bench.reporting import document as leaderboard
from bench.reporting.markdown import HEADINGS
from bench.scoring.bootstrap import bootstrap_p_value, percentile_ci
from bench.scoring.scorer import METRICS, bootstrap_replicates

Z = sps.norm.ppf(0.975)
HOW = {
    "bootstrap": "paired bootstrap over seeds × test prompts",
    "seeds": "paired over seeds (t-interval; prompt sampling not included)",
    "unpaired": "unpaired (normal approximation from the two CIs)",
}


@dataclass
class Side:
    label: str  # the path as given
    doc: dict  # leaderboard document
    group_dir: Path | None  # set when the input was a run group: per-item rewards are available


def load(path: Path, label: str) -> Side:
    """A leaderboard JSON file, a run-group directory, or a task's runs directory (its latest group)."""
    given = str(path)
    if not path.exists():
        raise BadInput(f"{label} {path} does not exist; pass a leaderboard JSON file (leaderboards/<task>.json) "
                       f"or a run group directory (runs/<task>/<group>).")
    if path.is_dir():
        if not (path / "selection.json").exists() and (path / "latest.json").exists():
            path = leaderboard.latest_group(path.parent, path.name)
        if not (path / "selection.json").exists():
            raise BadInput(f"{label} {path} is a directory without a stored run (no selection.json); pass a run "
                           f"group directory such as runs/<task>/<group>, or a leaderboard JSON file.")
        return Side(given, leaderboard.build(path), path)
    try:
        doc = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        doc = None
    if not isinstance(doc, dict) or not isinstance(doc.get("rows"), list) or "task" not in doc:
        raise BadInput(f"{label} {path} is not a leaderboard JSON file; pass one written by `bench leaderboard` "
                       f"(leaderboards/<task>.json) or a run group directory.")
    return Side(given, doc, None)


def load_leaderboard(path: Path | str) -> dict:
    """The leaderboard document of a leaderboard JSON file, a run group directory (`runs/<task>/<group>`, rebuilt
    from its stored trials) or a task's runs directory (`runs/<task>`: its latest group). `bench.load_leaderboard`."""
    return load(Path(path), "leaderboard").doc


def _test_set(doc: dict):
    """What identifies the scored test items: the task data artifacts (profile and task settings are in them)."""
    return doc.get("provenance", {}).get("artifacts")


def compare(a: Side, b: Side, metrics: list[str] | None = None) -> dict:
    """{"task", "a", "b", "notes", "only_a", "only_b", "methods": {method: {metric: {"a", "b", "diff", "ci", "p",
    "how"}}}}; "a"/"b" are the two means, "diff" is B − A."""
    if a.doc["task"] != b.doc["task"]:
        raise BadInput(f"A is a leaderboard of task {a.doc['task']!r} and B of task {b.doc['task']!r}; "
                       f"compare two leaderboards of the same task.")
    metrics = metrics or list(METRICS)
    unknown = [m for m in metrics if m not in METRICS]
    if unknown:
        raise BadInput(f"unknown metric {unknown[0]!r}; choose from {', '.join(METRICS)}.")
    rows_a = {r["method"]: r for r in a.doc["rows"] if r["n_seeds"]}
    rows_b = {r["method"]: r for r in b.doc["rows"] if r["n_seeds"]}
    common = [m for m in rows_a if m in rows_b]
    same_test = _test_set(a.doc) is not None and _test_set(a.doc) == _test_set(b.doc)
    notes = []
    if not same_test:
        notes.append("A and B were scored on different test sets (profile, task settings or data differ): "
                     "all differences are unpaired.")
    paired = {}
    if same_test and a.group_dir and b.group_dir and common:
        paired = _paired_bootstrap(a, b, common, metrics)
    elif same_test and not (a.group_dir and b.group_dir):
        notes.append("Leaderboard JSON holds per-seed values only: pairing is over seeds; pass two run group "
                     "directories for a paired bootstrap over seeds × test prompts.")
    methods = {}
    for method in common:
        ra, rb = rows_a[method], rows_b[method]
        out = {}
        for m in metrics:
            sa, sb = ra["metrics"].get(m, {}), rb["metrics"].get(m, {})
            entry = {"a": sa.get("mean"), "b": sb.get("mean"), "diff": None, "ci": [None, None], "p": None,
                     "how": None}
            if entry["a"] is None or entry["b"] is None:
                out[m] = entry
                continue
            entry["diff"] = entry["b"] - entry["a"]
            if (method, m) in paired:
                entry.update(paired[(method, m)], how="bootstrap")
            elif same_test and _seeds_pair(ra, rb, m):
                entry.update(_paired_seeds(ra["per_seed"][m], rb["per_seed"][m]), how="seeds")
            else:
                entry.update(_unpaired(sa, sb), how="unpaired")
            out[m] = entry
        methods[method] = out
    return {
        "task": a.doc["task"],
        "a": {"label": a.label, "profile": a.doc.get("profile")},
        "b": {"label": b.label, "profile": b.doc.get("profile")},
        "notes": notes,
        "only_a": sorted(set(rows_a) - set(rows_b)),
        "only_b": sorted(set(rows_b) - set(rows_a)),
        "methods": methods,
    }


def _paired_bootstrap(a: Side, b: Side, methods: list[str], metrics: list[str]) -> dict:
    """Score both groups' trials together: one set of resamples, so replicate k of A and of B are paired."""
    selection, data, ok_a, _ = leaderboard.load_trials(a.group_dir)
    _, _, ok_b, _ = leaderboard.load_trials(b.group_dir)
    trials = {("A", m): ok_a[m] for m in methods} | {("B", m): ok_b[m] for m in methods}
    raw = bootstrap_replicates(trials, data, n_boot=selection.bootstrap["resamples"],
                               seed=selection.bootstrap["seed"])
    out = {}
    for method in methods:
        for m in metrics:
            ra, rb = raw[("A", method)], raw[("B", method)]
            difference = rb["replicates"][m] - ra["replicates"][m]
            out[(method, m)] = {"diff": _round(rb["point"][m] - ra["point"][m]),
                                "ci": [_round(x) for x in percentile_ci(difference)],
                                "p": _round(bootstrap_p_value(difference))}
    return out


def _seeds_pair(ra: dict, rb: dict, metric: str) -> bool:
    """Both rows have per-seed values of the metric for the same (at least two) seeds."""
    va, vb = ra["per_seed"].get(metric), rb["per_seed"].get(metric)
    return (ra["seeds"] == rb["seeds"] and len(ra["seeds"]) >= 2 and va is not None and vb is not None
            and None not in va and None not in vb)


def _paired_seeds(a: list[float], b: list[float]) -> dict:
    d = np.array(b, dtype=float) - np.array(a, dtype=float)
    mean, n, sd = d.mean(), len(d), d.std(ddof=1)
    half = sps.t.ppf(0.975, n - 1) * sd / np.sqrt(n)
    if sd == 0:  # every seed moved by the same amount (often 0): the t-test is undefined
        p = 1.0 if mean == 0 else 0.0
    else:
        p = float(sps.ttest_1samp(d, 0.0).pvalue)
    return {"diff": _round(mean), "ci": [_round(mean - half), _round(mean + half)], "p": _round(p)}


def _unpaired(sa: dict, sb: dict) -> dict:
    diff = sb["mean"] - sa["mean"]
    if None in sa["ci"] or None in sb["ci"]:
        return {"diff": _round(diff), "ci": [None, None], "p": None}
    se = np.hypot((sa["ci"][1] - sa["ci"][0]) / (2 * Z), (sb["ci"][1] - sb["ci"][0]) / (2 * Z))
    p = (1.0 if diff == 0 else 0.0) if se == 0 else float(2 * sps.norm.sf(abs(diff) / se))
    return {"diff": _round(diff), "ci": [_round(diff - Z * se), _round(diff + Z * se)], "p": _round(p)}


def _round(x):
    return None if x is None or not np.isfinite(x) else round(float(x), 6) + 0.0


def print_comparison(result: dict, console) -> None:
    a, b = result["a"], result["b"]
    console.print(f"[bold]{result['task']}[/bold]: B − A, B = {b['label']} (profile {b['profile']}), "
                  f"A = {a['label']} (profile {a['profile']})")
    for note in result["notes"]:
        console.print(f"note: {note}")
    for side, names in (("A", result["only_a"]), ("B", result["only_b"])):
        if names:
            console.print(f"only in {side} (not compared): {', '.join(names)}")
    for method, per_metric in result["methods"].items():
        table = Table(title=method, title_justify="left")
        for column in ("metric", "A", "B", "B − A [95% CI]", "p", "pairing"):
            table.add_column(column, justify="left" if column in ("metric", "pairing") else "right")
        for m, e in per_metric.items():
            arrow = "↑" if METRICS[m][0] > 0 else "↓"
            if e["diff"] is None:
                table.add_row(f"{HEADINGS[m]} {arrow}", _fmt(e["a"]), _fmt(e["b"]), "–", "–", "")
                continue
            diff = f"{e['diff']:+.3f}"
            if e["ci"][0] is not None:
                diff += f" [{e['ci'][0]:+.3f}, {e['ci'][1]:+.3f}]"
                if e["ci"][0] > 0 or e["ci"][1] < 0:  # the CI excludes 0: say which side is better
                    better = "B" if e["diff"] * METRICS[m][0] > 0 else "A"
                    diff = f"[bold]{diff}[/bold] ({better} better)"
            table.add_row(f"{HEADINGS[m]} {arrow}", _fmt(e["a"]), _fmt(e["b"]), diff,
                          "–" if e["p"] is None else f"{e['p']:.3g}", HOW[e["how"]])
        console.print(table)


def _fmt(x) -> str:
    return "–" if x is None else f"{x:.3f}"


def markdown_lines(result: dict, title: str | None = None) -> list[str]:
    """The comparison as one Markdown table: a row per (method, metric), B − A with its CI, p and pairing."""
    a, b = result["a"], result["b"]
    lines = [f"# {title or 'Comparison'}: `{result['task']}`", "",
             f"B − A with B = `{b['label']}` (profile `{b['profile']}`) and A = `{a['label']}` (profile "
             f"`{a['profile']}`); 95% CI and two-sided p of the difference; **bold**: the CI excludes 0.", ""]
    lines += [f"Note: {note}" for note in result["notes"]]
    for side, names in (("A", result["only_a"]), ("B", result["only_b"])):
        if names:
            lines.append(f"Only in {side} (not compared): {', '.join(names)}.")
    lines += ["", "| method | metric | A | B | B − A [95% CI] | p | pairing |", "|---|---|---|---|---|---|---|"]
    for method, per_metric in result["methods"].items():
        for m, e in per_metric.items():
            heading = f"{HEADINGS[m]} {'↑' if METRICS[m][0] > 0 else '↓'}"
            diff, p, how = "–", "–", ""
            if e["diff"] is not None:
                diff = f"{e['diff']:+.3f}"
                if e["ci"][0] is not None:
                    diff += f" [{e['ci'][0]:+.3f}, {e['ci'][1]:+.3f}]"
                    diff = f"**{diff}**" if e["ci"][0] > 0 or e["ci"][1] < 0 else diff
                p, how = ("–" if e["p"] is None else f"{e['p']:.3g}"), HOW[e["how"]]
            lines.append(f"| {method} | {heading} | {_fmt(e['a'])} | {_fmt(e['b'])} | {diff} | {p} | {how} |")
    return lines + [""]
