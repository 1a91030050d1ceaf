"""Leaderboards: `leaderboards/<task>.{json,md,html}` built only from what a run stored, so rebuilding is exact.

A `bench run` records its selection (task data, methods, configs, seeds, trial ids, provenance) in
`<runs>/<task>/<group>/selection.json`; `runs/<task>/latest.json` names the group. The leaderboard reads that and the
trial result files; nothing in it depends on the time or machine it is rebuilt on. The Markdown and the HTML page
are pure functions of the JSON document (which carries the figure data too), so the three always agree.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from bench.artifacts import atomic_write_bytes, atomic_write_json, cache_for
from bench.data import TaskData
from bench.errors import BadInput
from bench.runner import read_result
from bench.scoring import METRICS, NULL_METHOD, PER_SEED, TOP_METHOD, scatter_sample, score_methods
from bench.stats import ALPHA

# 2: rows gain "comparison" (paired test vs the best, tie flag), "normalised", "trial_ids"; the document gains
#    "comparisons" (how ties are decided) and "figures" (data of the HTML page's plots).
SCHEMA_VERSION = 2
TIE_MARK = "≈"
PRIMARY = "roc_auc"
COLUMNS = ["roc_auc", "pair_accuracy", "ordering_agreement", "accuracy", "f1", "pearson", "spearman", "kendall",
           "centred_pearson", "starc", "seed_ambiguity", "pair_accuracy_seed_std"]
HEADINGS = {"roc_auc": "ROC-AUC", "pair_accuracy": "pair acc", "ordering_agreement": "R* order", "accuracy": "acc",
            "f1": "F1", "pearson": "Pearson", "spearman": "Spearman", "kendall": "Kendall τ",
            "centred_pearson": "centred r", "starc": "STARC", "seed_ambiguity": "ambiguity",
            "pair_accuracy_seed_std": "acc seed-sd"}


def latest_group(runs_dir: Path, task: str) -> Path:
    pointer = runs_dir / task / "latest.json"
    if not pointer.exists():
        raise BadInput(f"no stored runs of task {task!r} under {runs_dir}; run `bench run --task {task}` first.")
    return runs_dir / task / json.loads(pointer.read_text())["group"]


def tasks_with_runs(runs_dir: Path) -> list[str]:
    return sorted(p.parent.name for p in runs_dir.glob("*/latest.json"))


def load_trials(group_dir: Path) -> tuple[dict, TaskData, dict[str, list[dict]], dict[str, list[dict]]]:
    """(selection, task data, finished trials per method, failures per method) of one stored run group."""
    selection = json.loads((group_dir / "selection.json").read_text())
    data = TaskData.from_json(selection["task_data"])
    # A runs directory may have moved (e.g. committed results): prefer the cache that sits beside it.
    beside = cache_for(group_dir.parent.parent)
    if (beside.path("demos", data.demos_key) / "manifest.json").exists():
        data = dataclasses.replace(data, cache_root=str(beside.root))
    ok, failures = {}, {}
    for method, entry in selection["methods"].items():
        for trial_id in entry["trial_ids"]:
            result = read_result(group_dir / "trials" / f"{trial_id}.json")
            if result is None:
                failures.setdefault(method, []).append({"trial_id": trial_id, "error": "result missing or corrupted"})
            elif result["status"] != "ok":
                failures.setdefault(method, []).append(
                    {"trial_id": trial_id, "seed": result["seed"], "error": result["error"]}
                )
            else:
                ok.setdefault(method, []).append(result)
    return selection, data, ok, failures


def build(group_dir: Path) -> dict:
    """The leaderboard document of one run group. BLAS runs single-threaded here: a multi-threaded matrix product
    sums in another order, and the last digits (so the rounded numbers) would depend on the thread count."""
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=1):
        return assemble(*load_trials(group_dir))


def assemble(selection: dict, data: TaskData, ok: dict[str, list[dict]], failures: dict[str, list[dict]]) -> dict:
    """The leaderboard document from a run's selection and its trial results (see load_trials)."""
    n_boot = selection["bootstrap"]["resamples"]
    scored = score_methods(ok, data, n_boot=n_boot, seed=selection["bootstrap"]["seed"])
    rows = []
    for method, entry in selection["methods"].items():
        s = scored.get(method, {"n_seeds": 0, "seeds": [], "per_seed": {}, "metrics": {}, "comparison": {},
                                "normalised": {}})
        rows.append({
            "method": method,
            "n_seeds": s["n_seeds"],
            "seeds": s["seeds"],
            "config": entry["config"],
            "tuning": entry.get("tuning", {"source": "defaults"}),
            "metrics": s["metrics"],
            "comparison": s["comparison"],
            "normalised": s["normalised"],
            "per_seed": s["per_seed"],
            "trial_ids": entry["trial_ids"],
            "failures": failures.get(method, []),
        })
    rows.sort(key=lambda r: (r["metrics"].get(PRIMARY, {}).get("mean") is None,
                             -(r["metrics"].get(PRIMARY, {}).get("mean") or 0.0), r["method"]))
    return {
        "schema_version": SCHEMA_VERSION,
        "task": data.task,
        "profile": data.profile,
        "rows": rows,
        "metric_legend": {m: {"higher_is_better": d > 0, "description": text} for m, (d, text) in METRICS.items()},
        "bootstrap": selection["bootstrap"],
        "comparisons": {
            "test": "paired bootstrap of the difference to the best method (shared seed × prompt resamples)",
            "p_value": "two-sided, 2·min(share of replicates ≤ 0, share ≥ 0), +1 smoothing",
            "correction": "Holm over the methods compared with the best, per metric",
            "alpha": ALPHA,
            "tied": f"corrected p ≥ {ALPHA}: the data cannot separate the method from the best",
        },
        "normalisation": {"null": NULL_METHOD, "top": TOP_METHOD, "metrics": PER_SEED,
                          "available": NULL_METHOD in scored and TOP_METHOD in scored},
        "figures": {"scatter": scatter_sample(ok, data)},
        "task_summary": data.summary,
        "provenance": selection["provenance"] | {
            "seeds": selection["seeds"], "profile": data.profile, "task_config": selection["task_config"],
            "artifacts": {"demos": data.demos_key, "truth": data.truth_key},
        },
    }


