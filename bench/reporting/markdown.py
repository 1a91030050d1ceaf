"""The leaderboard as Markdown: a pure function of the leaderboard document (bench/reporting/document.py), plus
the cell formatting the console table and the HTML page share."""

from __future__ import annotations

import json

from bench.reporting.sections import ReportSections
from bench.scoring.estimate import format_estimate
from bench.scoring.scorer import METRICS

TIE_MARK = "≈"
PRIMARY = "roc_auc"
COLUMNS = ["roc_auc", "average_precision", "pair_accuracy", "ordering_agreement", "accuracy", "f1", "pearson",
           "spearman", "kendall", "centred_pearson", "starc", "seed_ambiguity", "pair_accuracy_seed_std"]
IMPROVEMENT = ["roc_auc", "average_precision", "centred_pearson", "starc"]  # P(method > reference) is shown for these
HEADINGS = {"roc_auc": "ROC-AUC", "average_precision": "AP", "pair_accuracy": "expert agreement",
            "ordering_agreement": "R* order", "accuracy": "acc",
            "f1": "F1", "pearson": "Pearson", "spearman": "Spearman", "kendall": "Kendall τ",
            "centred_pearson": "centred r", "starc": "STARC", "seed_ambiguity": "ambiguity",
            "pair_accuracy_seed_std": "acc seed-sd"}


def standing(row: dict, metric: str) -> str:
    """"best", "tied" (not separable from the best) or "" — from the row's paired comparison."""
    c = row.get("comparison", {}).get(metric)
    if not c:
        return ""
    return "best" if c["best"] else "tied" if c["tied"] else ""


def tie_legend(doc: dict) -> str:
    return (f"**Bold**: best mean. {TIE_MARK}: tied with the best — a paired bootstrap of the difference "
            f"(same seed × prompt resamples for both methods) cannot separate them after Holm correction over the "
            f"methods compared (corrected p ≥ {doc['comparisons']['alpha']}).")


def scored_on(doc: dict) -> str:
    if doc.get("scored_split") == "pool":
        return ("the held-out pool: every judged completion of π_E and π₀ on the evaluation prompts (the test split "
                "plus prompts no policy trained on and no method or sweep saw) and the best-of-n pool of π₀ samples, "
                "with (π_E, π₀) sample pairs per prompt")
    return "held-out test items"


def test_split_lines(doc: dict) -> list[str]:
    """The methods' original test items, when the main table scores a larger held-out pool."""
    block = doc.get("test_split")
    if not block:
        return []
    shown = ["roc_auc", "average_precision", "pair_accuracy", "f1", "centred_pearson", "starc"]
    d = block["data"]
    lines = ["", "## On the test split only", "",
             f"The {d['test_items']} completions of the {d['test_prompts']} test-split prompts ({d['bad_test_items']} "
             f"bad under R*), as scored before the held-out pool existed; same bootstrap.", "",
             "| method | " + " | ".join(HEADINGS[m] for m in shown) + " |", "|---|" + "---|" * len(shown)]
    for r in doc["rows"]:
        s = block["rows"].get(r["method"])
        if s:
            lines.append(f"| {r['method']} | " + " | ".join(format_estimate(s["metrics"].get(m)) for m in shown) + " |")
    return lines


def data_line(doc: dict) -> str:
    d = doc.get("data")
    if not d:
        return ""
    return (f"Data: {d['train_pairs']} training pairs; scored on {d['test_items']} held-out completions of "
            f"{d['test_prompts']} prompts, {d['bad_test_items']} of them bad under R* "
            f"({d['test_pairs']} pairs).")


