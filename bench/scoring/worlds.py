"""Scores of one world of the worlds matrix (bench/reporting/worlds.py builds the board from them).

Per method: STARC (null convention of bench/scoring/null_starc.py) and ROC-AUC on the held-out test items, STARC
over the world's broad pool (π₀, π_E and perturbed policies on test prompts, when the task publishes one), and the
seed ambiguity. One set of prompt resamples and seed draws serves every method of a world, so the replicates of two
methods are paired (as in bench/scoring/scorer.py). Reads the ground truth: this is scoring, not a trial.
"""

from __future__ import annotations

import numpy as np

from bench.data import TaskData
from bench.scoring.bootstrap import (
    Bootstrap,
    Items,
    bootstrap_p_value,
    percentile_ci,
    prompt_weights,
    seed_resample_counts,
    two_level,
)
from bench.scoring.metrics import centre_per_prompt
from bench.scoring.null_starc import bootstrap_starc_null, starc_distance_null
from bench.scoring.scorer import load_eval_sets, method_metrics
from bench.storage.artifacts import ArtifactCache

# name -> direction (+1 higher is better, -1 lower is better)
WORLD_METRICS = {"starc": -1, "roc_auc": +1, "pool_starc": -1, "seed_ambiguity": -1}


def pool_of(data: TaskData) -> tuple[np.ndarray, np.ndarray] | None:
    """(prompt ids, R*) of the broad pool, or None when the task data has none."""
    if "pool" not in data.artifacts:
        return None
    cache = ArtifactCache(data.cache_root)
    items = cache.load("pool", data.artifacts["pool"]).read_json("pool.json")
    truth = cache.load("truth", data.truth_key).read_json("pool.json")
    return np.array(items["prompt_ids"]), np.array(truth["reward"], dtype=float)


def score_world(trials_by_method: dict[str, list[dict]], data: TaskData, *, n_boot: int = 1000,
                seed: int = 0) -> dict[str, dict]:
    """{method: {"n_seeds", "per_seed": {metric: [...]}, "point": {metric}, "replicates": {metric: (B,)}}}."""
    test = load_eval_sets(data)["test"]
    rng = np.random.default_rng(seed)
    boot = Bootstrap(Items(test.prompt_ids, test.pairs, test.reward, test.bad),
                     prompt_weights(int(test.prompt_ids.max()) + 1, n_boot, rng))
    pool = pool_of(data)
    pool_boot = None
    if pool is not None:
        empty = np.zeros((0, 2), dtype=int)
        pool_boot = Bootstrap(Items(pool[0], empty, pool[1], np.zeros(len(pool[1]), dtype=bool)),
                              prompt_weights(int(pool[0].max()) + 1, n_boot, rng))
    max_seeds = max((len(t) for t in trials_by_method.values()), default=1)
    seed_uniforms = rng.random((n_boot, max_seeds))
    out = {}
    for method, trials in trials_by_method.items():
        trials = sorted(trials, key=lambda t: t["seed"])
        rewards = [np.array(t["rewards"]["test"], dtype=float) for t in trials]
        per_seed = {"starc": [bootstrap_starc_null(boot, r) for r in rewards],
                    "roc_auc": [boot.roc_auc(r) for r in rewards]}
        if pool_boot is not None and all("pool" in t["rewards"] for t in trials):
            per_seed["pool_starc"] = [bootstrap_starc_null(pool_boot, np.array(t["rewards"]["pool"], dtype=float))
                                      for t in trials]
        counts = seed_resample_counts(seed_uniforms, len(trials))
        point, replicates = {}, {}
        for m, values in per_seed.items():
            point[m], replicates[m] = two_level(np.stack(values, axis=1), counts)
        ambiguity = method_metrics(boot, rewards, [boot.pair_accuracy(r) for r in rewards])["seed_ambiguity"]
        point["seed_ambiguity"], replicates["seed_ambiguity"] = float(ambiguity[0]), ambiguity[1:]
        out[method] = {"n_seeds": len(trials), "seeds": [t["seed"] for t in trials],
                       "per_seed": {m: [float(v[0]) for v in values] for m, values in per_seed.items()},
                       "point": point, "replicates": replicates}
    return out


def paired_difference(a: dict, b: dict, metric: str) -> dict | None:
    """a − b on `metric` from paired replicates: {"diff", "ci", "p"}; None when either lacks the metric."""
    if metric not in a["point"] or metric not in b["point"]:
        return None
    reps = a["replicates"][metric] - b["replicates"][metric]
    lo, hi = percentile_ci(reps)
    return {"diff": float(a["point"][metric] - b["point"][metric]), "ci": [lo, hi], "p": bootstrap_p_value(reps)}


def token_counts(texts: list[str], vocab: list[str]) -> np.ndarray:
    """Bag-of-tokens counts (the synthetic encoder's features), in numpy: scoring stays free of torch."""
    index = {tok: i for i, tok in enumerate(vocab)}
    counts = np.zeros((len(texts), len(vocab)))
    for row, text in enumerate(texts):
        for tok in text.split():
            if tok in index:
                counts[row, index[tok]] += 1
    return counts


def linear_floor(data: TaskData) -> float | None:
    """The STARC distance of the best reward a linear head over the task's features can represent, on the test
    items: least squares of per-prompt-centred R* on per-prompt-centred features (an optimistic floor: it is fitted
    to the test truth itself). None for encoders other than bag-of-tokens."""
    demos = data.demos()
    if demos.encoder.get("type") != "bag_of_tokens":
        return None
    test, items = load_eval_sets(data)["test"], demos.splits["test"].items
    features = token_counts(items.texts, demos.encoder["vocab"])
    centred = np.stack([centre_per_prompt(col, test.prompt_ids) for col in features.T], axis=1)
    weights, *_ = np.linalg.lstsq(centred, centre_per_prompt(test.reward, test.prompt_ids), rcond=None)
    return starc_distance_null(centred @ weights, test.reward, test.prompt_ids)
