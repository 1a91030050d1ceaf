"""Metric definitions against scipy / scikit-learn, and the vectorised bootstrap against explicit resampling."""

import numpy as np
import pytest
from scipy import stats
from sklearn import metrics as skm

from bench.scoring import metrics as M
from bench.scoring.bootstrap import Bootstrap, Items, prompt_weights


def make_items(rng, n_prompts=30, per_prompt=6, ties=False):
    prompt = np.repeat(np.arange(n_prompts), per_prompt)
    truth = rng.normal(size=len(prompt)) + rng.normal(size=n_prompts)[prompt]
    if ties:
        truth = np.round(truth, 0)
    pairs = np.array([(p * per_prompt + i, p * per_prompt + per_prompt // 2 + i)
                      for p in range(n_prompts) for i in range(per_prompt // 2)])
    return Items(prompt=prompt, pairs=pairs, truth=truth, bad=truth < np.quantile(truth, 0.3))


@pytest.fixture
def rng():
    return np.random.default_rng(7)


def test_correlations_match_scipy(rng):
    a, b = rng.normal(size=200), rng.normal(size=200)
    b = a + b
    assert M.pearson(a, b) == pytest.approx(stats.pearsonr(a, b).statistic, abs=1e-12)
    assert M.spearman(a, b) == pytest.approx(stats.spearmanr(a, b).statistic, abs=1e-12)
    tied = np.round(b)
    assert M.spearman(a, tied) == pytest.approx(stats.spearmanr(a, tied).statistic, abs=1e-12)
    assert M.kendall(a, tied) == pytest.approx(stats.kendalltau(a, tied).statistic, abs=1e-12)
    assert M.pearson(a, np.ones_like(a)) == 0.0  # constant side: no linear information


def test_auc_accuracy_f1_match_sklearn(rng):
    score = np.round(rng.normal(size=300), 1)  # ties included
    bad = rng.random(300) < 1 / (1 + np.exp(2 * score))
    assert M.roc_auc(score, ~bad) == pytest.approx(skm.roc_auc_score(~bad, score), abs=1e-12)
    t = M.best_threshold(score, bad)
    acc, f1 = M.accuracy_f1(score, bad, t)
    assert acc == pytest.approx(skm.accuracy_score(bad, score < t))
    assert f1 == pytest.approx(skm.f1_score(bad, score < t))
    # the chosen threshold maximises balanced accuracy among all cut points
    balanced = skm.balanced_accuracy_score(bad, score < t)
    assert balanced >= max(skm.balanced_accuracy_score(bad, score < c) for c in np.unique(score)) - 1e-12
    # average precision of flagging bad items by low score equals sklearn's (which flags tied scores together)
    assert M.average_precision(score, bad) == pytest.approx(skm.average_precision_score(bad, -score), abs=1e-12)


def test_threshold_does_not_collapse_to_never_bad_under_class_imbalance():
    """4 bad items in 100, imperfectly separated: plain accuracy is maximised by calling nothing bad (96%, F1 0);
    the balanced-accuracy rule picks a threshold that flags the bad items."""
    score = np.r_[[-0.6, -0.5, 0.2, 0.3], np.linspace(-0.9, 3.0, 96)]
    bad = np.r_[np.ones(4, bool), np.zeros(96, bool)]
    cuts = np.r_[np.unique(score), score.max() + 1]
    accuracy_rule = max(cuts, key=lambda c: (np.mean((score < c) == bad), -c))
    assert M.accuracy_f1(score, bad, accuracy_rule) == (0.96, 0.0)  # the old rule: "never bad"
    t = M.best_threshold(score, bad)
    acc, f1 = M.accuracy_f1(score, bad, t)
    assert f1 > 0.15 and (score < t)[bad].mean() >= 0.5


def test_pair_accuracy_counts_ties_half():
    r = np.array([1.0, 0.0, 2.0, 2.0, 0.0, 1.0])
    pairs = np.array([[0, 1], [2, 3], [4, 5]])
    assert M.pair_accuracy(r, pairs) == pytest.approx((1 + 0.5 + 0) / 3)


def test_starc_properties(rng):
    items = make_items(rng)
    truth, prompt = items.truth, items.prompt
    shifted = 3.0 * truth + rng.normal(size=prompt.max() + 1)[prompt]  # positive scale + per-prompt shift
    assert M.starc_distance(shifted, truth, prompt) == pytest.approx(0.0, abs=1e-9)
    assert M.starc_distance(-truth, truth, prompt) == pytest.approx(2.0, abs=1e-9)
    noise = rng.normal(size=len(truth))
    d = M.starc_distance(noise, truth, prompt)
    assert d == pytest.approx(np.sqrt(2 - 2 * M.centred_pearson(noise, truth, prompt)), abs=1e-9)
    assert M.starc_distance(np.zeros_like(truth), truth, prompt) == pytest.approx(1.0)


def test_centring_removes_per_prompt_offsets(rng):
    items = make_items(rng)
    offset = 5 * rng.normal(size=items.n_prompts)[items.prompt]
    assert M.centred_pearson(items.truth + offset, items.truth, items.prompt) == pytest.approx(1.0)
    assert M.pearson(items.truth + offset, items.truth) < 0.5


def test_seed_ambiguity():
    prompt = np.repeat(np.arange(10), 4)
    rng = np.random.default_rng(0)
    r = rng.normal(size=40)
    assert M.seed_ambiguity([r, 2 * r, r + 1], prompt) == pytest.approx(0.0, abs=1e-12)
    assert M.seed_ambiguity([r, -r], prompt) == pytest.approx(2.0)


@pytest.mark.parametrize("ties", [False, True])
def test_bootstrap_weights_equal_explicit_resampling(rng, ties):
    """Every vectorised metric under integer prompt weights equals the plain metric on the duplicated data."""
    items = make_items(rng, ties=ties)
    r = items.truth + rng.normal(size=len(items.truth))
    if ties:
        r = np.round(r)
    weights = prompt_weights(items.n_prompts, 5, rng)
    boot = Bootstrap(items, weights)
    threshold = 0.1
    got = {
        "pair_accuracy": boot.pair_accuracy(r), "ordering_agreement": boot.ordering_agreement(r),
        "roc_auc": boot.roc_auc(r), "pearson": boot.pearson(r), "spearman": boot.spearman(r),
        "kendall": boot.kendall(r), "centred_pearson": boot.centred_pearson(r), "starc": boot.starc(r),
        "accuracy": boot.accuracy_f1(r, threshold)[0], "f1": boot.accuracy_f1(r, threshold)[1],
        "average_precision": boot.average_precision(r),
    }
    for row, w in enumerate(weights):
        drawn = np.repeat(np.arange(items.n_prompts), w.astype(int))
        idx = np.concatenate([np.flatnonzero(items.prompt == p) for p in drawn])
        new_id = np.concatenate([np.full((items.prompt == p).sum(), k) for k, p in enumerate(drawn)])
        position = {}
        pairs = []
        offset = 0
        for p in drawn:
            members = np.flatnonzero(items.prompt == p)
            position = {m: offset + j for j, m in enumerate(members)}
            pairs += [(position[c], position[q]) for c, q in items.pairs if c in position]
            offset += len(members)
        pairs = np.array(pairs)
        rr, tt, bb = r[idx], items.truth[idx], items.bad[idx]
        acc, f1 = M.accuracy_f1(rr, bb, threshold)
        expected = {
            "pair_accuracy": M.pair_accuracy(rr, pairs), "ordering_agreement": M.ordering_agreement(rr, tt, pairs),
            "roc_auc": M.roc_auc(rr, ~bb), "pearson": M.pearson(rr, tt), "spearman": M.spearman(rr, tt),
            "kendall": M.kendall(rr, tt), "centred_pearson": M.centred_pearson(rr, tt, new_id),
            "starc": M.starc_distance(rr, tt, new_id), "accuracy": acc, "f1": f1,
            "average_precision": M.average_precision(rr, bb),
        }
        for name, value in expected.items():
            assert got[name][row] == pytest.approx(value, abs=1e-9), (name, row)
