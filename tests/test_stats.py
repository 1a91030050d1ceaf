"""Leaderboard statistics on simulated data with a known truth: CI coverage, paired comparisons with the best,
Holm correction, normalisation, and `bench compare`."""

import json

import numpy as np
import pytest
from scipy import stats as sps

from bench import cli
from bench.scoring.bootstrap import (
    Bootstrap,
    Items,
    bootstrap_p_value,
    compare_to_best,
    holm,
    normalise,
    percentile_ci,
    probability_of_improvement,
    prompt_weights,
    seed_resample_counts,
    two_level,
)

PAIRS_PER_PROMPT, SEEDS, RESAMPLES = 4, 5, 500


def pair_items(n_prompts: int) -> Items:
    """Prompts with 2k items each; pair i of a prompt is (item i, item k + i)."""
    k = PAIRS_PER_PROMPT
    prompt = np.repeat(np.arange(n_prompts), 2 * k)
    pairs = np.array([(p * 2 * k + i, p * 2 * k + k + i) for p in range(n_prompts) for i in range(k)])
    return Items(prompt=prompt, pairs=pairs, truth=np.zeros(len(prompt)), bad=np.zeros(len(prompt), bool))


def simulated_method(rng, items, boot, seed_counts, accuracy, difficulty, seed_sd=0.03):
    """Pair accuracy of a reward that orders pair j correctly with probability accuracy + prompt difficulty + a
    seed effect; the population mean pair accuracy is `accuracy` (the effects have mean 0 and never clip)."""
    owner = items.prompt[items.pairs[:, 0]]
    per_seed = []
    for _ in range(SEEDS):
        p = accuracy + difficulty[owner] + rng.normal(0, seed_sd)
        correct = rng.random(len(p)) < p
        r = np.zeros(len(items.prompt))
        r[items.pairs[correct, 0]] = 1.0  # chosen above rejected
        r[items.pairs[~correct, 1]] = 1.0  # rejected above chosen
        per_seed.append(boot.pair_accuracy(r))
    return two_level(np.stack(per_seed, axis=1), seed_counts)


def resampling(rng, n_prompts):
    items = pair_items(n_prompts)
    boot = Bootstrap(items, prompt_weights(n_prompts, RESAMPLES, rng))
    return items, boot, seed_resample_counts(rng.random((RESAMPLES, SEEDS)), SEEDS)


def test_two_level_ci_covers_the_true_mean_at_about_the_nominal_rate():
    rng = np.random.default_rng(2026)
    true, covered, n_datasets = 0.7, 0, 200
    for _ in range(n_datasets):
        items, boot, counts = resampling(rng, 40)
        difficulty = rng.normal(0, 0.06, 40)
        _, replicates = simulated_method(rng, items, boot, counts, true, difficulty)
        lo, hi = percentile_ci(replicates)
        covered += lo <= true <= hi
    # nominal 95%; resampling both crossed factors is slightly conservative (measured ≈ 0.97 over 1000 datasets)
    assert 0.90 <= covered / n_datasets <= 0.99


def test_paired_comparison_detects_a_planted_difference_and_ties_identical_methods():
    rng = np.random.default_rng(5)
    items, boot, counts = resampling(rng, 60)
    difficulty = rng.normal(0, 0.06, 60)  # shared by the methods: pairing cancels it
    better = simulated_method(rng, items, boot, counts, 0.85, difficulty)
    worse = simulated_method(rng, items, boot, counts, 0.70, difficulty)
    points = {"better": better[0], "copy_of_better": better[0], "worse": worse[0]}
    replicates = {"better": better[1], "copy_of_better": better[1].copy(), "worse": worse[1]}
    result = compare_to_best(points, replicates, direction=+1)

    assert result["better"]["best"] and not result["better"]["tied"]  # equal values: first name wins
    copy = result["copy_of_better"]
    assert copy["tied"] and copy["diff"] == 0 and copy["ci"] == [0.0, 0.0] and copy["p"] == 1.0
    w = result["worse"]
    assert not w["tied"] and w["p_holm"] < 0.05
    assert w["ci"][0] <= -0.15 <= w["ci"][1] and w["ci"][1] < 0  # covers the planted difference, excludes 0
    assert w["p_holm"] == pytest.approx(min(1.0, 2 * w["p"]))  # Holm over two comparisons; the tie has p = 1


def test_lower_is_better_picks_the_minimum():
    reps = {"a": np.full(10, 1.0), "b": np.full(10, 0.2)}
    result = compare_to_best({"a": 1.0, "b": 0.2}, reps, direction=-1)
    assert result["b"]["best"] and result["a"]["diff"] == pytest.approx(0.8)


