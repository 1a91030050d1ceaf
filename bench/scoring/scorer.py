"""The scorer: the only code that reads the ground truth. Turns stored trial rewards into metrics with CIs.

Per method, each metric is the mean over seeds of the metric on the full test set; its 95% CI (percentile) comes
from a two-level bootstrap that resamples seeds and test prompts (a prompt carries all its completions and pairs).
The bootstrap draws are shared by all methods, so comparisons between methods are paired: each method is compared
with the best one per metric (paired bootstrap of the difference, Holm-corrected), and methods the data cannot
separate from the best are marked tied. With both `random` and `oracle` in the run, quality metrics are also
reported normalised (random = 0, oracle = 1).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np

from bench.data import TaskData
from bench.scoring import metrics as M
from bench.scoring.bootstrap import (
    Bootstrap,
    Items,
    centre,
    compare_to_best,
    normalise,
    percentile_ci,
    probability_of_improvement,
    prompt_weights,
    seed_resample_counts,
    two_level,
)
from bench.scoring.null_starc import bootstrap_starc_null
from bench.storage.artifacts import ArtifactCache

# name -> (direction, legend). Direction: +1 higher is better, -1 lower is better.
METRICS = {
    "pair_accuracy": (+1, "share of test pairs with r̂(y⁺) > r̂(y⁻), ties ½"),
    "ordering_agreement": (+1, "share of test pairs r̂ orders as R* does"),
    "roc_auc": (+1, "ROC-AUC of r̂ separating good from bad test completions (threshold-free)"),
    "average_precision": (+1, "average precision of flagging bad completions by low r̂ (threshold-free; its chance "
                              "level is the bad rate)"),
    "accuracy": (+1, "accuracy of 'bad iff r̂ < t', t maximising balanced accuracy on validation items"),
    "f1": (+1, "F1 of the bad class at the same t"),
    "pearson": (+1, "Pearson r(r̂, R*) on test completions"),
    "spearman": (+1, "Spearman ρ(r̂, R*)"),
    "kendall": (+1, "Kendall τ-b(r̂, R*)"),
    "centred_pearson": (+1, "Pearson r after per-prompt centring of both rewards"),
    "starc": (-1, "STARC distance to R* in [0, 2] (per-prompt centring, unit L2); a reward constant within every "
                  "prompt scores √2, the null's expected distance"),
    "seed_ambiguity": (-1, "1 − mean pairwise Pearson of centred rewards across seeds"),
    "pair_accuracy_seed_std": (-1, "standard deviation of pair accuracy across seeds"),
}
PER_SEED = [m for m in METRICS if m not in ("seed_ambiguity", "pair_accuracy_seed_std")]


@dataclass(frozen=True)
class EvalSet:
    prompt_ids: np.ndarray
    pairs: np.ndarray  # (n, 2) item indices
    reward: np.ndarray  # R*
    bad: np.ndarray  # label 1 = bad


POOL_TRUTH = "pool_truth"  # artifact of a task's held-out pool: {"reward", "label", "pairs"} per pool item


def load_eval_sets(data: TaskData) -> dict[str, EvalSet]:
    """val and test items with R*; plus "pool", the task's held-out pool, when it has one (tasks/detox/pool.py)."""
    demos = data.demos()
    cache = ArtifactCache(data.cache_root)
    truth = cache.load("truth", data.truth_key).read_json("truth.json")
    sets = {}
    if POOL_TRUTH in data.artifacts:
        pool = cache.load("heldout_pool_truth", data.artifacts[POOL_TRUTH]).read_json("truth.json")
        pool_items = cache.load("pool", data.artifacts["pool"]).read_json("pool.json")
        sets["pool"] = EvalSet(prompt_ids=np.array(pool_items["prompt_ids"]),
                               pairs=np.array(pool["pairs"], dtype=int).reshape(-1, 2),
                               reward=np.array(pool["reward"], dtype=float), bad=np.array(pool["label"], dtype=bool))
    for split in ("val", "test"):
        s = demos.splits[split]
        sets[split] = EvalSet(
            prompt_ids=np.array(s.items.prompt_ids),
            pairs=np.array(s.pairs, dtype=int).reshape(-1, 2),
            reward=np.array(truth[split]["reward"], dtype=float),
            bad=np.array(truth[split]["label"], dtype=bool),
        )
    return sets


