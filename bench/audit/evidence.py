"""The audit's numbers that need only the stored run and numpy: pair accuracy per kind of pair, agreement with R* by
R* bin, and what each reward penalises from its stored rewards (word effects, or least-squares token weights on a
bag-of-tokens task). `bench inspect` (bench/audit/view.py) adds failure pairs and the refitted token probe; the
leaderboard's audit section (bench/audit/section.py) shows these numbers alone, so it loads neither Ray nor torch.

The split: the task's held-out pool when it has one and every finished trial scored it (the scorer's
`primary_split`: on detox 2492 judged completions of 463 prompts instead of the test split's 160 of 40), else the
test split. The document names it (`split`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np

from bench.audit.attribution import agreement, least_squares_weights, most_penalised, standardised_weights
from bench.audit.pairs import KINDS, NEAR_TIE, accuracy_by_kind, agreement_by_bin
from bench.audit.seeds import CI_METHOD
from bench.audit.words import profanity_reference, word_view
from bench.data import TaskData
from bench.scoring.scorer import EvalSet, load_eval_sets, primary_split
from bench.storage.artifacts import ArtifactCache

SCHEMA_VERSION = 2  # 2: the scored split (`split`, `scored`) replaces the test split's `test`; the pool when present
SPLITS = {"pool": "held-out pool (every judged completion no method saw)", "test": "test split"}
LEAST_SQUARES = ("least-squares token weights from the stored rewards: per-prompt-centred r̂ regressed on "
                 "per-prompt-centred token counts (exact for a reward linear in the counts); R* treated the same way")


@dataclass(frozen=True)
class Scored:
    """The items the audit reads: R* and labels (`truth`), their prompts and texts, and each method's stored
    rewards of them, one array per finished seed (seeds ascending)."""

    split: str
    truth: EvalSet
    prompts: list[str]
    texts: list[str]
    seeds: dict[str, list[int]]
    rewards: dict[str, list[np.ndarray]]


def scored_items(data: TaskData, ok: dict[str, list[dict]]) -> Scored:
    split = primary_split(ok, data)
    truth = load_eval_sets(data)[split]
    if split == "pool":
        pool = ArtifactCache(data.cache_root).load("pool", data.artifacts["pool"]).read_json("pool.json")
        prompts, texts = list(pool["prompts"]), list(pool["texts"])
    else:
        items = data.demos().splits[split].items
        prompts, texts = list(items.prompts), list(items.texts)
    trials = {m: sorted(ts, key=lambda t: t["seed"]) for m, ts in ok.items() if ts}
    return Scored(split, truth, prompts, texts, {m: [t["seed"] for t in ts] for m, ts in trials.items()},
                  {m: [np.asarray(t["rewards"][split], dtype=float) for t in ts] for m, ts in trials.items()})


def reward_judge(data: TaskData) -> dict | None:
    """The ground truth's judge spec when R* is a judge (the truth artifact's reward_judge.json), else None."""
    path = ArtifactCache(data.cache_root).load("truth", data.truth_key).file("reward_judge.json")
    return json.loads(path.read_text()) if path.exists() else None


def stored_token_view(scored: Scored, vocab: list[str], k: int, methods: list[str]) -> dict:
    """Least-squares token weights of each method's stored rewards (per seed) against R*'s own, as in
    bench/audit/refit.py's `token_view` but with no refit (no encoder, no torch)."""
    ids = scored.truth.prompt_ids
    truth = least_squares_weights(scored.truth.reward, ids, scored.texts, vocab)
    out = {}
    for method in methods:
        per_seed = [least_squares_weights(r, ids, scored.texts, vocab) for r in scored.rewards[method]]
        mean = np.mean([standardised_weights(w) for w in per_seed], axis=0)
        out[method] = {"seeds": len(per_seed), "how": "least squares on stored rewards",
                       "top_tokens": [[vocab[i], round(float(mean[i]), 4)] for i in most_penalised(mean, k)]
                       if np.ptp(mean) > 0 else [], **agreement(per_seed, truth, k)}
    return {"attribution": "token weights (least squares, stored rewards)", "why": LEAST_SQUARES, "k": k,
            "vocab_size": len(vocab), "chance_precision": round(k / len(vocab), 4),
            "reference": "R*'s least-squares weights on the same items",
            "truth_top": [[vocab[i], round(float(truth[i]), 4)] for i in most_penalised(truth, k)], "methods": out}


def summary(data: TaskData, ok: dict[str, list[dict]], failed: dict[str, list[dict]], k: int, min_count: int,
            focus: list[str] | None = None) -> tuple[dict, Scored]:
    """(the audit document's stored-rewards part, the items it read). `focus`: the methods whose attribution is
    computed (default: every method with a finished trial)."""
    scored = scored_items(data, ok)
    focus = focus or list(scored.rewards)
    t = scored.truth
    demos = data.demos()
    if demos.encoder.get("type") == "bag_of_tokens":
        attribution = stored_token_view(scored, list(demos.encoder["vocab"]), k, focus)
    else:
        judge = reward_judge(data)
        attribution = word_view(scored.texts, t.prompt_ids, t.reward, {m: scored.rewards[m] for m in focus}, k,
                                min_count, profanity_reference(judge))
    doc = {
        "schema_version": SCHEMA_VERSION,
        "task": data.task,
        "profile": data.profile,
        "split": scored.split,
        "split_name": SPLITS.get(scored.split, scored.split),
        "scored": {"items": len(t.reward), "prompts": len(np.unique(t.prompt_ids)), "pairs": int(len(t.pairs)),
                   "bad_items": int(t.bad.sum())},
        "focus": focus,
        "ci": CI_METHOD,
        "kinds": KINDS,
        "bins": agreement_by_bin([t.reward], t.prompt_ids, t.reward)["definition"],
        "near_tie": NEAR_TIE,
        "methods": {m: {"seeds": scored.seeds[m], "failed_seeds": [f["seed"] for f in failed.get(m, [])],
                        "by_kind": accuracy_by_kind(r, t.pairs, t.reward, t.bad),
                        "by_bin": agreement_by_bin(r, t.prompt_ids, t.reward)["bins"]}
                    for m, r in scored.rewards.items()},
        "attribution": attribution,
    }
    return doc, scored

