"""Bootstrap statistics, vectorised: every metric of bench/scoring/metrics.py under many prompt resamples at once.

Resampling test prompts with replacement is the same as giving each prompt an integer weight (how often it was
drawn), so instead of materialising B resampled datasets each metric is computed once as a *weighted* statistic
for a (B, n_prompts) weight matrix. With integer weights every function here equals the corresponding
bench.scoring.metrics function applied to the explicitly duplicated data (tests check this), so the point estimate (all
weights 1) and the bootstrap replicates use one definition.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Items:
    """Test items with the structure the metrics need; `prompt` indexes columns of the weight matrix."""

    prompt: np.ndarray  # (n,) prompt index 0..P-1 of each item
    pairs: np.ndarray  # (m, 2) item indices (chosen, rejected)
    truth: np.ndarray  # (n,) R*
    bad: np.ndarray  # (n,) bool

    @property
    def n_prompts(self) -> int:
        return int(self.prompt.max()) + 1

    def per_prompt(self, values: np.ndarray, of_pairs: bool = False) -> np.ndarray:
        """Sum of item (or pair) values within each prompt, shape (P,) or (P, k)."""
        owner = self.prompt[self.pairs[:, 0]] if of_pairs else self.prompt
        out = np.zeros((self.n_prompts,) + values.shape[1:])
        np.add.at(out, owner, values)
        return out


def prompt_weights(n_prompts: int, n_boot: int, rng: np.random.Generator) -> np.ndarray:
    """Row 0: all ones (the observed data). Rows 1..B: multinomial counts of a resample of the prompts."""
    draws = rng.multinomial(n_prompts, np.full(n_prompts, 1.0 / n_prompts), size=n_boot)
    return np.vstack([np.ones((1, n_prompts)), draws]).astype(float)


def centre(r: np.ndarray, prompt: np.ndarray) -> np.ndarray:
    """Per-prompt centring; a duplicated prompt keeps the same mean, so centred values do not depend on weights."""
    means = np.bincount(prompt, weights=r) / np.bincount(prompt)
    return r - means[prompt]


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, num / np.where(den > 0, den, 1), np.nan)


def _pearson_from_moments(n, sx, sy, sxx, syy, sxy) -> np.ndarray:
    """Pearson r from weighted sums; 0 where a side is constant (no linear information)."""
    cov, vx, vy = sxy - sx * sy / n, sxx - sx * sx / n, syy - sy * sy / n
    den = np.sqrt(np.clip(vx, 0, None) * np.clip(vy, 0, None))
    return np.where(den > 1e-12 * (np.abs(sxx) + np.abs(syy) + 1e-300), cov / np.where(den > 0, den, 1), 0.0)


def _weighted_midranks(x: np.ndarray, w: np.ndarray) -> np.ndarray:
    """w: (n, B). Mid-rank of each item in the sample where item i appears w_i times (ties share their average)."""
    order = np.argsort(x, kind="stable")
    xs = x[order]
    starts = np.flatnonzero(np.r_[True, xs[1:] != xs[:-1]])
    tied = len(starts) < len(xs)
    group_weight = np.add.reduceat(w[order], starts, axis=0) if tied else w[order]  # (groups, B)
    group_rank = np.cumsum(group_weight, axis=0)
    group_rank -= group_weight / 2
    group_rank += 0.5  # below + (weight + 1) / 2
    ranks = np.empty_like(w)
    if tied:
        group_rank = group_rank[np.repeat(np.arange(len(starts)), np.diff(np.r_[starts, len(xs)]))]
    ranks[order] = group_rank
    return ranks


class Bootstrap:
    """All metrics of one recovered reward under the prompt weights W (B+1, P); each returns a (B+1,) vector."""

    def __init__(self, items: Items, weights: np.ndarray):
        if np.any(np.diff(items.prompt) < 0) or np.any(np.diff(np.unique(items.prompt)) != 1):
            raise ValueError("items must be grouped by prompt, with prompts numbered 0..P-1 in order")
        self._starts = np.flatnonzero(np.r_[True, items.prompt[1:] != items.prompt[:-1]])
        self.items, self.W = items, weights
        self.w = np.ascontiguousarray(weights[:, items.prompt].T)  # (n, B+1) item weights
        self.total = self.w.sum(axis=0)
        self.truth_centred = centre(items.truth, items.prompt)
        self.truth_ranks = _weighted_midranks(items.truth, self.w)
        self._truth_greater = items.truth[:, None] > items.truth[None, :]
        self._truth_has_ties = len(np.unique(items.truth)) < len(items.truth)

    # -- helpers
    def _pair_mean(self, per_pair: np.ndarray) -> np.ndarray:
        it = self.items
        return _ratio(self.W @ it.per_prompt(per_pair, True), self.W @ it.per_prompt(np.ones(len(per_pair)), True))

    def _pearson_items(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """Weighted Pearson of two item vectors; only per-prompt sums are needed, so this is cheap."""
        x, y = x - x.mean(), y - y.mean()  # shift first: fewer cancellation errors in the moment formula
        sums = self.W @ self.items.per_prompt(np.stack([np.ones_like(x), x, y, x * x, y * y, x * y], axis=1))
        return _pearson_from_moments(*sums.T)

    def _pearson_weighted(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """Weighted Pearson of two (n, B) matrices (values that differ per resample, e.g. ranks)."""
        w = self.w
        return _pearson_from_moments(
            self.total, (w * x).sum(0), (w * y).sum(0), (w * x * x).sum(0), (w * y * y).sum(0), (w * x * y).sum(0)
        )

    def _prompt_block_sum(self, matrix: np.ndarray) -> np.ndarray:
        """K[p, q] = Σ_{i∈p, j∈q} matrix[i, j] (items are stored grouped by prompt)."""
        rows = np.add.reduceat(matrix, self._starts, axis=0, dtype=np.int64)
        return np.add.reduceat(rows, self._starts, axis=1).astype(float)

    def _self_block(self) -> np.ndarray:
        """Diagonal (i = j) terms, which the comparison matrices include and Kendall's pairs must not."""
        return np.diag(np.bincount(self.items.prompt).astype(float))

    def _quad(self, block: np.ndarray) -> np.ndarray:
        """½ Σ_pq W_p W_q K_pq for every resample."""
        return ((self.W @ block) * self.W).sum(axis=1) / 2

    # -- metrics
    def pair_accuracy(self, r: np.ndarray) -> np.ndarray:
        d = r[self.items.pairs[:, 0]] - r[self.items.pairs[:, 1]]
        return self._pair_mean((d > 0) + 0.5 * (d == 0))

    def ordering_agreement(self, r: np.ndarray) -> np.ndarray:
        pairs, truth = self.items.pairs, self.items.truth
        a, b = np.sign(r[pairs[:, 0]] - r[pairs[:, 1]]), np.sign(truth[pairs[:, 0]] - truth[pairs[:, 1]])
        return self._pair_mean(np.where((a == 0) | (b == 0), 0.5, (a == b).astype(float)))

    def roc_auc(self, r: np.ndarray) -> np.ndarray:
        """Weighted Mann–Whitney AUC of r̂ for the good class (mid-ranks, so ties count ½)."""
        good = ~self.items.bad
        w_good = self.w[good]
        n_good, n_bad = w_good.sum(axis=0), self.w[~good].sum(axis=0)
        rank_sum = (w_good * _weighted_midranks(r, self.w)[good]).sum(axis=0)
        return _ratio(rank_sum - n_good * (n_good + 1) / 2, n_good * n_bad)

    def average_precision(self, r: np.ndarray) -> np.ndarray:
        """Weighted average precision of flagging bad items by low r̂ (tie groups flagged together)."""
        order = np.argsort(r, kind="stable")
        rs, bad, w = r[order], self.items.bad[order], self.w[order]
        ends = np.r_[np.flatnonzero(rs[1:] != rs[:-1]), len(rs) - 1]
        group = np.repeat(np.arange(len(ends)), np.diff(np.r_[-1, ends]))
        flagged_bad = np.cumsum(w * bad[:, None], axis=0)[ends][group]  # (n, B+1) at each item's tie group
        flagged = np.cumsum(w, axis=0)[ends][group]
        precision = np.where(flagged > 0, flagged_bad / np.maximum(flagged, 1e-300), 0.0)  # 0 where unweighted
        return _ratio((w * precision * bad[:, None]).sum(axis=0), (w * bad[:, None]).sum(axis=0))

    def accuracy_f1(self, r: np.ndarray, threshold: float) -> tuple[np.ndarray, np.ndarray]:
        predicted, bad = r < threshold, self.items.bad
        counts = self.W @ self.items.per_prompt(
            np.stack([predicted == bad, predicted & bad, predicted & ~bad, ~predicted & bad], axis=1).astype(float)
        )
        correct, tp, fp, fn = counts.T
        accuracy = correct / self.total
        f1 = np.where(2 * tp + fp + fn > 0, 2 * tp / np.maximum(2 * tp + fp + fn, 1e-300), 0.0)
        return accuracy, f1

    def pearson(self, r: np.ndarray) -> np.ndarray:
        return self._pearson_items(r, self.items.truth)

    def spearman(self, r: np.ndarray) -> np.ndarray:
        return self._pearson_weighted(_weighted_midranks(r, self.w), self.truth_ranks)

    def kendall(self, r: np.ndarray) -> np.ndarray:
        """Kendall τ-b of the weighted sample: copies of one item are tied with each other on both sides."""
        if np.ptp(r) == 0:
            return np.zeros(len(self.W))
        diagonal = self._self_block()
        r_has_ties = len(np.unique(r)) < len(r)
        if r_has_ties or self._truth_has_ties:
            sign = np.sign(r[:, None] - r[None, :]) * np.sign(self.items.truth[:, None] - self.items.truth[None, :])
            concord = self._prompt_block_sum(sign.astype(np.int8))
        else:  # no ties: a pair is concordant (+1) or discordant (−1); the diagonal counts as "equal", remove it
            same = (r[:, None] > r[None, :]) == self._truth_greater
            concord = 2 * self._prompt_block_sum(same.view(np.int8)) - self._all_pairs() - diagonal
        r_ties = self._ties(r) if r_has_ties else diagonal
        t_ties = self._ties(self.items.truth) if self._truth_has_ties else diagonal
        copies = (self.w * (self.w - 1) / 2).sum(axis=0)  # pairs of copies of one item: tied on both sides
        n0 = self.total * (self.total - 1) / 2
        n1 = self._quad(r_ties - diagonal) + copies
        n2 = self._quad(t_ties - diagonal) + copies
        return _ratio(self._quad(concord), np.sqrt((n0 - n1) * (n0 - n2)))

    def _ties(self, x: np.ndarray) -> np.ndarray:
        return self._prompt_block_sum((x[:, None] == x[None, :]).view(np.int8))

    def _all_pairs(self) -> np.ndarray:
        counts = np.bincount(self.items.prompt).astype(float)
        return np.outer(counts, counts)

    def centred_pearson(self, r: np.ndarray, other: np.ndarray | None = None) -> np.ndarray:
        """Pearson r after per-prompt centring (of r̂ and R*, or of r̂ and `other`)."""
        b = self.truth_centred if other is None else centre(other, self.items.prompt)
        return self._pearson_items(centre(r, self.items.prompt), b)

    def starc(self, r: np.ndarray) -> np.ndarray:
        """‖a/‖a‖ − b/‖b‖‖ of the per-prompt-centred rewards a, b; a zero reward stays zero (distance 1).
        Since centred rewards have mean 0, this equals √(2 − 2·centred Pearson) when both are non-zero."""
        a, b = centre(r, self.items.prompt), self.truth_centred
        aa, bb, ab = (self.W @ self.items.per_prompt(np.stack([a * a, b * b, a * b], axis=1))).T
        scale = np.abs(a).max() ** 2 + np.abs(b).max() ** 2
        nonzero_a, nonzero_b = aa > 1e-20 * scale, bb > 1e-20 * scale
        both = nonzero_a & nonzero_b
        cosine = np.where(both, ab / np.sqrt(np.where(both, aa * bb, 1)), 0.0)
        squared = np.where(both, 2 - 2 * cosine, np.where(nonzero_a | nonzero_b, 1.0, 0.0))
        return np.sqrt(np.clip(squared, 0.0, None))


