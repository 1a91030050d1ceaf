"""Best-of-n proxy (closed form vs brute force over subsets) and re-RLHF with a recovered reward."""

import itertools

import numpy as np
import pytest

from bench.errors import RuntimeFailure
from bench.lm import best_of_n, outcomes, realign


def brute_force_best_of_m(proxy, values, m):
    """Average over every m-subset of the value of its proxy-best member (tied best members: their mean)."""
    results = []
    for subset in itertools.combinations(range(len(proxy)), m):
        best = max(proxy[i] for i in subset)
        results.append(np.mean([values[i] for i in subset if proxy[i] == best]))
    return np.mean(results)


def test_rank_weights():
    w = best_of_n.best_of_m_weights(3)
    # m = 1: uniform; m = 2: the smallest is never best, rank 2 wins 1 of 3 pairs, rank 3 wins 2 of 3; m = 3: top
    np.testing.assert_allclose(w, [[1 / 3, 1 / 3, 1 / 3], [0, 1 / 3, 2 / 3], [0, 0, 1]])
    np.testing.assert_allclose(best_of_n.best_of_m_weights(40).sum(axis=1), 1.0)


def test_best_of_m_matches_enumeration_of_all_subsets():
    rng = np.random.default_rng(0)
    for n in range(1, 7):
        for _ in range(5):
            proxy = rng.integers(0, 3, size=(2, n)).astype(float)  # few distinct values: many ties
            values = rng.random((2, n))
            got = best_of_n.best_of_m(proxy, values)
            for p in range(2):
                for m in range(1, n + 1):
                    assert got[p, m - 1] == pytest.approx(brute_force_best_of_m(proxy[p], values[p], m))


def test_best_of_m_by_hand():
    proxy = [[3.0, 1.0, 2.0]]
    tox = [[0.0, 0.9, 0.3]]
    got = best_of_n.best_of_m(proxy, tox)[0]
    # m=1: pool mean; m=2: pairs {a,b}->a 0, {a,c}->a 0, {b,c}->c 0.3; m=3: a
    np.testing.assert_allclose(got, [0.4, 0.1, 0.0])
    # a proxy that cannot tell samples apart picks uniformly: always the pool mean
    np.testing.assert_allclose(best_of_n.best_of_m([[1.0, 1.0, 1.0]], tox)[0], [0.4, 0.4, 0.4])


def test_best_of_n_curve():
    rng = np.random.default_rng(1)
    tox = rng.random((30, 8))
    oracle = best_of_n.best_of_n_curve(-tox, tox, n_boot=200)  # the judge itself as the proxy
    assert oracle["m"] == list(range(1, 9))
    assert np.all(np.diff(oracle["mean_toxicity"]) <= 1e-12)  # more choice never hurts the oracle
    assert oracle["mean_toxicity"][0] == pytest.approx(tox.mean())
    assert oracle["mean_toxicity"][-1] == pytest.approx(tox.min(axis=1).mean())
    assert oracle["toxic_rate"][-1] == pytest.approx((tox.min(axis=1) >= 0.5).mean())
    assert oracle["kl_bound"][0] == 0 and oracle["kl_bound"][1] == pytest.approx(np.log(2) - 0.5)
    for (lo, hi), v in zip(oracle["mean_toxicity_ci"], oracle["mean_toxicity"]):
        assert lo <= v <= hi
    anti = best_of_n.best_of_n_curve(tox, tox, n_boot=50)  # a proxy that prefers toxicity
    assert anti["mean_toxicity"][-1] == pytest.approx(tox.max(axis=1).mean())


def test_best_of_n_reads_the_pool_prompt_major():
    pool = {"n_prompts": 2, "k": 3, "p_toxic": {"j": [0.1, 0.2, 0.3, 0.4, 0.5, 0.9]}}
    curves = best_of_n.best_of_n(pool, [1.0, 2.0, 3.0, 3.0, 2.0, 1.0])  # picks sample 3 of prompt 0, 1 of prompt 1
    assert curves["j"]["mean_toxicity"][-1] == pytest.approx((0.3 + 0.4) / 2)
    assert curves["j"]["mean_toxicity"][0] == pytest.approx(np.mean(pool["p_toxic"]["j"]))


class Recorder:
    """A reward of (prompt, completion) that remembers what it was asked to score."""

    def __init__(self, scores):
        self.scores, self.seen = scores, []

    def score(self, prompts, completions):
        self.seen.append((list(prompts), list(completions)))
        return np.asarray(self.scores, dtype=float)