def test_paired_comparison_rarely_separates_equally_good_methods():
    rng = np.random.default_rng(11)
    separated, n_datasets = 0, 150
    for _ in range(n_datasets):
        items, boot, counts = resampling(rng, 40)
        difficulty = rng.normal(0, 0.06, 40)
        a = simulated_method(rng, items, boot, counts, 0.7, difficulty)
        b = simulated_method(rng, items, boot, counts, 0.7, difficulty)
        result = compare_to_best({"a": a[0], "b": b[0]}, {"a": a[1], "b": b[1]}, +1)
        separated += any(not c["best"] and not c["tied"] for c in result.values())
    assert separated / n_datasets <= 0.10  # nominal 5% (measured ≈ 1.5% over 1000 datasets: conservative)


def test_probability_of_improvement():
    assert probability_of_improvement([3, 4, 5], [1, 2, 2.5], +1)[0] == 1.0
    assert probability_of_improvement([3, 4, 5], [1, 2, 2.5], -1)[0] == 0.0  # lower is better
    value, (lo, hi) = probability_of_improvement([1.0, 2.0], [1.0, 2.0], +1)
    assert value == 0.5 and lo <= 0.5 <= hi  # identical seeds: no improvement, ties count ½
    assert probability_of_improvement([2.0, 0.0], [1.0], +1)[0] == 0.5


def test_minimum_detectable_difference_is_detected_about_80_percent_of_the_time():
    """Plant a difference equal to the reported MDE: the paired comparison should separate it in roughly 80% of
    simulated datasets (the normal approximation; Holm with one comparison is the plain test)."""
    rng = np.random.default_rng(11)
    detected, n_datasets = 0, 60
    items, boot, counts = resampling(rng, 50)
    difficulty = rng.normal(0, 0.06, 50)
    base = simulated_method(rng, items, boot, counts, 0.75, difficulty)
    again = simulated_method(rng, items, boot, counts, 0.75, difficulty)
    mde = compare_to_best({"a": base[0], "b": again[0]}, {"a": base[1], "b": again[1]}, +1)
    mde = next(c["mde"] for c in mde.values() if not c["best"])
    assert 0.01 < mde < 0.15
    for _ in range(n_datasets):
        items, boot, counts = resampling(rng, 50)
        difficulty = rng.normal(0, 0.06, 50)
        better = simulated_method(rng, items, boot, counts, 0.75 + mde, difficulty)
        worse = simulated_method(rng, items, boot, counts, 0.75, difficulty)
        result = compare_to_best({"b": better[0], "w": worse[0]}, {"b": better[1], "w": worse[1]}, +1)
        detected += not result["w"]["tied"] and result["b"]["best"]
    assert 0.6 <= detected / n_datasets <= 0.97


def test_bootstrap_p_value():
    assert bootstrap_p_value(np.zeros(99)) == 1.0
    assert bootstrap_p_value(np.full(99, 0.3)) == pytest.approx(2 / 100)  # all on one side: the +1 floor
    d = np.r_[np.full(90, 1.0), np.full(10, -1.0)]
    assert bootstrap_p_value(d) == pytest.approx(2 * 11 / 101)
    assert np.isnan(bootstrap_p_value(np.full(5, np.nan)))


def test_holm_matches_hand_computation():
    adjusted = holm([0.01, 0.04, 0.03, np.nan, 0.5])
    # sorted 0.01, 0.03, 0.04, 0.5 (m = 4): 0.04, 0.09, max(0.08, 0.09), max(0.5, 0.09)
    np.testing.assert_allclose(adjusted, [0.04, 0.09, 0.09, np.nan, 0.5])
    assert holm([0.9, 0.8])[0] == 1.0  # capped at 1
    assert len(holm([])) == 0


def test_seed_resample_counts_match_explicit_draws():
    u = np.random.default_rng(3).random((50, 7))
    for n in (1, 3, 7):
        explicit = np.stack([np.bincount(row, minlength=n) for row in (u[:, :n] * n).astype(int)])
        np.testing.assert_array_equal(seed_resample_counts(u, n), explicit)
        assert (seed_resample_counts(u, n).sum(axis=1) == n).all()