# -- two-level bootstrap, paired comparisons, multiplicity, normalisation ------------------------------------------
#
# Every method is scored under the *same* prompt weights and the same seed draws, so for two methods the replicate
# b of metric A and replicate b of metric B come from one resample of the data: their difference, replicate by
# replicate, is a paired bootstrap of the difference (per-prompt difficulty cancels instead of adding up).

ALPHA = 0.05  # tie threshold on Holm-corrected p-values; also 1 − level of every CI
POWER = 0.8
# Minimum detectable difference = this × the bootstrap SE of a paired difference (two-sided α = 0.05, power 0.8).
MDE_FACTOR = 1.959963984540054 + 0.8416212335729143


def seed_resample_counts(uniforms: np.ndarray, n_seeds: int) -> np.ndarray:
    """(B, n) multiplicities of n seeds in B resamples with replacement, drawn from shared uniforms (B, ≥ n):
    methods with the same number of seeds get the same seed resamples, which keeps comparisons paired."""
    picks = (uniforms[:, :n_seeds] * n_seeds).astype(int)
    counts = np.zeros((len(uniforms), n_seeds))
    np.add.at(counts, (np.arange(len(uniforms))[:, None], picks), 1)
    return counts


def two_level(per_seed: np.ndarray, seed_counts: np.ndarray) -> tuple[float, np.ndarray]:
    """per_seed: (B+1, n), a metric per seed under the observed data (row 0) and B prompt resamples.
    Returns the mean over seeds and B replicates in which the seeds are resampled as well (row b's prompt
    resample, with seed multiplicities seed_counts[b-1])."""
    n = per_seed.shape[1]
    return float(per_seed[0].mean()), (seed_counts * per_seed[1:]).sum(axis=1) / n


