"""The held-out scoring pool: every judged completion that no method saw, scored by each recovered reward.

The 40-prompt test split holds 160 completions with a handful of toxic ones, too few to tell methods apart. The
policies are judged anyway on the evaluation prompts (the test split plus held-out prompts that no policy trained
on and no method or sweep saw) and the best-of-n pool; those judged completions form the pool:

    per evaluation prompt   k samples of π_E and k of π₀, paired (π_E sample j, π₀ sample j) as in the demos
    per test-split prompt   also the n π₀ samples of the best-of-n pool (items without pairs)

Three artifacts: `pool` (the texts, read only by the trial runner to score r̂ — never given to a method),
`heldout_pool_truth` (R*, labels and the (π_E, π₀) pairs, read only by the scorer) and `pool_features` (the
frozen backbone's features of the pool texts, so scoring needs no LM pass per fit).
"""

from __future__ import annotations

import numpy as np

from bench.kit.reward_models import lm_features, text_key
from bench.lm.policies import Policy
from bench.lm.toxicity import TOXIC_THRESHOLD
from bench.storage.artifacts import atomic_write_json
from tasks.detox.stages import Build


def pool_items(eval_prompts: list[str], records: dict, bon_prompts: list[str], bon: dict) -> tuple[dict, dict]:
    """(items, truth with the pairs), grouped by prompt in evaluation-prompt order, as the scorer's bootstrap
    needs. The items are what the runner scores (bench/execution/fit_trial.py `extra_items`); R*, labels and the
    (π_E, π₀) pairs go to the scorer only."""
    k, n = records["expert"]["k"], bon["k"]
    bon_index = {p: i for i, p in enumerate(bon_prompts)}
    items = {"prompt_ids": [], "prompts": [], "texts": [], "sources": []}
    pairs = []
    p_star, p_eval = [], []

    def add(pid, prompt, record, index, source):
        items["prompt_ids"].append(pid)
        items["prompts"].append(prompt)
        items["texts"].append(record["completions"][index])
        items["sources"].append(source)
        p_star.append(record["p_toxic"]["R*"][index])
        p_eval.append(record["p_toxic"]["eval"][index])
        return len(items["texts"]) - 1

    for pid, prompt in enumerate(eval_prompts):
        chosen = [add(pid, prompt, records["expert"], pid * k + j, "expert") for j in range(k)]
        rejected = [add(pid, prompt, records["base"], pid * k + j, "base") for j in range(k)]
        pairs += [[c, r] for c, r in zip(chosen, rejected)]
        if prompt in bon_index:
            for j in range(n):
                add(pid, prompt, bon, bon_index[prompt] * n + j, "base_pool")
    p_star = np.asarray(p_star, dtype=float)
    truth = {"reward": (-p_star).round(7).tolist(), "label": (p_star >= TOXIC_THRESHOLD).astype(int).tolist(),
             "eval_p_toxic": [round(float(x), 7) for x in p_eval], "pairs": pairs}
    return items, truth


def heldout_pool(b: Build) -> None:
    records = {role: b.artifacts[f"eval_{role}"].read_json("samples.json") for role in ("base", "expert")}
    bon = b.artifacts["bon_pool"].read_json("samples.json")
    items, truth = pool_items(b.eval_prompts, records, b.splits["test"], bon)
    inputs = {"evaluations": {role: b.artifacts[f"eval_{role}"].key for role in records},
              "bon_pool": b.artifacts["bon_pool"].key, "format": 1}
    b.artifacts["pool"] = b.cache.get_or_build(
        "pool", inputs, lambda d: atomic_write_json(d / "pool.json", items, indent=None))
    b.artifacts["pool_truth"] = b.cache.get_or_build(
        "heldout_pool_truth", inputs, lambda d: atomic_write_json(d / "truth.json", truth, indent=None))
    b.artifacts["pool_features"] = b.cache.get_or_build(
        "pool_features", {"backbone": b.backbone_identity, "pool": b.artifacts["pool"].key,
                          "max_length": b.cfg.feature_max_length, "pooling": "mean_last_hidden"},
        lambda d: write_pool_features(d, items, b))


def write_pool_features(out, items: dict, b: Build) -> None:
    """features.npy + keys.json of the distinct pool texts (standardised later with the demos' train statistics)."""
    distinct = list(dict.fromkeys(zip(items["prompts"], items["texts"])))
    if b.cfg.feature_backbone in ("base", "expert"):
        policy = b.policies[b.cfg.feature_backbone]
    else:
        policy = Policy.from_pretrained(b.backbone_dir)
    advance = b.stages.stage("held-out pool: features", len(distinct))
    feats = lm_features(policy.model, policy.tokenizer, [p for p, _ in distinct], [y for _, y in distinct],
                        batch_size=16, max_length=b.cfg.feature_max_length, progress=advance)
    np.save(out / "features.npy", feats)
    atomic_write_json(out / "keys.json", [text_key(p, y) for p, y in distinct], indent=None)
