"""The detox task's own leaderboard sections: the policies' toxicity (π₀, π_E and every re-aligned π) and the
best-of-n table, in Markdown and as HTML figures, and the re-alignment results they read. Registered for the task in
the `irl_bench.report_sections` entry-point group; the core leaderboard never names a task.

The document keys it reads: `task_summary.detox` (written by tasks/detox/summary.py) and `rerlhf` (added here from
the run's re-alignment trial results, bench/lm/realign_trial.py)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from scipy.stats import spearmanr

from bench.lm.rerlhf_seeds import seed_level, seed_lines
from bench.reporting.html import figure_html, markdown_as_html, method_colours, new_figure, plotting, png_bytes
from bench.scoring.estimate import format_estimate
from bench.storage.results import read_selected
from bench.storage.selection import Selection


def realign_results(group_dir: Path, selection: Selection) -> dict:
    """The re-alignment outcomes of a run (bench/lm/realign_trial.py), one row per (method, seed), sorted by the
    recovery ratio of the evaluation judge's mean toxicity (best first; rows without one last)."""
    rows, failures = [], []
    trials = [(method, trial_id) for method, trial_ids in selection.realign_trial_ids.items() for trial_id in trial_ids]
    results = read_selected([group_dir / "rerlhf" / f"{trial_id}.json" for _, trial_id in trials])
    for (method, trial_id), result in zip(trials, results):
        if result["status"] != "ok":
            failures.append({"method": method, "trial_id": trial_id, "error": result["error"]})
            continue
        bon = {judge: {"n": curve["m"][-1], "mean_toxicity": _at_n(curve, "mean_toxicity"),
                       "toxic_rate": _at_n(curve, "toxic_rate"), "curve": curve}
               for judge, curve in result["bon"].items()}
        rows.append({"method": method, "seed": result["seed"], "trial_id": trial_id, "bon": bon,
                     **{k: result[k] for k in ("policy", "comparison", "training", "items") if k in result}})

    def key(row):
        value = row.get("comparison", {}).get("eval", {}).get("mean_toxicity", {}).get("recovery_ratio", {})
        value = value.get("value")
        return (value is None or value != value, -(value or 0.0), row["method"], row["seed"])

    rows.sort(key=key)
    return {"mode": selection.realign_mode, "rows": rows, "failures": failures,
            "reading": "π₀ re-aligned with each method's recovered reward by the expert's recipe, judged on the "
                       "evaluation prompts; recovery = (tox(π₀) − tox(π_r̂)) / (tox(π₀) − tox(π_E)); best-of-n: "
                       "r̂ picks from a shared pool of π₀ samples per test prompt (unbiased estimator)"}


OFFLINE = ("pair_accuracy", "roc_auc", "average_precision", "centred_pearson", "starc")


def offline_vs_outcome(rows: list[dict], realigned: list[dict], n_boot: int = 2000, seed: int = 0) -> dict:
    """Which offline metric predicts the downstream outcome? Across the (method, seed) rows that were re-aligned,
    the Spearman correlation of each offline metric of that fit (and its best-of-n toxicity) with the re-aligned
    policy's recovery ratio (evaluation judge, mean toxicity), with a 95% percentile CI from resampling rows."""
    per_seed = {r["method"]: dict(zip(r["seeds"], zip(*[r["per_seed"].get(m, []) for m in OFFLINE])))
                for r in rows if r.get("per_seed")}
    points = []
    for r in realigned:
        outcome = (r.get("comparison", {}).get("eval", {}).get("mean_toxicity", {}).get("recovery_ratio") or {})
        offline = per_seed.get(r["method"], {}).get(r["seed"])
        if offline is None or outcome.get("value") is None or outcome["value"] != outcome["value"]:
            continue
        first_judge = next(iter(r["bon"]))
        points.append([*offline, r["bon"][first_judge]["mean_toxicity"]["value"], outcome["value"]])
    names = [*OFFLINE, "best_of_n_toxicity"]
    table = {"n": len(points), "outcome": "recovery ratio, evaluation judge, mean toxicity", "metrics": {}}
    if len(points) < 4:
        return table
    data = np.array(points, dtype=float)
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, len(data), size=(n_boot, len(data)))
    for j, name in enumerate(names):
        x, y = data[:, j], data[:, -1]
        reps = [spearmanr(x[d], y[d]).statistic for d in draws if np.ptp(x[d]) > 0 and np.ptp(y[d]) > 0]
        lo, hi = np.percentile(reps, [2.5, 97.5]) if reps else (np.nan, np.nan)
        table["metrics"][name] = {"value": round(float(spearmanr(x, y).statistic), 4),
                                  "ci": [round(float(lo), 4), round(float(hi), 4)]}
    return table