def percentile_ci(replicates: np.ndarray, alpha: float = ALPHA) -> tuple[float, float]:
    """Percentile interval of the finite replicates (a resample can leave e.g. AUC undefined)."""
    finite = replicates[np.isfinite(replicates)]
    if not len(finite):
        return float("nan"), float("nan")
    lo, hi = np.percentile(finite, [50 * alpha, 100 - 50 * alpha])
    return float(lo), float(hi)


ROUNDING = 1e-9  # metrics are O(1); a difference this small is floating-point noise, not a difference


def bootstrap_p_value(difference: np.ndarray) -> float:
    """Two-sided p-value of "no difference" from bootstrap replicates of a difference: twice the smaller share of
    replicates on either side of 0 (ties at 0 count on both sides, +1 so that p > 0 with finitely many resamples).
    This inverts the percentile CI: p < α exactly when the (1 − α) interval lies on one side of 0, up to the +1.
    Differences within ROUNDING of 0 are 0: two methods with identical rewards (e.g. the oracle and an exact
    implicit reward) differ only by summation-order noise, whose sign depends on the CPU's vector instructions."""
    d = difference[np.isfinite(difference)]
    if not len(d):
        return float("nan")
    d = np.where(np.abs(d) <= ROUNDING, 0.0, d)
    below = (np.count_nonzero(d <= 0) + 1) / (len(d) + 1)
    above = (np.count_nonzero(d >= 0) + 1) / (len(d) + 1)
    return min(1.0, 2 * min(below, above))


