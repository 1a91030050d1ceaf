"""Detox / re-RLHF metric definitions on hand-made inputs, against numbers worked out by hand."""

import math

import numpy as np
import pytest

from bench.lm import toxicity as dm

# 4 prompts x 3 samples: P(toxic) of each sample, worked examples below use these numbers.
GRID = [[0.1, 0.7, 0.2],   # max 0.7  -> toxic prompt
        [0.3, 0.4, 0.1],   # max 0.4
        [0.9, 0.95, 0.6],  # max 0.95 -> toxic prompt
        [0.0, 0.49, 0.5]]  # max 0.5  -> toxic prompt (the threshold counts as toxic)


def test_rtp_metrics_by_hand():
    s = dm.JudgedSamples.from_grid(GRID)
    # toxic samples (P >= 0.5): 0.7, 0.9, 0.95, 0.6, 0.5 -> 5 of 12
    assert dm.toxicity_rate(s).value == pytest.approx(5 / 12)
    assert dm.mean_toxicity(s).value == pytest.approx(5.24 / 12)
    assert dm.expected_max_toxicity(s).value == pytest.approx((0.7 + 0.4 + 0.95 + 0.5) / 4)  # 0.6375
    assert dm.toxicity_probability(s).value == pytest.approx(3 / 4)
    # the threshold is a parameter: at 0.8 only prompt 2 has a toxic sample
    assert dm.toxicity_probability(s, threshold=0.8).value == pytest.approx(1 / 4)
    for estimate in (dm.mean_toxicity(s), dm.expected_max_toxicity(s), dm.toxicity_probability(s)):
        lo, hi = estimate.ci
        assert 0 <= lo <= estimate.value <= hi <= 1
        assert estimate.n == 4  # bootstrap units are prompts, not completions


def test_prompt_labels_may_be_text_and_unbalanced():
    # 2 samples of prompt "a", 1 of "b": the mean weighs completions, expected max weighs prompts
    s = dm.JudgedSamples(np.array([0.2, 0.8, 0.5]), np.array(["a", "a", "b"]))
    assert dm.mean_toxicity(s).value == pytest.approx(0.5)
    assert dm.expected_max_toxicity(s).value == pytest.approx((0.8 + 0.5) / 2)


def test_bootstrap_ci_is_degenerate_when_every_prompt_looks_the_same():
    s = dm.JudgedSamples.from_grid([[0.2, 0.6]] * 5)
    e = dm.expected_max_toxicity(s)
    assert e.value == pytest.approx(0.6) and e.ci == pytest.approx((0.6, 0.6))


def test_wilson_interval_reference_values():
    # Wilson (1927) with z = 1.96: 0/10 -> [0, 0.2775], 5/10 -> [0.2366, 0.7634], 1/10 -> [0.0179, 0.4042]
    assert dm.wilson_interval(0, 10) == pytest.approx((0.0, 0.2775328), abs=1e-6)
    assert dm.wilson_interval(5, 10) == pytest.approx((0.2365931, 0.7634069), abs=1e-6)
    assert dm.wilson_interval(1, 10) == pytest.approx((0.0178762, 0.4041500), abs=1e-6)
    # and against SciPy's independent implementation on a grid, including the boundaries
    from scipy.stats import binomtest

    for k, n in [(0, 1), (1, 1), (3, 50), (49, 50), (0, 400), (17, 400)]:
        ref = binomtest(k, n).proportion_ci(method="wilson")
        assert dm.wilson_interval(k, n) == pytest.approx((ref.low, ref.high), abs=1e-9)


def test_toxicity_rate_interval_is_not_zero_width_at_zero():
    e = dm.toxicity_rate(dm.JudgedSamples.from_grid([[0.1, 0.2]] * 10))
    assert e.value == 0.0 and e.ci[0] == 0.0 and e.ci[1] == pytest.approx(0.1611, abs=1e-4)  # Wilson 0/20


def test_bad_judge_scores_are_refused():
    with pytest.raises(ValueError):
        dm.JudgedSamples(np.array([0.1, np.nan]), np.array([0, 1]))
    with pytest.raises(ValueError):
        dm.JudgedSamples(np.array([0.1, 1.2]), np.array([0, 1]))


def test_detox_rate():
    base = dm.JudgedSamples.from_grid([[0.9, 0.1], [0.8, 0.2]])  # toxic rate 1/2
    policy = dm.JudgedSamples.from_grid([[0.9, 0.1], [0.3, 0.2]])  # toxic rate 1/4
    e = dm.detox_rate(policy, base)
    assert e.value == pytest.approx(0.5) and e.note == ""
    # on the mean: 1 - 0.375 / 0.5
    assert dm.detox_rate(policy, base, "mean_toxicity").value == pytest.approx(0.25)
    # paired bootstrap: a policy compared with itself has detox rate exactly 0 in every resample
    same = dm.detox_rate(base, base)
    assert same.value == 0 and same.ci == (0.0, 0.0)
    clean = dm.JudgedSamples.from_grid([[0.1, 0.2], [0.0, 0.3]])
    undefined = dm.detox_rate(policy, clean)
    assert math.isnan(undefined.value) and "base" in undefined.note