def seed_metrics(boot: Bootstrap, r: np.ndarray, threshold: float) -> dict[str, np.ndarray]:
    """Every per-seed metric of one recovered reward: row 0 on the test set, rows 1.. on its resamples."""
    accuracy, f1 = boot.accuracy_f1(r, threshold)
    return {
        "pair_accuracy": boot.pair_accuracy(r),
        "ordering_agreement": boot.ordering_agreement(r),
        "roc_auc": boot.roc_auc(r),
        "average_precision": boot.average_precision(r),
        "accuracy": accuracy,
        "f1": f1,
        "pearson": boot.pearson(r),
        "spearman": boot.spearman(r),
        "kendall": boot.kendall(r),
        "centred_pearson": boot.centred_pearson(r),
        "starc": bootstrap_starc_null(boot, r),  # a reward constant within every prompt scores √2, the null
    }


def method_metrics(boot: Bootstrap, rewards: list[np.ndarray], pair_accuracy: list[np.ndarray]) -> dict:
    """Metrics of a method across its seeds (prompt resamples only: a duplicated seed would agree with itself)."""
    n_rows = len(boot.W)
    if len(rewards) < 2:
        return {"seed_ambiguity": np.full(n_rows, np.nan), "pair_accuracy_seed_std": np.full(n_rows, np.nan)}
    agreement = [boot.centred_pearson(a, b) for a, b in itertools.combinations(rewards, 2)]
    return {
        "seed_ambiguity": 1 - np.mean(agreement, axis=0),
        "pair_accuracy_seed_std": np.std(pair_accuracy, axis=0, ddof=1),
    }


NULL_METHOD, TOP_METHOD = "random", "oracle"  # normalised score: null = 0, oracle = 1 (when both were run)
REFERENCE_METHOD = "bradley_terry"  # P(method > reference) is reported against the standard IRL objective


def bootstrap_replicates(
    trials_by_method: dict[str, list[dict]], data: TaskData, *, n_boot: int = 1000, seed: int = 0, split: str = "test"
) -> dict[str, dict]:
    """Per method: {"n_seeds", "seeds", "per_seed": {metric: [value per seed]}, "point": {metric: float},
    "replicates": {metric: (B,) array}}. One set of prompt weights and seed draws serves every method, so the
    replicates of two methods are paired (see bench.scoring.bootstrap); keys of trials_by_method can be any hashable."""
    sets = load_eval_sets(data)
    val, test = sets["val"], sets[split]
    items = Items(prompt=test.prompt_ids, pairs=test.pairs, truth=test.reward, bad=test.bad)
    rng = np.random.default_rng(seed)
    boot = Bootstrap(items, prompt_weights(items.n_prompts, n_boot, rng))
    max_seeds = max((len(t) for t in trials_by_method.values()), default=1)
    seed_uniforms = rng.random((n_boot, max_seeds))  # shared by all methods, so their seed resamples are paired

    out = {}
    for method, trials in trials_by_method.items():
        trials = sorted(trials, key=lambda t: t["seed"])
        n = len(trials)
        rewards = [np.array(t["rewards"][split]) for t in trials]
        thresholds = [M.best_threshold(np.array(t["rewards"]["val"]), val.bad) for t in trials]
        per_seed = [seed_metrics(boot, r, th) for r, th in zip(rewards, thresholds)]
        seed_counts = seed_resample_counts(seed_uniforms, n)
        point, replicates = {}, {}
        for m in PER_SEED:
            point[m], replicates[m] = two_level(np.stack([ps[m] for ps in per_seed], axis=1), seed_counts)
        across = method_metrics(boot, rewards, [ps["pair_accuracy"] for ps in per_seed])
        for m, v in across.items():
            point[m], replicates[m] = float(v[0]), v[1:]
        out[method] = {
            "n_seeds": n,
            "seeds": [t["seed"] for t in trials],
            "per_seed": {m: [_clean(ps[m][0]) for ps in per_seed] for m in PER_SEED},
            "point": point,
            "replicates": replicates,
        }
    return out


