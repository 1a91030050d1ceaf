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

from threadpoolctl import threadpool_limits

from bench.data import TaskData
from bench.errors import BadInput
from bench.reporting import html
from bench.reporting.markdown import PRIMARY, render_markdown
from bench.reporting.sections import sections_for
from bench.scoring.bootstrap import ALPHA
from bench.scoring.coverage import run_coverage
from bench.scoring.scorer import (
    METRICS,
    NULL_METHOD,
    PER_SEED,
    TOP_METHOD,
    data_counts,
    primary_split,
    scatter_sample,
    score_methods,
)
from bench.storage.artifacts import atomic_write_bytes, atomic_write_json, cache_for
from bench.storage.results import read_selected
from bench.storage.selection import Selection

# 2: rows gain "comparison" (paired test vs the best, tie flag), "normalised", "trial_ids"; the document gains
#    "comparisons" (how ties are decided) and "figures" (data of the HTML page's plots).
# 3: metric "average_precision"; comparisons carry "mde" (80% power); rows gain "improvement" (P(> reference));
#    the document gains "data" (counts); accuracy/F1 use the balanced-accuracy validation threshold.
SCHEMA_VERSION = 3
# Committed: the published results and the leaderboards CI rebuilds from them (tests/test_committed_results.py).
PUBLISHED_RESULTS, PUBLISHED_LEADERBOARDS = Path("results"), Path("leaderboards")


def latest_group(runs_dir: Path, task: str) -> Path:
    pointer = runs_dir / task / "latest.json"
    if not pointer.exists():
        raise BadInput(f"no stored runs of task {task!r} under {runs_dir}; run `bench run --task {task}` first.")
    return runs_dir / task / json.loads(pointer.read_text())["group"]


def tasks_with_runs(runs_dir: Path) -> list[str]:
    return sorted(p.parent.name for p in runs_dir.glob("*/latest.json"))


def load_trials(group_dir: Path) -> tuple[Selection, TaskData, dict[str, list[dict]], dict[str, list[dict]]]:
    """(selection, task data, finished trials per method, failures per method) of one stored run group. A trial
    that failed is a failure of its method; a result file that is missing or corrupted raises RuntimeFailure."""
    selection = Selection.read(group_dir)
    data = selection.task_data
    # A runs directory may have moved (e.g. committed results): prefer the cache that sits beside it.
    beside = cache_for(group_dir.parent.parent)
    if (beside.path("demos", data.demos_key) / "manifest.json").exists():
        data = dataclasses.replace(data, cache_root=str(beside.root))
    ok, failures = {}, {}
    trials = [(method, trial_id) for method, entry in selection.methods.items() for trial_id in entry.trial_ids]
    results = read_selected([group_dir / "trials" / f"{trial_id}.json" for _, trial_id in trials])
    for (method, trial_id), result in zip(trials, results):
        if result["status"] != "ok":
            failure = {"trial_id": trial_id, "seed": result["seed"], "error": result["error"]}
            failures.setdefault(method, []).append(failure)
        else:
            ok.setdefault(method, []).append(result)
    return selection, data, ok, failures


def build(group_dir: Path) -> dict:
    """The leaderboard document of one run group. BLAS runs single-threaded here: a multi-threaded matrix product
    sums in another order, and the last digits (so the rounded numbers) would depend on the thread count."""
    with threadpool_limits(limits=1):
        selection, data, ok, failures = load_trials(group_dir)
        doc = assemble(selection, data, ok, failures)
        sections = sections_for(data.task)
        if sections is not None:
            doc.update(sections.document(group_dir, selection, doc))
        return doc


