"""Metric definitions (pure functions of arrays), the reference for the README's metric table. All are computed on
held-out test items.

Conventions, stated once:
  * r̂ and R* are rewards: higher is better. Label 1 means bad (toxic).
  * ROC-AUC is the probability that a random good item gets a higher r̂ than a random bad one (ties ½), i.e. the
    AUC of r̂ for the good class (equivalently of −r̂ for the bad class).
  * Accuracy and F1 classify an item as bad when r̂ < t, F1 of the bad class; t is chosen on validation items to
    maximise accuracy against the validation labels (never on test).
  * Rewards are identified only up to a per-prompt shift and a positive scale, so correlations are also given
    after per-prompt centring, and STARC canonicalises the same way.
"""

from __future__ import annotations

import itertools

import numpy as np
from scipy import stats


def pair_accuracy(r: np.ndarray, pairs: np.ndarray) -> float:
    """Share of (chosen, rejected) pairs with r̂(chosen) > r̂(rejected); ties count ½."""
    d = r[pairs[:, 0]] - r[pairs[:, 1]]
    return float(np.mean((d > 0) + 0.5 * (d == 0)))


def ordering_agreement(r: np.ndarray, truth: np.ndarray, pairs: np.ndarray) -> float:
    """Share of pairs that r̂ orders the same way as R* (a tie on either side counts ½)."""
    a = np.sign(r[pairs[:, 0]] - r[pairs[:, 1]])
    b = np.sign(truth[pairs[:, 0]] - truth[pairs[:, 1]])
    return float(np.mean(np.where((a == 0) | (b == 0), 0.5, (a == b).astype(float))))


def roc_auc(score: np.ndarray, positive: np.ndarray) -> float:
    """Mann–Whitney form of ROC-AUC: P(score of a positive > score of a negative), ties ½. NaN if one class."""
    positive = np.asarray(positive, dtype=bool)
    n_pos, n_neg = positive.sum(), (~positive).sum()
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = stats.rankdata(score)
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def best_threshold(r: np.ndarray, bad: np.ndarray) -> float:
    """The t maximising *balanced* accuracy of "bad iff r̂ < t" on validation items (midpoints between sorted scores;
    the smallest on a tie). Plain accuracy collapses to "never bad" when bad items are rare (with 4% bad items, any
    threshold below every score is 96% accurate and has F1 0); balanced accuracy scores that rule 0.5, so the
    chosen t must actually separate the classes. With one class only, "never bad"/"always bad" is what is left."""
    order = np.sort(np.unique(r))
    candidates = np.concatenate([[order[0] - 1.0], (order[:-1] + order[1:]) / 2, [order[-1] + 1.0]])
    bad = np.asarray(bad, dtype=bool)
    predicted = r[None, :] < candidates[:, None]
    tpr = (predicted & bad).sum(axis=1) / max(bad.sum(), 1)
    tnr = (~predicted & ~bad).sum(axis=1) / max((~bad).sum(), 1)
    return float(candidates[int(np.argmax(tpr + tnr))])


def average_precision(r: np.ndarray, bad: np.ndarray) -> float:
    """Average precision of flagging bad items by low reward (threshold-free, like ROC-AUC, but it weighs the
    precision a rare class needs): Σ over bad items of the precision among items scored at or below it, divided by
    the number of bad items; tied scores are flagged together. NaN without a bad item."""
    bad = np.asarray(bad, dtype=bool)
    if not bad.any():
        return float("nan")
    order = np.argsort(r, kind="stable")
    rs, bs = np.asarray(r)[order], bad[order]
    ends = np.r_[np.flatnonzero(rs[1:] != rs[:-1]), len(rs) - 1]  # last index of each tie group
    group = np.repeat(np.arange(len(ends)), np.diff(np.r_[-1, ends]))
    precision = (np.cumsum(bs)[ends] / (ends + 1))[group]
    return float(precision[bs].mean())


def accuracy_f1(r: np.ndarray, bad: np.ndarray, threshold: float) -> tuple[float, float]:
    predicted = r < threshold
    bad = np.asarray(bad, dtype=bool)
    tp = np.sum(predicted & bad)
    fp = np.sum(predicted & ~bad)
    fn = np.sum(~predicted & bad)
    f1 = 2 * tp / (2 * tp + fp + fn) if (2 * tp + fp + fn) > 0 else 0.0
    return float(np.mean(predicted == bad)), float(f1)


def pearson(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson r; 0 when either side is constant (no linear information), rather than NaN."""
    a, b = a - a.mean(), b - b.mean()
    denominator = np.sqrt((a * a).sum() * (b * b).sum())
    return float((a * b).sum() / denominator) if denominator > 0 else 0.0


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    return pearson(stats.rankdata(a), stats.rankdata(b))


def kendall(a: np.ndarray, b: np.ndarray) -> float:
    if np.ptp(a) == 0 or np.ptp(b) == 0:
        return 0.0
    return float(stats.kendalltau(a, b).statistic)  # τ-b, handles ties


def centre_per_prompt(r: np.ndarray, prompt_ids: np.ndarray) -> np.ndarray:
    """Subtract each prompt's mean reward over its completions (the per-prompt shift is not identifiable)."""
    ids = np.unique(prompt_ids, return_inverse=True)[1]
    means = np.bincount(ids, weights=r) / np.bincount(ids)
    return r - means[ids]


def centred_pearson(r: np.ndarray, truth: np.ndarray, prompt_ids: np.ndarray) -> float:
    return pearson(centre_per_prompt(r, prompt_ids), centre_per_prompt(truth, prompt_ids))


def starc_distance(r: np.ndarray, truth: np.ndarray, prompt_ids: np.ndarray) -> float:
    """STARC distance for a one-step (bandit) setting, in [0, 2]: canonicalise both rewards by per-prompt
    centring, scale each to unit L2 norm (a zero reward stays zero), take the L2 distance. 0 = same reward up to
    per-prompt shifts and a positive scale; √2 = orthogonal; 2 = opposite."""

    def standardise(x):
        c = centre_per_prompt(x, prompt_ids)
        norm = np.linalg.norm(c)
        return c / norm if norm > 0 else c

    return float(np.linalg.norm(standardise(r) - standardise(truth)))


def seed_ambiguity(rewards_by_seed: list[np.ndarray], prompt_ids: np.ndarray) -> float:
    """1 − mean pairwise Pearson between per-prompt-centred rewards fitted on different seeds (same items).
    0 = every seed recovers the same reward; larger = the data leave the reward less identified."""
    if len(rewards_by_seed) < 2:
        return float("nan")
    centred = [centre_per_prompt(r, prompt_ids) for r in rewards_by_seed]
    return float(1 - np.mean([pearson(a, b) for a, b in itertools.combinations(centred, 2)]))