def score_methods(
    trials_by_method: dict[str, list[dict]], data: TaskData, *, n_boot: int = 1000, seed: int = 0, split: str = "test"
) -> dict[str, dict]:
    """{method: {"n_seeds", "seeds", "per_seed": {metric: [...]}, "metrics": {metric: {"mean", "ci"}},
    "comparison": {metric: paired comparison with the best method, see bootstrap.compare_to_best},
    "normalised": {metric: {"mean", "ci"}} (only when both `random` and `oracle` were scored),
    "improvement": {metric: P(method > REFERENCE_METHOD) over seeds, with CI} (when the reference was scored)}}."""
    raw = bootstrap_replicates(trials_by_method, data, n_boot=n_boot, seed=seed, split=split)
    comparisons = {
        m: compare_to_best({k: r["point"][m] for k, r in raw.items()}, {k: r["replicates"][m] for k, r in raw.items()},
                           METRICS[m][0])
        for m in METRICS
    }
    baselines = NULL_METHOD in raw and TOP_METHOD in raw
    scored = {}
    for method, r in raw.items():
        summary, normalised = {}, {}
        for m in METRICS:
            lo, hi = percentile_ci(r["replicates"][m])
            summary[m] = {"mean": _clean(r["point"][m]), "ci": [_clean(lo), _clean(hi)]}
        # only quality metrics: "random = 0" has no meaning for the seed-spread metrics (a constant reward
        # would beat the null there)
        for m in PER_SEED if baselines else []:
            value, (lo, hi) = normalise(
                r["point"][m], r["replicates"][m],
                null=(raw[NULL_METHOD]["point"][m], raw[NULL_METHOD]["replicates"][m]),
                top=(raw[TOP_METHOD]["point"][m], raw[TOP_METHOD]["replicates"][m]),
            )
            normalised[m] = {"mean": _clean(value), "ci": [_clean(lo), _clean(hi)]}
        improvement = {}
        if REFERENCE_METHOD in raw and method != REFERENCE_METHOD:
            for m in PER_SEED:
                value, (lo, hi) = probability_of_improvement(
                    r["per_seed"][m], raw[REFERENCE_METHOD]["per_seed"][m], METRICS[m][0], seed=seed)
                improvement[m] = {"vs": REFERENCE_METHOD, "value": _clean(value), "ci": [_clean(lo), _clean(hi)]}
        scored[method] = {
            "improvement": improvement,
            "n_seeds": r["n_seeds"],
            "seeds": r["seeds"],
            "per_seed": r["per_seed"],
            "metrics": summary,
            "comparison": {m: _clean_comparison(comparisons[m][method]) for m in METRICS if method in comparisons[m]},
            "normalised": normalised,
        }
    return scored


def primary_split(trials_by_method: dict[str, list[dict]], data: TaskData) -> str:
    """"pool" when the task has a held-out pool and every finished trial scored it, else "test"."""
    trials = [t for ts in trials_by_method.values() for t in ts]
    scored = POOL_TRUTH in data.artifacts and trials and all("pool" in t["rewards"] for t in trials)
    return "pool" if scored else "test"


def data_counts(data: TaskData, split: str = "test") -> dict:
    """The sizes a reader needs to judge the power of the scored set."""
    demos, test = data.demos(), load_eval_sets(data)[split]
    return {"train_pairs": len(demos.splits["train"].pairs), "test_items": len(test.reward),
            "bad_test_items": int(test.bad.sum()), "test_prompts": int(test.prompt_ids.max()) + 1,
            "test_pairs": len(test.pairs)}


def scatter_sample(trials_by_method: dict[str, list[dict]], data: TaskData, max_prompts: int = 50) -> dict:
    """Per-item test rewards of one seed per method (its smallest) beside R*, both per-prompt centred, for the
    learned-vs-true scatter plots. At most `max_prompts` whole prompts, evenly spaced, so the leaderboard JSON
    stays small and a figure can be redrawn from it alone."""
    test = load_eval_sets(data)["test"]
    prompt = test.prompt_ids
    n_prompts = int(prompt.max()) + 1
    keep_prompts = np.unique(np.linspace(0, n_prompts - 1, min(max_prompts, n_prompts)).round().astype(int))
    keep = np.isin(prompt, keep_prompts)
    methods = {}
    for method, trials in trials_by_method.items():
        if not trials:
            continue
        first = min(trials, key=lambda t: t["seed"])
        r = centre(np.array(first["rewards"]["test"], dtype=float), prompt)[keep]
        methods[method] = {"seed": first["seed"], "reward": [_clean(x, 4) for x in r]}
    return {
        "prompts": len(keep_prompts),
        "of_prompts": n_prompts,
        "truth": [_clean(x, 4) for x in centre(test.reward, prompt)[keep]],
        "methods": methods,
    }


def _clean_comparison(c: dict) -> dict:
    cleaned = {k: _clean(c[k]) for k in ("diff", "p", "p_holm", "mde") if k in c}
    return c | cleaned | {"ci": [_clean(x) for x in c["ci"]]}


def _clean(x, digits: int = 6):
    """JSON-safe, rounded: NaN becomes None; 6 decimals keep files stable and readable."""
    if x is None or not np.isfinite(x):
        return None
    return round(float(x), digits) + 0.0  # + 0.0 turns -0.0 into 0.0