def power_lines(doc: dict) -> list[str]:
    """What the design can detect: the minimum detectable difference at 80% power on the primary metric, and the
    probability that each method beats the reference on a random seed."""
    rows = [r for r in doc["rows"] if r.get("comparison", {}).get(PRIMARY)]
    mdes = {r["method"]: r["comparison"][PRIMARY].get("mde") for r in rows if not r["comparison"][PRIMARY]["best"]}
    mdes = {m: v for m, v in mdes.items() if v is not None}
    lines = []
    if mdes:
        best = next(r["method"] for r in rows if r["comparison"][PRIMARY]["best"])
        listed = ", ".join(f"{m} {v:.3f}" for m, v in sorted(mdes.items(), key=lambda kv: kv[1]))
        lines += ["", f"**Power.** {data_line(doc)} The smallest {HEADINGS[PRIMARY]} difference from the best "
                      f"(`{best}`) that this design detects with 80% power (α 0.05, paired bootstrap SE × 2.80): "
                      f"{listed}. Differences smaller than these are reported as ties, not as evidence of equality."]
    improving = [r for r in doc["rows"] if r.get("improvement")]
    if improving:
        reference = next(iter(improving[0]["improvement"].values()))["vs"]
        shown = [m for m in IMPROVEMENT if m in improving[0]["improvement"]]
        lines += ["", f"P(method > `{reference}`) on a random pair of seeds (rliable's probability of improvement; "
                      f"0.5 = no difference; 95% CI from resampling seeds):", "",
                  "| method | " + " | ".join(HEADINGS[m] for m in shown) + " |", "|---|" + "---|" * len(shown)]
        for r in improving:
            lines.append(f"| {r['method']} | " + " | ".join(format_estimate(r["improvement"][m], 2) for m in shown)
                         + " |")
    return lines


def diagnostics_lines(rows: list[dict]) -> list[str]:
    """What each method reported about its own fit (mean over seeds), e.g. whether failure-aware IRL's failure
    stage found failures and how far it moved the reward from its warm start."""
    shown = [r for r in rows if r.get("diagnostics")]
    if not shown:
        return []
    lines = ["", "## Fit diagnostics", "",
             "What a method reports about its own fit, mean over seeds (`failure_aware`: per curriculum stage, the "
             "failures admitted — misclassified training pairs and near-ties below δ — and their share of the "
             "stage's loss at its start; after the curriculum, how far the margins moved from the warm start: "
             "1 − their correlation, relative L2 change, pairs fixed and broken)."]
    for r in shown:
        fields = list(dict.fromkeys(k for d in r["diagnostics"].values() for k in d if k != "seeds"))
        lines += ["", f"`{r['method']}`:", "", "| | " + " | ".join(fields) + " |", "|---|" + "---|" * len(fields)]
        for label, d in r["diagnostics"].items():
            lines.append(f"| {label} | " + " | ".join("–" if k not in d else f"{d[k]:.4g}" for k in fields) + " |")
    return lines


def render_markdown(doc: dict, sections: ReportSections | None = None) -> str:
    rows = doc["rows"]
    arrow = {m: "↑" if METRICS[m][0] > 0 else "↓" for m in COLUMNS}
    prov = doc["provenance"]
    lines = [
        f"# Leaderboard: `{doc['task']}` (profile `{doc['profile']}`)",
        "",
        f"Mean over seeds on {scored_on(doc)}, with a 95% CI from a two-level bootstrap over seeds × "
        f"{'test ' if doc.get('scored_split', 'test') == 'test' else ''}prompts "
        f"({doc['bootstrap']['resamples']} resamples, seed {doc['bootstrap']['seed']}). Rows sorted by ROC-AUC.",
        "",
        tie_legend(doc),
        "",
        class_line(rows),
        "",
        "| method | seeds | " + " | ".join(f"{HEADINGS[m]} {arrow[m]}" for m in COLUMNS) + " |",
        "|---|---|" + "---|" * len(COLUMNS),
    ]
    for r in rows:
        cells = []
        for m in COLUMNS:
            text, mark = format_estimate(r["metrics"].get(m)), standing(r, m)
            cells.append(f"**{text}**" if mark == "best" else f"{text} {TIE_MARK}" if mark == "tied" else text)
        seeds = str(r["n_seeds"])
        if r["failures"]:
            seeds += f" ({len(r['failures'])} failed)"
        lines.append(f"| {r['method']} | {seeds} | " + " | ".join(cells) + " |")
    lines += power_lines(doc)
    lines += test_split_lines(doc)
    norm = doc["normalisation"]
    if norm["available"]:
        shown = [m for m in COLUMNS if m in norm["metrics"]]
        lines += [
            "", "## Normalised scores", "",
            f"(x − `{norm['null']}`) / (`{norm['top']}` − `{norm['null']}`) per metric: the null baseline scores 0, "
            f"the "
            f"ground-truth oracle 1 (either direction); 95% CI from the same paired resamples. Values above 1 are "
            f"possible where the oracle is not the ceiling (pair accuracy: the expert's preferences are stochastic).",
            "",
            "| method | " + " | ".join(HEADINGS[m] for m in shown) + " |",
            "|---|" + "---|" * len(shown),
        ]
        for r in rows:
            if r["method"] in (norm["null"], norm["top"]):
                continue
            cells = [format_estimate(r["normalised"].get(m), 2) for m in shown]
            lines.append(f"| {r['method']} | " + " | ".join(cells) + " |")
    lines += diagnostics_lines(rows)
    failed = [(r["method"], f) for r in rows for f in r["failures"]]
    if failed:
        lines += ["", "## Failed trials", ""]
        lines += [f"- `{m}` seed {f.get('seed', '?')} (trial `{f['trial_id']}`): {f['error']}" for m, f in failed]
    lines += coverage_lines(doc)
    if sections is not None:
        lines += sections.markdown(doc)
    lines += tuning_lines(rows)
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


