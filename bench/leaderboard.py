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
        selection, data, ok, failures = load_trials(group_dir)
        doc = assemble(selection, data, ok, failures)
        if selection.get("rerlhf", {}).get("mode", "off") != "off":
            doc["rerlhf"] = rerlhf_results(group_dir, selection)
        return doc


def rerlhf_results(group_dir: Path, selection: dict) -> dict:
    """The re-alignment outcomes of a run (bench/rerlhf.py), one row per (method, seed), sorted by the recovery
    ratio of the evaluation judge's mean toxicity (best first; rows without one last)."""
    rows, failures = [], []
    for method, trial_ids in selection["rerlhf"]["trial_ids"].items():
        for trial_id in trial_ids:
            result = read_result(group_dir / "rerlhf" / f"{trial_id}.json")
            if result is None or result["status"] != "ok":
                failures.append({"method": method, "trial_id": trial_id,
                                 "error": "result missing or corrupted" if result is None else result["error"]})
                continue
            bon = {judge: {"n": curve["m"][-1], "mean_toxicity": _at_n(curve, "mean_toxicity"),
                           "toxic_rate": _at_n(curve, "toxic_rate"), "curve": curve}
                   for judge, curve in result["bon"].items()}
            rows.append({"method": method, "seed": result["seed"], "trial_id": trial_id, "bon": bon,
                         **{k: result[k] for k in ("policy", "comparison", "training") if k in result}})

    def key(row):
        value = row.get("comparison", {}).get("eval", {}).get("mean_toxicity", {}).get("recovery_ratio", {})
        value = value.get("value")
        return (value is None or value != value, -(value or 0.0), row["method"], row["seed"])

    rows.sort(key=key)
    return {"mode": selection["rerlhf"]["mode"], "rows": rows, "failures": failures,
            "reading": "π₀ re-aligned with each method's recovered reward by the expert's recipe, judged on the "
                       "evaluation prompts; recovery = (tox(π₀) − tox(π_r̂)) / (tox(π₀) − tox(π_E)); best-of-n: "
                       "r̂ picks from a shared pool of π₀ samples per test prompt (unbiased estimator)"}


def _at_n(curve: dict, statistic: str) -> dict:
    return {"value": curve[statistic][-1], "ci": curve[statistic + "_ci"][-1]}


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
    lines += render_policies(doc)
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


def _estimate(e: dict | None, digits: int = 3) -> str:
    """An estimate {"value", "ci"} as "v [lo, hi]"; "–" when missing or undefined."""
    if not e or e.get("value") is None or e["value"] != e["value"]:
        return "–"
    text = f"{e['value']:.{digits}f}"
    if e.get("ci") and e["ci"][0] is not None and e["ci"][0] == e["ci"][0]:
        text += f" [{e['ci'][0]:.{digits}f}, {e['ci'][1]:.{digits}f}]"
    return text + (" †" if e.get("note", "").startswith("unreliable") else "")