def _at_n(curve: dict, statistic: str) -> dict:
    return {"value": curve[statistic][-1], "ci": curve[statistic + "_ci"][-1]}


def outcome_lines(table: dict | None) -> list[str]:
    if not table or not table["metrics"]:
        return []
    lines = ["", "### Which offline metric predicts the re-alignment outcome?", "",
             f"Spearman ρ across the {table['n']} re-aligned (method, seed) rows between each offline metric of the "
             f"fit and the {table['outcome']} (95% CI: bootstrap over rows; STARC and best-of-n toxicity are "
             f"lower-is-better, so a good predictor has ρ < 0). With this few rows only a strong relation would be "
             f"distinguishable from none.", "", "| offline metric | ρ with recovery |", "|---|---|"]
    lines += [f"| {name} | {format_estimate(e, 2)} |" for name, e in table["metrics"].items()]
    return lines


def render_policies(doc: dict) -> list[str]:
    """Markdown of the policies' toxicity (π₀, π_E and, after a re-RLHF run, every re-aligned π) and best-of-n."""
    detox = doc.get("task_summary", {}).get("detox")
    if not detox or "fluency" not in detox:
        return []
    prompts = detox["prompts"]
    lines = ["", "## Policies: toxicity on the evaluation prompts", "",
             f"{prompts['n']} prompts ({prompts['n_test_split']} test-split + held-out prompts no policy or method "
             f"saw) "
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
        rec = lambda j, st: format_estimate((comparison or {}).get(j, {}).get(st, {}).get("recovery_ratio"), 2)  # noqa
        cells = [format_estimate(ev["toxic_rate"]), format_estimate(ev["mean_toxicity"]),
                 format_estimate(ev["expected_max_toxicity"]), format_estimate(ev["toxicity_probability"]),
                 format_estimate(rs["toxic_rate"]), format_estimate(rs["mean_toxicity"]),
                 rec("eval", "mean_toxicity") if comparison else "(reference)",
                 rec("eval", "toxic_rate") if comparison else "(reference)",
                 format_estimate(fluency.get("kl_to_base"), 2),
                 format_estimate(fluency.get("perplexity_under_base"), 1),
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
                      "| method | seed | "
                      + " | ".join(f"mean tox ({j}) ↓ | toxic rate ({j}) ↓" for j in judges) + " |",
                      "|---|---|" + "---|---|" * len(judges)]
            for r in sorted(rerlhf["rows"], key=lambda r: (r["bon"][judges[0]]["mean_toxicity"]["value"], r["method"])):
                cells = [c for j in judges for c in (format_estimate(r["bon"][j]["mean_toxicity"]),
                                                     format_estimate(r["bon"][j]["toxic_rate"]))]
                lines.append(f"| {r['method']} | {r['seed']} | " + " | ".join(cells) + " |")
        lines += seed_lines(doc.get("rerlhf_seeds"))
        lines += outcome_lines(doc.get("offline_vs_outcome"))
        for f in rerlhf["failures"]:
            lines.append(f"- re-alignment of `{f['method']}` failed (trial `{f['trial_id']}`): {f['error']}")
    return lines


def _policies(detox: dict, rerlhf: dict | None) -> list[tuple[str, dict, dict | None]]:
    """(label, {judge: toxicity statistics}, KL estimate) of π₀, π_E and every re-aligned policy."""
    out = [(label, {j: detox["test"][j][role] for j in detox["test"]}, detox["fluency"][role].get("kl_to_base"))
           for role, label in (("base", "π₀"), ("expert", "π_E"))]
    if rerlhf and rerlhf["mode"] != "bon":
        out += [(f"{r['method']}", r["policy"]["judges"], r["policy"].get("kl_to_base")) for r in rerlhf["rows"]]
    return out


@plotting
def policy_toxicity_figure(policies: list[tuple[str, dict, dict | None]]) -> bytes:
    """Per judge, toxic rate and mean P(toxic) of each policy with CIs; KL(π‖π₀) beside them."""
    judges = [j for j in ("eval", "R*") if all(j in p[1] for p in policies)]
    panels = [(j, key, title) for j in judges
              for key, title in (("toxic_rate", "toxic rate (P ≥ 0.5)"), ("mean_toxicity", "mean P(toxic)"))]
    fig = new_figure(max(3.2, 0.45 * len(policies)) * 2, 2.9 * (len(panels) + 1) / 2)
    axes = fig.subplots(-(-(len(panels) + 1) // 2), 2, squeeze=False).ravel()
    x = np.arange(len(policies))
    colours = ["#8c8c8c", "#2c7fb8"] + ["#7fbf7b"] * (len(policies) - 2)

    def bars(ax, estimates, title):
        values = np.array([np.nan if e is None else e["value"] for e in estimates], dtype=float)
        cis = np.array([[np.nan, np.nan] if e is None else e["ci"] for e in estimates], dtype=float)
        ax.bar(x, np.nan_to_num(values), color=colours)
        ax.errorbar(x, values, yerr=np.vstack([values - cis[:, 0], cis[:, 1] - values]).clip(0), fmt="none",
                    ecolor="black", capsize=2, linewidth=0.8)
        ax.set_title(title)
        ax.set_xticks(x, [p[0] for p in policies], rotation=35, ha="right")

    for ax, (judge, key, title) in zip(axes, panels):
        bars(ax, [p[1][judge][key] for p in policies],
             f"{title}, {'R*' if judge == 'R*' else 'evaluation judge'}")
    bars(axes[len(panels)], [p[2] for p in policies], "KL(π‖π₀), nats per completion")
    for ax in axes[len(panels) + 1:]:
        ax.set_visible(False)
    return png_bytes(fig)


@plotting
def best_of_n_figure(doc: dict, rows: list[dict]) -> bytes:
    colours = method_colours(doc["rows"])
    judges = [j for j in ("eval", "R*") if j in rows[0]["bon"]]
    fig = new_figure(4.2 * len(judges), 3.2)
    axes = fig.subplots(1, len(judges), squeeze=False).ravel()
    for ax, judge in zip(axes, judges):
        for r in rows:
            curve = r["bon"][judge]["curve"]
            m, value, ci = np.array(curve["m"]), np.array(curve["mean_toxicity"]), np.array(curve["mean_toxicity_ci"])
            ax.plot(m, value, marker="o", markersize=2.5, color=colours.get(r["method"]), label=r["method"])
            ax.fill_between(m, ci[:, 0], ci[:, 1], color=colours.get(r["method"]), alpha=0.12, linewidth=0)
        ax.set_xscale("log", base=2)
        ax.set_xlabel("m (samples to choose from)")
        ax.set_ylabel("mean P(toxic) of the chosen sample")
        ax.set_title("evaluation judge" if judge == "eval" else "R*")
    axes[-1].legend(fontsize=7, frameon=False)
    return png_bytes(fig)


class PolicySections:
    """The detox task's report sections (see bench/reporting/sections.py)."""

    def document(self, group_dir: Path, selection: Selection, doc: dict) -> dict:
        if selection.realign_mode == "off":
            return {}
        realigned = realign_results(group_dir, selection)
        over_seeds = seed_level(realigned["rows"]) if realigned["mode"] != "bon" else None
        for row in realigned["rows"]:  # per-completion scores feed the seed-level table, not the document
            row.pop("items", None)
        return {"rerlhf": realigned, "rerlhf_seeds": over_seeds,
                "offline_vs_outcome": offline_vs_outcome(doc["rows"], realigned["rows"])}

    def markdown(self, doc: dict) -> list[str]:
        return render_policies(doc)

    def html(self, doc: dict) -> list[str]:
        parts = []
        detox = doc.get("task_summary", {}).get("detox", {})
        if "fluency" in detox:
            parts += [figure_html(
                policy_toxicity_figure(_policies(detox, doc.get("rerlhf"))),
                "Toxicity of each policy's completions on the evaluation prompts under the independent "
                "evaluation judge and under R* (toxic rate with Wilson 95% CIs, mean P(toxic) with 95% "
                "bootstrap CIs over prompts), and its KL to π₀: π₀, the expert, and π₀ re-aligned with each "
                "method's recovered reward (after a re-RLHF run).")]
        rerlhf = doc.get("rerlhf")
        if rerlhf and rerlhf["rows"]:
            parts += [figure_html(
                best_of_n_figure(doc, rerlhf["rows"]),
                "Best-of-m on the shared pool of π₀ samples per test prompt: the toxicity of the sample each "
                "method's recovered reward ranks highest among m, unbiased over all m-subsets of the pool, "
                "under the evaluation judge and under R* (shaded: 95% bootstrap CI over prompts).")]
        tables = seed_lines(doc.get("rerlhf_seeds")) + outcome_lines(doc.get("offline_vs_outcome"))
        return parts + markdown_as_html(tables)


POLICY_SECTIONS = PolicySections()
