"""STARC over two coverage distributions. In this one-step setting STARC is √(2 − 2·r_c), r_c the per-prompt-centred
correlation with R* (tests/test_metrics.py checks the identity), so what can change a verdict is not the formula but
the completions it is taken over: π₀'s own samples (where re-alignment starts) or a broad pool mixing π₀'s and
π_E's samples (where the expert moved). A reward can match R* on one and not on the other.

The CI resamples prompts (each prompt's centred sums enter with its multiplicity), the mean is over seeds.
"""

from __future__ import annotations

import numpy as np

from bench.data import TaskData
from bench.scoring.bootstrap import percentile_ci, prompt_weights
from bench.scoring.scorer import load_eval_sets
from bench.storage.artifacts import ArtifactCache

BASE_SOURCES = ("base", "base_pool")  # π₀'s samples: its paired samples and, on detox, its best-of-n pool


def _prompt_sums(r: np.ndarray, truth: np.ndarray, prompts: np.ndarray, n_prompts: int) -> np.ndarray:
    """(3, P): per prompt, Σ r_c², Σ t_c², Σ r_c·t_c of the per-prompt-centred reward and truth."""
    counts = np.bincount(prompts, minlength=n_prompts)
    safe = np.maximum(counts, 1)
    rc = r - (np.bincount(prompts, weights=r, minlength=n_prompts) / safe)[prompts]
    tc = truth - (np.bincount(prompts, weights=truth, minlength=n_prompts) / safe)[prompts]
    return np.stack([np.bincount(prompts, weights=x, minlength=n_prompts) for x in (rc * rc, tc * tc, rc * tc)])


def _starc(weights: np.ndarray, sums: np.ndarray) -> np.ndarray:
    aa, bb, ab = weights @ sums.T[:, 0], weights @ sums.T[:, 1], weights @ sums.T[:, 2]
    with np.errstate(invalid="ignore", divide="ignore"):
        r = np.where((aa > 0) & (bb > 0), ab / np.sqrt(aa * bb), 0.0)
    return np.sqrt(np.clip(2 - 2 * r, 0.0, 4.0))


def coverage_starc(rewards_by_method: dict[str, list[np.ndarray]], truth: np.ndarray, prompt_ids: np.ndarray,
                   sources: list[str], n_boot: int = 1000, seed: int = 0) -> dict:
    """Per method, STARC (mean over seeds, 95% CI over prompt resamples) on π₀'s samples and on all items.
    `rewards_by_method`: each seed's r̂ on the items; `sources`: which policy sampled each item."""
    labels, prompts = np.unique(np.asarray(prompt_ids), return_inverse=True)
    on_base = np.isin(np.asarray(sources), BASE_SOURCES)
    subsets = {"pi0": on_base, "broad": np.ones(len(on_base), dtype=bool)}
    weights = prompt_weights(len(labels), n_boot, np.random.default_rng(seed))
    out = {"n_items": {name: int(mask.sum()) for name, mask in subsets.items()},
           "sources": {name: sorted(set(np.asarray(sources)[mask])) for name, mask in subsets.items()},
           "methods": {}}
    for method, rewards in rewards_by_method.items():
        entry = {}
        for name, mask in subsets.items():
            per_seed = np.stack([_starc(weights, _prompt_sums(np.asarray(r, float)[mask], truth[mask],
                                                              prompts[mask], len(labels))) for r in rewards])
            mean = per_seed.mean(axis=0)
            lo, hi = percentile_ci(mean[1:])
            entry[name] = {"mean": round(float(mean[0]), 6), "ci": [round(lo, 6), round(hi, 6)]}
        out["methods"][method] = entry
    return out


def item_sources(data: TaskData, split: str) -> list[str]:
    """Which policy sampled each item of `split` (the held-out pool's, or a demonstration split's)."""
    if split == "pool":
        return ArtifactCache(data.cache_root).load("pool", data.artifacts["pool"]).read_json("pool.json")["sources"]
    return list(data.demos().splits[split].items.sources)


def run_coverage(trials_by_method: dict[str, list[dict]], data: TaskData, split: str, n_boot: int = 1000,
                 seed: int = 0) -> dict:
    """`coverage_starc` of a run's finished trials on its scored split."""
    scored = load_eval_sets(data)[split]
    rewards = {m: [np.asarray(t["rewards"][split], dtype=float) for t in trials]
               for m, trials in trials_by_method.items() if trials}
    return coverage_starc(rewards, scored.reward, scored.prompt_ids, item_sources(data, split), n_boot, seed)
