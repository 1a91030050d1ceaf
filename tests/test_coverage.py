"""STARC by coverage distribution (bench/scoring/coverage.py): the broad column is the board's STARC, and a reward
right on π₀'s samples but wrong on π_E's shows it in the π₀ column only."""

import numpy as np
import pytest

from bench.scoring import metrics as M
from bench.scoring.coverage import coverage_starc


def world(seed=0, n_prompts=60, per_prompt=4):
    rng = np.random.default_rng(seed)
    prompts = np.repeat(np.arange(n_prompts), per_prompt)
    sources = np.tile(["base", "base", "expert", "expert"], n_prompts)
    truth = rng.normal(size=len(prompts))
    return rng, prompts, sources, truth


def test_the_broad_column_is_the_mean_starc_over_seeds():
    rng, prompts, sources, truth = world()
    rewards = [truth + rng.normal(scale=s, size=len(truth)) for s in (0.5, 1.0)]
    table = coverage_starc({"m": rewards}, truth, prompts, list(sources), n_boot=200)
    expected = np.mean([M.starc_distance(r, truth, prompts) for r in rewards])
    assert table["methods"]["m"]["broad"]["mean"] == pytest.approx(expected, abs=1e-6)
    assert table["n_items"] == {"pi0": 120, "broad": 240}
    lo, hi = table["methods"]["m"]["broad"]["ci"]
    assert lo < expected < hi


def test_a_reward_right_only_on_pi0_samples_is_exact_there_and_off_on_the_broad_pool():
    rng, prompts, sources, truth = world(1)
    reward = np.where(sources == "base", truth, rng.normal(size=len(truth)))
    table = coverage_starc({"m": [reward]}, truth, prompts, list(sources), n_boot=200)
    assert table["methods"]["m"]["pi0"]["mean"] == pytest.approx(0.0, abs=1e-9)
    assert table["methods"]["m"]["broad"]["mean"] > 0.5