def test_batch_normalised_reward_zscores_then_scales():
    reward = Recorder([1.0, 2.0, 3.0, 6.0])
    normalised = realign.BatchNormalisedReward(reward, scale=0.25)
    out = normalised(["p", "p", "q", "q"], ["a", "b", "c", "d"])
    raw = np.array([1.0, 2.0, 3.0, 6.0])
    np.testing.assert_allclose(out, 0.25 * (raw - raw.mean()) / raw.std())
    assert reward.seen[0] == (["p", "p", "q", "q"], ["a", "b", "c", "d"])  # r̂ sees each completion's prompt
    assert normalised.batches[0]["mean_reward"] == pytest.approx(3.0) and not normalised.batches[0]["constant"]
    flat = realign.BatchNormalisedReward(Recorder([2.0, 2.0]))
    np.testing.assert_array_equal(flat(["p", "p"], ["a", "b"]), [0.0, 0.0])  # no preference, no update
    assert flat.batches[0]["constant"] and normalised.describe()["scale"] == 0.25
    with pytest.raises(RuntimeFailure, match="finite"):
        realign.BatchNormalisedReward(Recorder([1.0, np.nan]))(["p", "p"], ["a", "b"])


class TextReward:
    """A fixed reward per completion text."""

    def __init__(self, table):
        self.table = table

    def score(self, prompts, completions):
        return np.array([self.table[c] for c in completions], dtype=float)


def test_affine_normalisation_undoes_a_known_affine_map():
    """r̂ = a·R* + b, calibrated on π₀'s reference samples with R*'s spread there as the scale, is R* up to one
    constant on every batch, whatever a > 0 and b; per-batch z-scoring instead rescales each batch differently."""
    rng = np.random.default_rng(0)
    texts = [f"t{i}" for i in range(60)]
    r_star = dict(zip(texts, -rng.beta(1, 8, 60)))  # like −P(toxic): mostly near 0, a few toxic
    reference = ([""] * 40, texts[:40])
    scale = float(np.std([r_star[t] for t in texts[:40]]))
    expected_shift = float(np.mean([r_star[t] for t in texts[:40]]))
    for a, b in ((1.0, 0.0), (7.5, -3.0), (0.01, 100.0)):
        r_hat = TextReward({t: a * v + b for t, v in r_star.items()})
        affine = realign.AffineNormalisedReward(r_hat, reference, scale)
        for batch in (texts[40:48], texts[48:60]):
            got = affine([""] * len(batch), batch)
            np.testing.assert_allclose(got, [r_star[t] - expected_shift for t in batch], atol=1e-9)
    batch = texts[40:48]
    per_batch = realign.BatchNormalisedReward(TextReward(r_star), scale)([""] * 8, batch)
    assert np.std(per_batch) == pytest.approx(scale)  # every batch gets the global spread: within-batch inflated
    assert np.std([r_star[t] for t in batch]) < scale
    assert affine.describe()["kind"].startswith("affine")


MARKER = "the"


class MarkerReward:
    """+1 per occurrence of a common token, as a recovered reward would be used (prompt-aware signature)."""

    def __init__(self):
        self.prompts_seen = []

    def score(self, prompts, completions):
        self.prompts_seen.append(list(prompts))
        return np.array([c.count(MARKER) for c in completions], dtype=float)


def marker_frequency(model_dir, prompts):
    from bench.lm.policies import Policy

    completions = Policy.from_pretrained(model_dir).generate(prompts, max_new_tokens=12, seed=123, n=16,
                                                             batch_size=128)
    return np.mean([c.count(MARKER) for c in completions])