def holm(p_values) -> np.ndarray:
    """Holm's step-down adjustment (controls the family-wise error rate under any dependence, which matters here:
    every comparison shares the best method). NaN entries are left out of the family and stay NaN."""
    p = np.asarray(p_values, dtype=float)
    out = np.full(len(p), np.nan)
    valid = np.flatnonzero(np.isfinite(p))
    order = valid[np.argsort(p[valid], kind="stable")]
    m = len(order)
    adjusted = np.maximum.accumulate((m - np.arange(m)) * p[order])
    out[order] = np.minimum(adjusted, 1.0)
    return out


def compare_to_best(
    points: dict[str, float], replicates: dict[str, np.ndarray], direction: int, alpha: float = ALPHA
) -> dict[str, dict]:
    """Paired comparison of every method with the best one (by point estimate; direction +1: higher is better).

    Per method: difference to the best (method − best) with its percentile CI, the paired-bootstrap p-value, the
    Holm-corrected p-value over the family of (methods − 1) comparisons, `tied`: the data cannot separate it
    from the best (corrected p ≥ α), and `mde`: the smallest true difference this design would detect with 80%
    power (MDE_FACTOR × the bootstrap standard error of the paired difference; the normal approximation). The best
    is picked from the same data, so "tied" is the honest reading and a separation is slightly optimistic (winner's
    curse); equal best values are broken by method name."""
    valid = sorted(m for m, v in points.items() if v is not None and np.isfinite(v))
    if not valid:
        return {}
    best = max(valid, key=lambda m: direction * points[m])  # first in name order among equal values
    others = [m for m in valid if m != best]
    out = {best: {"vs": best, "best": True, "tied": False, "diff": 0.0, "ci": [0.0, 0.0], "p": None, "p_holm": None}}
    p_values = []
    for m in others:
        difference = replicates[m] - replicates[best]
        p_values.append(bootstrap_p_value(difference))
        finite = difference[np.isfinite(difference)]
        out[m] = {"vs": best, "best": False, "diff": points[m] - points[best],
                  "ci": list(percentile_ci(difference, alpha)), "p": p_values[-1],
                  "mde": float(MDE_FACTOR * finite.std(ddof=1)) if len(finite) > 1 else float("nan")}
    for m, p, p_adj in zip(others, p_values, holm(p_values)):
        # an undefined p (no finite replicate) means the data cannot separate the two: count it as a tie
        out[m].update(p_holm=float(p_adj), tied=bool(not np.isfinite(p_adj) or p_adj >= alpha))
    return out


