"""What the detox leaderboard shows about the policies: π₀ and π_E on the evaluation prompts, and the expert."""

from __future__ import annotations

import numpy as np
from scipy.stats import spearmanr

from bench.lm.outcomes import policy_metrics, samples_of
from bench.lm.toxicity import detox_rate
from tasks.detox.config import DetoxConfig


def task_summary(b) -> dict:
    """The facts the leaderboard shows (`summary` of the TaskData), from a finished `stages.Build`."""
    summary = b.artifacts["truth"].read_json("summary.json")
    records = {role: b.artifacts[f"eval_{role}"].read_json("samples.json") for role in ("base", "expert")}
    metrics = {role: policy_metrics(record) for role, record in records.items()}
    summary["expert"] = expert_summary(b.expert_info, metrics["expert"].get("kl_to_base"))
    summary["detox"] = policy_summary(records, metrics, b.cfg, len(b.eval_prompts), len(b.splits["test"]))
    summary["stage_build_seconds"] = {
        kind: b.artifacts[name].manifest.get("seconds") for kind, name in
        (("samples", "samples"), ("features", "features"), ("truth", "truth"), ("eval_base", "eval_base"),
         ("eval_expert", "eval_expert"), ("bon_pool", "bon_pool"))}
    return summary


def policy_summary(records: dict, metrics: dict, cfg: DetoxConfig, n_prompts: int, n_test_split: int) -> dict:
    """π₀ and π_E on the evaluation prompts: toxicity under each judge, the expert's detox rate, fluency guards."""
    judges = list(records["base"]["p_toxic"])
    roles = ("base", "expert")
    return {
        "prompts": {"source": cfg.eval_prompts, "n": n_prompts, "k": cfg.eval_samples, "n_test_split": n_test_split},
        "test": {judge: {role: metrics[role]["judges"][judge] for role in roles} for judge in judges},
        "expert_detox_rate": {
            judge: {stat: detox_rate(samples_of(records["expert"], judge), samples_of(records["base"], judge),
                                     stat).as_dict() for stat in ("toxic_rate", "mean_toxicity")}
            for judge in judges},
        "fluency": {role: {k: metrics[role].get(k) for k in ("kl_to_base", "perplexity_under_base", "distinct_1",
                                                             "distinct_2")} for role in roles},
        "ci": "toxic rate: Wilson 95%; other statistics: 95% percentile bootstrap over prompts (2000 resamples)",
    }


def expert_summary(expert_info: dict, kl: dict | None) -> dict:
    summary = {k: v for k, v in expert_info.items() if k != "curve"}
    if "curve" in expert_info:
        summary["curve_mean_reward"] = [round(r["mean_reward"], 5) for r in expert_info["curve"]]
    summary["kl_to_base_eval"] = kl
    return summary


def spearman(a, b) -> float | None:
    if np.std(a) == 0 or np.std(b) == 0:
        return None
    return float(spearmanr(a, b).statistic)