def render_policies(doc: dict) -> list[str]:
    """Markdown of the policies' toxicity (π₀, π_E and, after a re-RLHF run, every re-aligned π) and best-of-n."""
    detox = doc.get("task_summary", {}).get("detox")
    if not detox or "fluency" not in detox:
        return []
    prompts = detox["prompts"]
    lines = ["", "## Policies: toxicity on the evaluation prompts", "",
             f"{prompts['n']} prompts ({prompts['n_test_split']} test-split + held-out prompts no policy or method saw) "
             f"× {prompts['k']} samples. Judges score the completion only: `eval` is the independent evaluation "
             f"judge, `R*` the reward the expert was trained on. Toxic rate: share with P ≥ 0.5, Wilson 95% CI; other "
             f"CIs: 95% bootstrap over prompts. Recovery: (tox(π₀) − tox(π)) / (tox(π₀) − tox(π_E)), paired "
             f"bootstrap; † = the expert's own improvement is not distinguishable from 0.", "",
             "| policy | toxic rate (eval) ↓ | mean tox (eval) ↓ | exp. max tox (eval) ↓ | tox prob (eval) ↓ | "
             "toxic rate (R*) ↓ | mean tox (R*) ↓ | recovery, mean tox (eval) ↑ | recovery, rate (eval) ↑ | "
             "KL(π‖π₀) | ppl under π₀ | distinct-2 |",
             "|---|" + "---|" * 11]

    def row(name, judges, fluency, comparison):
        ev, rs = judges["eval"], judges["R*"]
        rec = lambda j, st: _estimate((comparison or {}).get(j, {}).get(st, {}).get("recovery_ratio"), 2)  # noqa
        cells = [_estimate(ev["toxic_rate"]), _estimate(ev["mean_toxicity"]), _estimate(ev["expected_max_toxicity"]),
                 _estimate(ev["toxicity_probability"]), _estimate(rs["toxic_rate"]), _estimate(rs["mean_toxicity"]),
                 rec("eval", "mean_toxicity") if comparison else "(reference)",
                 rec("eval", "toxic_rate") if comparison else "(reference)",
                 _estimate(fluency.get("kl_to_base"), 2), _estimate(fluency.get("perplexity_under_base"), 1),
                 f"{fluency['distinct_2']:.3f}"]
        return f"| {name} | " + " | ".join(cells) + " |"

    for role, name in (("base", "π₀ (base)"), ("expert", "π_E (expert)")):
        lines.append(row(name, {j: detox["test"][j][role] for j in detox["test"]}, detox["fluency"][role], None))
    rerlhf = doc.get("rerlhf")
    if rerlhf and rerlhf["mode"] != "bon":
        for r in rerlhf["rows"]:
            lines.append(row(f"re-aligned with `{r['method']}` (seed {r['seed']})", r["policy"]["judges"], r["policy"],
                             r["comparison"]))
        recipe = rerlhf["rows"][0]["training"] if rerlhf["rows"] else None
        if recipe:
            rc, norm = recipe["recipe"], recipe["normalisation"]
            lines += ["", f"Re-alignment: {rc['algorithm'].upper()}, {rc['steps']} steps, lr {rc['learning_rate']}, "
                          f"β {rc['beta']}, {rc['prompts_per_step']} prompts × {rc['generations']} samples per step, "
                          f"LoRA r {rc['lora_r']} — the expert's recipe. Reward: {norm['kind']} "
                          f"({norm['scale']:.4f}, the spread of R* on π₀'s samples)."]
    if rerlhf:
        judges = [j for j in ("eval", "R*") if rerlhf["rows"] and j in rerlhf["rows"][0]["bon"]]
        if rerlhf["rows"]:
            n = rerlhf["rows"][0]["bon"][judges[0]]["n"]
            lines += ["", f"### Best-of-{n} on the test split", "",
                      f"Each method's r̂ picks the best of {n} π₀ samples per test prompt (one shared pool); the "
                      f"chosen sample's toxicity, unbiased over all subsets. π₀ with no selection: mean tox "
                      f"({judges[0]}) {rerlhf['rows'][0]['bon'][judges[0]]['curve']['mean_toxicity'][0]:.3f}.", "",
                      "| method | seed | " + " | ".join(f"mean tox ({j}) ↓ | toxic rate ({j}) ↓" for j in judges) + " |",
                      "|---|---|" + "---|---|" * len(judges)]
            for r in sorted(rerlhf["rows"], key=lambda r: (r["bon"][judges[0]]["mean_toxicity"]["value"], r["method"])):
                cells = [c for j in judges for c in (_estimate(r["bon"][j]["mean_toxicity"]),
                                                     _estimate(r["bon"][j]["toxic_rate"]))]
                lines.append(f"| {r['method']} | {r['seed']} | " + " | ".join(cells) + " |")
        for f in rerlhf["failures"]:
            lines.append(f"- re-alignment of `{f['method']}` failed (trial `{f['trial_id']}`): {f['error']}")
    return lines


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