def test_normalise_maps_null_to_zero_and_oracle_to_one_in_both_directions():
    reps = np.random.default_rng(1).normal(size=(3, 400)) * 0.01
    null, top = (0.5, 0.5 + reps[0]), (1.0, 1.0 + reps[1])
    assert normalise(0.5, 0.5 + reps[0], null, top)[0] == 0.0
    assert normalise(1.0, 1.0 + reps[1], null, top)[0] == 1.0
    value, (lo, hi) = normalise(0.8, 0.8 + reps[2], null, top)
    assert value == pytest.approx(0.6) and lo < 0.6 < hi
    # lower is better (e.g. STARC): null 1.4, oracle 0 -> 0.7 is halfway
    assert normalise(0.7, np.full(5, 0.7), (1.4, np.full(5, 1.4)), (0.0, np.zeros(5)))[0] == pytest.approx(0.5)
    assert np.isnan(normalise(0.7, np.full(5, 0.7), (0.7, np.full(5, 0.7)), (0.7, np.full(5, 0.7)))[0])


# -- bench compare on hand-made leaderboard documents ------------------------------------------------------------

def board(task="synthetic", seeds=(0, 1, 2), per_seed=(0.8, 0.82, 0.84), ci=(0.75, 0.88), demos="d1"):
    mean = float(np.mean(per_seed))
    return {
        "task": task, "profile": "tiny", "provenance": {"artifacts": {"demos": demos, "truth": "t1"}},
        "rows": [{"method": "bradley_terry", "n_seeds": len(seeds), "seeds": list(seeds),
                  "metrics": {"roc_auc": {"mean": mean, "ci": list(ci)}},
                  "per_seed": {"roc_auc": list(per_seed)}}],
    }


def run_compare(tmp_path, a, b, capsys, *extra):
    pa, pb = tmp_path / "a.json", tmp_path / "b.json"
    pa.write_text(json.dumps(a))
    pb.write_text(json.dumps(b))
    code = cli.main(["compare", str(pa), str(pb), *extra])
    return code, capsys.readouterr()


def test_compare_pairs_over_seeds_when_the_seeds_and_test_set_match(tmp_path):
    from bench.reporting import compare

    a, b = board(per_seed=(0.80, 0.82, 0.84)), board(per_seed=(0.85, 0.86, 0.90))
    (tmp_path / "a.json").write_text(json.dumps(a))
    (tmp_path / "b.json").write_text(json.dumps(b))
    result = compare.compare(compare.load(tmp_path / "a.json", "A"), compare.load(tmp_path / "b.json", "B"),
                             ["roc_auc"])
    e = result["methods"]["bradley_terry"]["roc_auc"]
    d = np.array([0.05, 0.04, 0.06])
    half = sps.t.ppf(0.975, 2) * d.std(ddof=1) / np.sqrt(3)
    assert e["how"] == "seeds"
    assert e["diff"] == pytest.approx(0.05) and e["ci"] == pytest.approx([0.05 - half, 0.05 + half], abs=1e-6)

    # other seeds (or another test set): unpaired, from the two CIs
    c = board(seeds=(5, 6, 7), per_seed=(0.85, 0.86, 0.90), ci=(0.80, 0.94))
    (tmp_path / "c.json").write_text(json.dumps(c))
    result = compare.compare(compare.load(tmp_path / "a.json", "A"), compare.load(tmp_path / "c.json", "B"),
                             ["roc_auc"])
    e = result["methods"]["bradley_terry"]["roc_auc"]
    se = np.hypot(0.13, 0.14) / (2 * sps.norm.ppf(0.975))
    assert e["how"] == "unpaired" and e["ci"] == pytest.approx([0.05 - 1.96 * se, 0.05 + 1.96 * se], abs=1e-3)


def test_compare_prints_differences(tmp_path, capsys):
    code, out = run_compare(tmp_path, board(), board(per_seed=(0.85, 0.86, 0.90)), capsys, "--metrics", "roc_auc")
    assert code == 0
    assert "bradley_terry" in out.out and "+0.050" in out.out and "paired over seeds" in out.out


@pytest.mark.parametrize("case", ["missing", "not_json", "not_a_board", "other_task", "unknown_metric"])
def test_compare_bad_input_exits_2_with_one_sentence(tmp_path, capsys, case):
    a, b = board(), board()
    extra = []
    if case == "other_task":
        b["task"] = "detox"
    if case == "unknown_metric":
        extra = ["--metrics", "nope"]
    pa, pb = tmp_path / "a.json", tmp_path / "b.json"
    pa.write_text(json.dumps(a))
    pb.write_text({"missing": "", "not_json": "{oops", "not_a_board": '{"x": 1}'}.get(case, json.dumps(b)))
    if case == "missing":
        pb.unlink()
    code = cli.main(["compare", str(pa), str(pb), *extra])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert err.startswith("error: ") and err.count("\n") == 0 and err.endswith(".")