def assemble(selection: Selection, data: TaskData, ok: dict[str, list[dict]], failures: dict[str, list[dict]]) -> dict:
    """The leaderboard document from a run's selection and its trial results (see load_trials)."""
    n_boot, seed = selection.bootstrap["resamples"], selection.bootstrap["seed"]
    split = primary_split(ok, data)
    scored = score_methods(ok, data, n_boot=n_boot, seed=seed, split=split)
    rows = []
    for method, entry in selection.methods.items():
        s = scored.get(method, {"n_seeds": 0, "seeds": [], "per_seed": {}, "metrics": {}, "comparison": {},
                                "normalised": {}, "improvement": {}})
        rows.append({
            "method": method,
            "n_seeds": s["n_seeds"],
            "seeds": s["seeds"],
            "config": entry.config,
            "tuning": entry.tuning,
            "metrics": s["metrics"],
            "comparison": s["comparison"],
            "normalised": s["normalised"],
            "improvement": s["improvement"],
            "per_seed": s["per_seed"],
            **({"diagnostics": diagnostics(ok[method])} if any("diagnostics" in t for t in ok.get(method, [])) else {}),
            "trial_ids": entry.trial_ids,
            "failures": failures.get(method, []),
        })
    rows.sort(key=lambda r: (r["metrics"].get(PRIMARY, {}).get("mean") is None,
                             -(r["metrics"].get(PRIMARY, {}).get("mean") or 0.0), r["method"]))
    extra = {}
    if split != "test":  # the methods' original test items stay available beside the larger pool
        on_test = score_methods(ok, data, n_boot=n_boot, seed=seed, split="test")
        extra["test_split"] = {"data": data_counts(data, "test"),
                               "rows": {m: {"n_seeds": s["n_seeds"], "metrics": s["metrics"],
                                            "comparison": s["comparison"]} for m, s in on_test.items()}}
    return extra | {
        "schema_version": SCHEMA_VERSION,
        "task": data.task,
        "profile": data.profile,
        "rows": rows,
        "metric_legend": {m: {"higher_is_better": d > 0, "description": text} for m, (d, text) in METRICS.items()},
        "bootstrap": selection.bootstrap,
        "comparisons": {
            "test": "paired bootstrap of the difference to the best method (shared seed × prompt resamples)",
            "p_value": "two-sided, 2·min(share of replicates ≤ 0, share ≥ 0), +1 smoothing",
            "correction": "Holm over the methods compared with the best, per metric",
            "alpha": ALPHA,
            "tied": f"corrected p ≥ {ALPHA}: the data cannot separate the method from the best",
            "mde": "minimum detectable difference at 80% power: 2.80 × the bootstrap SE of the paired difference",
            "improvement": "P(method > reference) over pairs of seeds, ties ½, CI from resampling seeds",
        },
        "scored_split": split,
        "coverage": run_coverage(ok, data, split, n_boot=n_boot, seed=seed),
        "data": data_counts(data, split),
        "normalisation": {"null": NULL_METHOD, "top": TOP_METHOD, "metrics": PER_SEED,
                          "available": NULL_METHOD in scored and TOP_METHOD in scored},
        "figures": {"scatter": scatter_sample(ok, data)},
        "task_summary": data.summary,
        "provenance": selection.provenance | {
            "seeds": selection.seeds, "profile": data.profile, "task_config": selection.task_config,
            "artifacts": {"demos": data.demos_key, "truth": data.truth_key},
        },
    }


def output_of(runs_dir: Path, group_dir: Path, leaderboards_dir: Path | None = None) -> tuple[Path, str]:
    """(directory, file name stem) of the leaderboard of a stored run group. The committed `leaderboards/<task>.*`
    are built from the published results only (`bench publish`, `bench leaderboard --runs-dir results`); any other
    runs directory gets its own, git-ignored `<runs>/leaderboards/`, one board per run group: `<task>.*` for the
    default profile, `<task>-<group>.*` otherwise (e.g. `detox-smoke.md`). So a run never overwrites the published
    leaderboards, nor one profile's board another's. `leaderboards_dir` overrides the directory only."""
    task, group = Path(group_dir).parent.name, Path(group_dir).name
    if Path(runs_dir).resolve() == PUBLISHED_RESULTS.resolve():
        return Path(leaderboards_dir or PUBLISHED_LEADERBOARDS), task
    return Path(leaderboards_dir or Path(runs_dir) / "leaderboards"), task if group == "default" else f"{task}-{group}"


def diagnostics(trials: list[dict]) -> dict[str, dict]:
    """A method's labelled diagnostics (e.g. failure_aware's per-stage failures), averaged over its seeds:
    {label: {field: mean, ..., "seeds": n}}, labels in the order the fit reported them."""
    values: dict[str, dict[str, list]] = {}
    for trial in trials:
        for entry in trial.get("diagnostics", []):
            fields = values.setdefault(entry["diagnostic"], {})
            for key, value in entry.items():
                if key != "diagnostic" and isinstance(value, (int, float)):
                    fields.setdefault(key, []).append(float(value))
    return {label: {k: round(sum(v) / len(v), 6) for k, v in fields.items()}
            | {"seeds": max(len(v) for v in fields.values())} for label, fields in values.items() if fields}


def write(doc: dict, out_dir: Path, name: str | None = None) -> tuple[Path, Path, Path]:
    """Writes <name>.json, <name>.md and <name>.html (name: the task by default); returns their paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    name = name or doc["task"]
    json_path, md_path = out_dir / f"{name}.json", out_dir / f"{name}.md"
    sections = sections_for(doc["task"])
    page = html.render(doc, sections)  # before anything is written: a plotting failure leaves the old files intact
    atomic_write_json(json_path, doc, indent=1)
    atomic_write_bytes(md_path, render_markdown(doc, sections).encode())
    html_path = out_dir / f"{name}.html"
    atomic_write_bytes(html_path, page.encode())
    return json_path, md_path, html_path