def standing(row: dict, metric: str) -> str:
    """"best", "tied" (not separable from the best) or "" — from the row's paired comparison."""
    c = row.get("comparison", {}).get(metric)
    if not c:
        return ""
    return "best" if c["best"] else "tied" if c["tied"] else ""


def format_stat(stat: dict | None, digits: int = 3) -> str:
    if not stat or stat["mean"] is None:
        return "–"
    text = f"{stat['mean']:.{digits}f}"
    if stat["ci"][0] is not None:
        text += f" [{stat['ci'][0]:.{digits}f}, {stat['ci'][1]:.{digits}f}]"
    return text


def tie_legend(doc: dict) -> str:
    return (f"**Bold**: best mean. {TIE_MARK}: tied with the best — a paired bootstrap of the difference "
            f"(same seed × prompt resamples for both methods) cannot separate them after Holm correction over the "
            f"methods compared (corrected p ≥ {doc['comparisons']['alpha']}).")


def render_markdown(doc: dict) -> str:
    rows = doc["rows"]
    arrow = {m: "↑" if METRICS[m][0] > 0 else "↓" for m in COLUMNS}
    prov = doc["provenance"]
    lines = [
        f"# Leaderboard: `{doc['task']}` (profile `{doc['profile']}`)",
        "",
        f"Mean over seeds on held-out test items, with a 95% CI from a two-level bootstrap over seeds × test prompts "
        f"({doc['bootstrap']['resamples']} resamples, seed {doc['bootstrap']['seed']}). Rows sorted by ROC-AUC.",
        "",
        tie_legend(doc),
        "",
        "| method | seeds | " + " | ".join(f"{HEADINGS[m]} {arrow[m]}" for m in COLUMNS) + " |",
        "|---|---|" + "---|" * len(COLUMNS),
    ]
    for r in rows:
        cells = []
        for m in COLUMNS:
            text, mark = format_stat(r["metrics"].get(m)), standing(r, m)
            cells.append(f"**{text}**" if mark == "best" else f"{text} {TIE_MARK}" if mark == "tied" else text)
        seeds = str(r["n_seeds"])
        if r["failures"]:
            seeds += f" ({len(r['failures'])} failed)"
        lines.append(f"| {r['method']} | {seeds} | " + " | ".join(cells) + " |")
    norm = doc["normalisation"]
    if norm["available"]:
        shown = [m for m in COLUMNS if m in norm["metrics"]]
        lines += [
            "", "## Normalised scores", "",
            f"(x − `{norm['null']}`) / (`{norm['top']}` − `{norm['null']}`) per metric: the null baseline scores 0, the "
            f"ground-truth oracle 1 (either direction); 95% CI from the same paired resamples. Values above 1 are "
            f"possible where the oracle is not the ceiling (pair accuracy: the expert's preferences are stochastic).",
            "",
            "| method | " + " | ".join(HEADINGS[m] for m in shown) + " |",
            "|---|" + "---|" * len(shown),
        ]
        for r in rows:
            if r["method"] in (norm["null"], norm["top"]):
                continue
            lines.append(f"| {r['method']} | " + " | ".join(format_stat(r["normalised"].get(m), 2) for m in shown) + " |")
    failed = [(r["method"], f) for r in rows for f in r["failures"]]
    if failed:
        lines += ["", "## Failed trials", ""]
        lines += [f"- `{m}` seed {f.get('seed', '?')} (trial `{f['trial_id']}`): {f['error']}" for m, f in failed]
    lines += ["", "## Tuning budget", ""]
    for r in rows:
        tuning = r.get("tuning", {"source": "defaults"})
        if tuning["source"] == "defaults":
            lines.append(f"- `{r['method']}`: declared defaults, no tuning")
        else:
            b = tuning["budget"]
            lines.append(
                f"- `{r['method']}`: frozen sweep `{tuning['source']}`: {b['configurations']} configurations "
                f"({b['completed']} completed, {b['stopped_early']} stopped early), {b['fits']} fits, "
                f"{b['cpu_hours']:.3f} CPU-h, {b['gpu_hours']:.3f} GPU-h; best "
                f"{tuning['objective']['metric']} {tuning['objective']['value']:.4f} on tuning seeds "
                f"{tuning['tuning_seeds']}" + (f"; overridden by --set: {', '.join(tuning['overridden'])}"
                                               if tuning.get("overridden") else "")
            )
    lines += ["", "## Metrics", ""]
    lines += [f"- **{HEADINGS[m]}** ({arrow[m]}): {doc['metric_legend'][m]['description']}" for m in COLUMNS]
    lines += ["", "## Provenance", ""]
    lines += [
        f"- git commit: `{prov['git_commit']}`",
        f"- seeds: {', '.join(str(s) for s in prov['seeds'])}",
        f"- task config: `{json.dumps(prov['task_config'], sort_keys=True)}`",
        f"- artifacts: demos `{prov['artifacts']['demos']}`, truth `{prov['artifacts']['truth']}`",
        "- versions: " + ", ".join(f"{k} {v}" for k, v in sorted(prov["versions"].items())),
        f"- hardware: {prov['hardware']}",
        f"- run started: {prov['started']}",
        "",
    ]
    return "\n".join(lines)


def write(doc: dict, out_dir: Path) -> tuple[Path, Path, Path]:
    """Writes <task>.json, <task>.md and <task>.html; returns their paths."""
    from bench import html

    out_dir.mkdir(parents=True, exist_ok=True)
    json_path, md_path = out_dir / f"{doc['task']}.json", out_dir / f"{doc['task']}.md"
    page = html.render(doc)  # before anything is written: a plotting failure leaves the old files intact
    atomic_write_json(json_path, doc, indent=1)
    atomic_write_bytes(md_path, render_markdown(doc).encode())
    html_path = out_dir / f"{doc['task']}.html"
    atomic_write_bytes(html_path, page.encode())
    return json_path, md_path, html_path
