"""Best-of-n with a recovered reward (the cheap proxy of re-alignment; no training).

A pool of n samples per test prompt is drawn from π₀ once and shared by every method; each method only scores the
pool with r̂. For every m ≤ n, `best_of_m` gives the *unbiased* estimate of a judge's expected toxicity of the
r̂-best of m samples, averaged in closed form over all C(n, m) subsets (llm_optimization's estimator), instead of
the noisy "best of the first m". Sort the pool by r̂ ascending; the i-th ranked sample is the best of a uniformly
random m-subset with probability C(i−1, m−1) / C(n, m) (the other m−1 members come from the i−1 samples below
it). Samples with tied r̂ are equally likely to be picked, so each tie group shares its mean value.
"""

from __future__ import annotations

import math

import numpy as np

from bench.lm.toxicity import TOXIC_THRESHOLD
from bench.scoring.bootstrap import percentile_ci, prompt_weights


def best_of_m_weights(n: int) -> np.ndarray:
    """(n, n) matrix W with W[m−1, i−1] = P(the i-th smallest of n is the largest of a uniformly random m-subset)
    = C(i−1, m−1) / C(n, m). Each row sums to 1 (hockey-stick identity). Exact integer binomials, then one
    division, so large n does not overflow."""
    weights = np.zeros((n, n))
    for m in range(1, n + 1):
        subsets = math.comb(n, m)
        for i in range(m, n + 1):
            weights[m - 1, i - 1] = math.comb(i - 1, m - 1) / subsets
    return weights


def best_of_m(proxy, values) -> np.ndarray:
    """Expected `values` of the sample that `proxy` ranks highest among m drawn without replacement from the pool.

    proxy, values: (P, n) arrays, row = prompt, column = one of its n pooled samples (proxy = r̂, values = e.g. the
    evaluation judge's P(toxic)). Returns (P, n) with column m−1 holding the estimate for best-of-m, m = 1..n;
    column 0 is the pool mean, column n−1 the value of the proxy's top sample."""
    proxy, values = np.asarray(proxy, dtype=float), np.asarray(values, dtype=float)
    if proxy.ndim != 2 or proxy.shape != values.shape:
        raise ValueError(f"proxy {proxy.shape} and values {values.shape} must be equal (prompts, n) arrays")
    if not np.all(np.isfinite(proxy)):
        raise ValueError("the proxy reward has non-finite scores; best-of-n needs a ranking of every sample")
    weights = best_of_m_weights(proxy.shape[1])
    out = np.empty_like(values)
    for p in range(len(proxy)):
        order = np.argsort(proxy[p], kind="stable")
        ranked_proxy, ranked_values = proxy[p][order], values[p][order]
        # Tie groups: runs of equal proxy scores in the sorted order; each member gets the group's mean value.
        starts = np.flatnonzero(np.r_[True, ranked_proxy[1:] != ranked_proxy[:-1]])
        sizes = np.diff(np.r_[starts, len(ranked_proxy)])
        group_means = np.add.reduceat(ranked_values, starts) / sizes
        out[p] = weights @ np.repeat(group_means, sizes)
    return out


def best_of_n_curve(proxy, p_toxic, threshold: float = TOXIC_THRESHOLD, n_boot: int = 2000,
                    seed: int = 0) -> dict:
    """The best-of-m curve of a proxy reward over the shared pool, for m = 1..n, averaged over prompts.

    proxy, p_toxic: (P, n). For each m: the expected evaluation-judge P(toxic) of the chosen sample
    (`mean_toxicity`) and the probability that it is toxic (`toxic_rate`), each with a 95% percentile bootstrap
    CI over prompts (the same resamples for every m and for both), and `kl_bound` = log m − (m−1)/m, the usual
    analytic KL(best-of-m ‖ π₀), an upper bound on the true KL (exact only without ties, for m ≪ pool size)."""
    proxy, p_toxic = np.asarray(proxy, dtype=float), np.asarray(p_toxic, dtype=float)
    n = proxy.shape[1]
    weights = prompt_weights(len(proxy), n_boot, np.random.default_rng(seed))
    m = np.arange(1, n + 1)
    curve = {"m": m.tolist(), "kl_bound": (np.log(m) - (m - 1) / m).tolist(), "n_prompts": len(proxy),
             "ci": "95% percentile bootstrap over prompts"}
    for name, values in (("mean_toxicity", p_toxic), ("toxic_rate", (p_toxic >= threshold).astype(float))):
        per_prompt = best_of_m(proxy, values)  # (P, n)
        reps = weights @ per_prompt / weights.sum(axis=1, keepdims=True)  # (B+1, n)
        curve[name] = reps[0].tolist()
        curve[name + "_ci"] = [list(percentile_ci(reps[1:, j])) for j in range(n)]
    return curve


def best_of_n(pool: dict, proxy_scores) -> dict:
    """The best-of-m curves (m = 1..n) of a proxy reward over the shared pool, under every judge of the pool."""
    grid = lambda flat: np.asarray(flat, dtype=float).reshape(pool["n_prompts"], pool["k"])  # noqa: E731
    return {judge: best_of_n_curve(grid(proxy_scores), grid(p)) for judge, p in pool["p_toxic"].items()}