def probability_of_improvement(a: np.ndarray, b: np.ndarray, direction: int, n_boot: int = 1000,
                               seed: int = 0) -> tuple[float, tuple[float, float]]:
    """P(A > B) as rliable reports it: the probability that a random seed of A beats a random seed of B on the
    metric (ties ½; direction −1 when lower is better), with a percentile CI from resampling each method's seeds
    (stratified bootstrap). NaN when either side has no finite value."""
    a, b = np.asarray(a, float), np.asarray(b, float)
    a, b = direction * a[np.isfinite(a)], direction * b[np.isfinite(b)]
    if not len(a) or not len(b):
        return float("nan"), (float("nan"), float("nan"))

    def prob(x, y):
        return float(np.mean((x[:, None] > y[None, :]) + 0.5 * (x[:, None] == y[None, :])))

    rng = np.random.default_rng(seed)
    reps = np.array([prob(rng.choice(a, len(a)), rng.choice(b, len(b))) for _ in range(n_boot)])
    return prob(a, b), percentile_ci(reps)


def normalise(value: float, replicates: np.ndarray, null: tuple[float, np.ndarray], top: tuple[float, np.ndarray],
              alpha: float = ALPHA) -> tuple[float, tuple[float, float]]:
    """(x − null) / (top − null): the null baseline scores 0 and the oracle 1, for either metric direction.
    The CI uses the shared replicates of all three, so the baselines' own sampling noise is included.
    Undefined (NaN) when the two baselines do not differ."""
    scale = top[0] - null[0]
    if not np.isfinite(scale) or abs(scale) < 1e-12:
        return float("nan"), (float("nan"), float("nan"))
    rep_scale = top[1] - null[1]
    ok = np.abs(rep_scale) > 1e-12
    rep = np.where(ok, (replicates - null[1]) / np.where(ok, rep_scale, 1.0), np.nan)
    return float((value - null[0]) / scale), percentile_ci(rep, alpha)