def reward_model(row: dict) -> str:
    """The reward-model class of a row: its head over the frozen features, the trainable-layer class lm_top<k>
    (bench/kit/lm_top.py), or "—" for a method without one."""
    head = row.get("config", {}).get("head")
    if head and head.startswith("lm_top"):
        return f"{head} head (linear, over the LM's last {head[len('lm_top'):]} blocks, which train with it)"
    return f"{head} head" if head else "—"


def class_line(rows: list[dict]) -> str:
    """Which reward-model class the ranked methods share (a table that mixed classes would rank heads, not
    objectives; `bench run --head` keeps one class per run group)."""
    classes = sorted({reward_model(r) for r in rows} - {"—"})
    if len(classes) == 1:
        over = "" if "lm_top" in classes[0] else " over the frozen features"
        return (f"Reward model: every trained method uses the {classes[0]}{over} "
                f"(baselines have none); other classes are other run groups.")
    return f"Reward models: {', '.join(classes) or 'none'} — this table mixes classes (see the tuning record)."


def tuning_lines(rows: list[dict]) -> list[str]:
    """The tuning record: each method's reward-model class, how it was tuned (searched dimensions, configurations
    launched and completed, fits, CPU hours) and its best validation score — equal completed trials is the budget
    that makes a comparison fair, and the table shows whether it holds."""
    lines = ["", "## Tuning record", "",
             "| method | reward model | configuration | searched dims | configurations | completed | fits | CPU-h | "
             "best validation |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        tuning = r.get("tuning", {"source": "defaults"})
        if tuning["source"] == "defaults":
            lines.append(f"| {r['method']} | {reward_model(r)} | declared defaults | 0 | — | — | — | — | — |")
            continue
        b = tuning["budget"]
        dims = len(tuning["searched"]) if "searched" in tuning else "?"
        overridden = f"; --set {', '.join(tuning['overridden'])}" if tuning.get("overridden") else ""
        lines.append(f"| {r['method']} | {reward_model(r)} | `{tuning['source']}`{overridden} | {dims} | "
                     f"{b['configurations']} | {b['completed']} | {b['fits']} | {b['cpu_hours']:.3f} | "
                     f"{tuning['objective']['metric']} {tuning['objective']['value']:.4f} |")
    return lines


def coverage_lines(doc: dict) -> list[str]:
    """The STARC-by-coverage table (bench/scoring/coverage.py), rows in the board's order."""
    coverage = doc.get("coverage")
    if not coverage or not coverage["methods"]:
        return []
    n = coverage["n_items"]
    lines = ["", "## STARC by coverage distribution", "",
             f"STARC = √(2 − 2·centred r) here, so the distribution it is taken over is what matters: π₀'s own "
             f"samples ({n['pi0']} items: {', '.join(coverage['sources']['pi0'])}) or the broad pool of every "
             f"scored item ({n['broad']}: {', '.join(coverage['sources']['broad'])}). Mean over seeds, 95% CI over "
             f"prompt resamples; lower is better, √2 ≈ 1.414 is a reward unrelated to R*.", "",
             "| method | STARC on π₀'s samples ↓ | STARC on the broad pool ↓ |", "|---|---|---|"]
    for method in [r["method"] for r in doc["rows"] if r["method"] in coverage["methods"]]:
        entry = coverage["methods"][method]
        cells = [f"{entry[k]['mean']:.3f} [{entry[k]['ci'][0]:.3f}, {entry[k]['ci'][1]:.3f}]" for k in ("pi0", "broad")]
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    return lines