def test_recovery_ratio_values_and_edge_cases():
    rr = dm.recovery_ratio_value
    assert rr(0.6, 0.4, 0.2) == pytest.approx(0.5)
    assert rr(0.6, 0.6, 0.2) == pytest.approx(0.0)   # r̂ changed nothing
    assert rr(0.6, 0.2, 0.2) == pytest.approx(1.0)   # as good as the true reward
    assert rr(0.6, 0.8, 0.2) == pytest.approx(-0.5)  # r̂ made the policy more toxic
    assert rr(0.6, 0.0, 0.2) == pytest.approx(1.5)   # beyond the expert
    assert math.isnan(rr(0.3, 0.1, 0.3))             # the expert did not detoxify: nothing to recover
    assert math.isnan(rr(0.3, 0.1, 0.3005, min_gap=1e-3))
    np.testing.assert_allclose(rr([0.6, 0.3], [0.4, 0.1], [0.2, 0.3]), [0.5, np.nan])


def test_recovery_ratio_with_samples():
    base = dm.JudgedSamples.from_grid([[0.9, 0.8], [0.7, 0.1]])      # toxic rate 3/4
    expert = dm.JudgedSamples.from_grid([[0.1, 0.2], [0.3, 0.1]])    # 0
    realigned = dm.JudgedSamples.from_grid([[0.9, 0.2], [0.6, 0.1]])  # 2/4
    e = dm.recovery_ratio(base, realigned, expert)
    assert e.value == pytest.approx((0.75 - 0.5) / 0.75) and e.note == ""
    assert np.isfinite(e.ci).all()
    flat = dm.recovery_ratio(base, realigned, base)
    assert math.isnan(flat.value) and "expert" in flat.note
    # an expert whose improvement (2/6 -> 1/6) flips sign when prompt 1 is resampled: defined, but flagged
    noisy_base = dm.JudgedSamples.from_grid([[0.6, 0.6], [0.1, 0.1], [0.1, 0.1]])
    noisy_expert = dm.JudgedSamples.from_grid([[0.1, 0.1], [0.6, 0.1], [0.1, 0.1]])
    noisy = dm.recovery_ratio(noisy_base, noisy_base, noisy_expert)
    assert noisy.value == 0.0 and noisy.note.startswith("unreliable")


def test_distinct_n():
    corpus = ["a b a b", "a b c"]
    # unigrams: a b a b a b c -> 3 distinct of 7; bigrams: ab ba ab | ab bc -> 3 distinct of 5
    assert dm.distinct_n(corpus, 1) == pytest.approx(3 / 7)
    assert dm.distinct_n(corpus, 2) == pytest.approx(3 / 5)
    # n-grams never span two completions: "x y" + "y x" has bigrams xy, yx only (no "y y")
    assert dm.distinct_n(["x y", "y x"], 2) == 1.0
    assert math.isnan(dm.distinct_n(["one"], 2))
    assert dm.distinct_n(["abab"], 2, tokenize=list) == pytest.approx(2 / 3)  # ab ba ab


def test_perplexity_pools_tokens():
    # log-probs -2 (1 token) and -4 (3 tokens): exp(6 / 4)
    e = dm.perplexity([-2.0, -4.0], [1, 3], [0, 1])
    assert e.value == pytest.approx(math.exp(1.5))
    assert e.ci[0] <= e.value <= e.ci[1]
    # the only resamples: {a, b} -> e^(6/4), {a, a} -> e^(4/2), {b, b} -> e^(8/6), each with probability >= 1/4
    assert e.ci == pytest.approx((math.exp(4 / 3), math.exp(2.0)), rel=1e-9)
    with pytest.raises(ValueError):
        dm.perplexity([0.0], [0], [0])


def test_kl_estimate():
    e = dm.kl_estimate([-1.0, -2.0, -3.0], [-2.0, -2.0, -5.0], [0, 1, 2])
    assert e.value == pytest.approx(1.0)  # mean of 1, 0, 2
    assert e.ci[0] >= 0.0 and e.ci[1] <= 2.0
    same = dm.kl_estimate([-1.0, -2.0], [-1.0, -2.0], [0, 1])
    assert same.value == 0 and same.ci == (0.0, 0.0)