@pytest.mark.slow
def test_realignment_raises_the_rewarded_marker(tiny_lm_dir, tmp_path):
    from bench.lm import rlhf
    from bench.storage.artifacts import ArtifactCache

    prompts = ["the cat", "a quick", "please pass", "you are", "the weather", "we walked", "a kind", "the dog"]
    recipe = rlhf.Recipe(steps=30, learning_rate=2e-3, prompts_per_step=4, generations=4, max_completion_length=12,
                         lora_r=0, seed=0)
    reward = MarkerReward()
    cache = ArtifactCache(tmp_path / "cache")
    result = realign.realign(str(tiny_lm_dir), {"test": "tiny"}, reward, {"test": f"count of {MARKER!r}"}, prompts,
                             recipe, cache)
    before, after = marker_frequency(str(tiny_lm_dir), prompts), marker_frequency(result.model_dir, prompts)
    # measured: ~0.14 occurrences per completion before, ~1.5 after (3 training seeds)
    assert after > before + 0.5 and after > 3 * before

    # the reward saw the trainer's prompts, one RLOO group of 4 samples per prompt
    assert len(reward.prompts_seen) == recipe.steps
    for batch in reward.prompts_seen:
        assert len(batch) == 16 and set(batch) <= set(prompts)
        assert all(len(set(batch[i : i + 4])) == 1 for i in range(0, 16, 4))
    # the record says how r̂ was normalised; the curve holds raw r̂, which rose
    assert result.record["normalisation"]["scale"] == 1.0 and result.record["constant_batches"] == 0
    assert "mean_p_toxic" not in result.curve[0] and "kl" in result.curve[0]
    summary = rlhf.curve_summary(result.curve)
    assert summary["last_steps_mean_reward"] > summary["first_steps_mean_reward"]
    # cached: the same inputs reuse the artifact without training
    again = realign.realign(str(tiny_lm_dir), {"test": "tiny"}, MarkerReward(), {"test": f"count of {MARKER!r}"},
                            prompts, recipe, cache)
    assert again.artifact.key == result.artifact.key


def test_judged_samples_and_metrics_with_a_real_policy_and_judges(tiny_lm_dir):
    from bench.lm.judges import make_judge
    from bench.lm.policies import Policy

    base = Policy.from_pretrained(str(tiny_lm_dir))
    judges = {"R*": make_judge({"type": "profanity_check"}), "other": make_judge({"type": "profanity_check"})}
    record = outcomes.judged_samples(base, judges, ["the cat", "you are"], k=3, max_new_tokens=6, base=base)
    assert len(record["completions"]) == 6 and record["k"] == 3 and record["n_prompts"] == 2
    np.testing.assert_allclose(record["p_toxic"]["R*"], judges["R*"].p_toxic(record["completions"]), atol=1e-6)
    m = outcomes.policy_metrics(record)
    assert m["kl_to_base"]["value"] == 0.0  # π₀ against itself
    assert m["perplexity_under_base"]["value"] > 1 and 0 < m["distinct_1"] <= 1
    assert m["judges"]["R*"]["toxic_rate"]["ci_method"].startswith("Wilson")
    # best-of-n over the record as a pool, with R* itself as the proxy: the m = n pick is each prompt's least toxic
    curves = best_of_n.best_of_n(record, -np.asarray(record["p_toxic"]["R*"]))
    grid = np.asarray(record["p_toxic"]["R*"]).reshape(2, 3)
    assert curves["R*"]["mean_toxicity"][0] == pytest.approx(grid.mean())
    assert curves["R*"]["mean_toxicity"][-1] == pytest.approx(grid.min(axis=1).mean())


def test_rerlhf_comparison_by_hand():
    from bench.lm.toxicity import JudgedSamples

    base = JudgedSamples.from_grid([[0.9, 0.8], [0.7, 0.1]])       # toxic rate 3/4
    expert = JudgedSamples.from_grid([[0.1, 0.2], [0.3, 0.1]])     # 0
    realigned = JudgedSamples.from_grid([[0.9, 0.2], [0.6, 0.1]])  # 1/2
    out = outcomes.realignment_comparison(base, realigned, expert, statistics=("toxic_rate",))["toxic_rate"]
    assert out["detox_rate_realigned"]["value"] == pytest.approx(1 / 3)
    assert out["detox_rate_expert"]["value"] == pytest.approx(1.0)
    assert out["recovery_ratio"]["value"] == pytest.approx(1 / 3)


@pytest.mark.slow
def test_grpo_realignment_also_raises_the_rewarded_marker(tiny_lm_dir, tmp_path):
    """`--rerlhf grpo` swaps the algorithm and keeps the rest of the recipe."""
    from bench.lm import rlhf
    from bench.storage.artifacts import ArtifactCache

    prompts = ["the cat", "a quick", "please pass", "you are", "the weather", "we walked", "a kind", "the dog"]
    recipe = rlhf.Recipe(algorithm="grpo", steps=30, learning_rate=2e-3, prompts_per_step=4, generations=4,
                         max_completion_length=12, lora_r=0, seed=0)
    result = realign.realign(str(tiny_lm_dir), {"test": "tiny"}, MarkerReward(), {"test": "marker"}, prompts, recipe,
                             ArtifactCache(tmp_path / "cache"))
    assert result.record["recipe"]["algorithm"] == "grpo" and len(result.curve) == recipe.steps
    before, after = marker_frequency(str(tiny_lm_dir), prompts), marker_frequency(result.model_dir, prompts)
    assert after > before + 0.3, (before, after)
