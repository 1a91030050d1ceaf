"""The word view of a task whose rewards cannot be refitted from what is stored (detox): word effects computed from
each seed's stored rewards of the scored items, compared with the same effects of R* and, when R* is
alt-profanity-check, with the judge's own word weights (bench/audit/attribution.py says how, and what this
attribution cannot see)."""

from __future__ import annotations

import numpy as np

from bench.audit.attribution import (
    most_penalised,
    precision_at_k,
    presence,
    profanity_weights,
    top_profane,
    word_effects,
)
from bench.audit.seeds import over_seeds
from bench.errors import BadInput
from bench.scoring.metrics import spearman

WHY = ("word effects (stored rewards): refitting needs the task's encoder (here a frozen LM and its features "
       "table), which the stored run does not carry, so a word's effect is the mean per-prompt-centred, z-scored "
       "r̂ of the scored completions containing it minus that of the completions without it (per seed); "
       "correlational: words that co-occur with penalised words share their effect")


def profanity_reference(judge_spec: dict | None) -> dict[str, float] | None:
    """alt-profanity-check's word weights when the ground truth's judge spec names it, else None."""
    return profanity_weights() if (judge_spec or {}).get("type") == "profanity_check" else None


def word_view(texts: list[str], prompt_ids: np.ndarray, truth: np.ndarray, rewards: dict[str, list[np.ndarray]],
              k: int, min_count: int, judge: dict[str, float] | None) -> dict:
    """{"attribution", "candidates", "chance_precision", "rstar_top", "judge", "methods": {method: {"top_words",
    "overlap_judge", "overlap_rstar", "spearman_rstar"}}}; overlaps are precision@k over seeds."""
    vocab, matrix = presence(texts, min_count)
    if len(vocab) < k:
        raise BadInput(f"only {len(vocab)} words occur in at least {min_count} scored completions, fewer than --top "
                       f"{k}; lower --top or --min-count.")
    rstar = word_effects(truth, prompt_ids, matrix)
    judge_side = None
    if judge is not None:
        coefs = np.array([judge.get(w, 0.0) for w in vocab])
        judge_ref = -coefs  # the judge penalises what pushes P(profane) up: most negative = most penalised
        judge_side = {
            "name": "alt-profanity-check (coefficient of the word's TF-IDF feature, mean over calibrated classifiers)",
            "top_words": [[w, round(c, 4)] for w, c in top_profane(judge, k)],
            "top_candidates": [[vocab[i], round(float(coefs[i]), 4)] for i in most_penalised(judge_ref, k)],
            "candidates_in_vocabulary": int(sum(w in judge for w in vocab)),
            "rstar_overlap": round(precision_at_k(rstar, judge_ref, k), 4),
        }
    methods = {}
    for method, per_seed in rewards.items():
        effects = [word_effects(r, prompt_ids, matrix) for r in per_seed]
        mean = np.mean(effects, axis=0)
        entry = {"seeds": len(effects),
                 "top_words": [[vocab[i], round(float(mean[i]), 4)] for i in most_penalised(mean, k)],
                 "overlap_rstar": over_seeds([precision_at_k(e, rstar, k) for e in effects]),
                 "spearman_rstar": over_seeds([spearman(e, rstar) if np.ptp(e) > 0 else None for e in effects])}
        if judge_side is not None:
            entry["overlap_judge"] = over_seeds([precision_at_k(e, judge_ref, k) for e in effects])
        methods[method] = entry
    return {
        "attribution": "word effects (stored rewards)",
        "why": WHY,
        "k": k,
        "min_count": min_count,
        "candidates": len(vocab),
        "chance_precision": round(k / len(vocab), 4),
        "reference": "R*'s word effects on the same completions (overlap_rstar); the judge's word weights over the "
                     "same candidate words (overlap_judge)" if judge_side else "R*'s word effects (overlap_rstar)",
        "rstar_top": [[vocab[i], round(float(rstar[i]), 4)] for i in most_penalised(rstar, k)],
        "judge": judge_side,
        "methods": methods,
    }
