"""Failure-aware IRL (methods/failure_aware.py) and its ablation: the limits that must give back the base objective,
the slopes of its max-margin base, the choice of the best stage, and what its diagnostics report."""

import numpy as np
import pytest
import torch

from bench import config as C
from bench import registry
from bench.execution.fit_trial import TrialSpec, run_trial
from bench.kit.training import BestStage
from methods.failure_aware import curriculum

FAILURE_ONLY = {"tie_quantile", "failure_weight", "sharpen", "failure_margin"}


def fit(method, data, path, seed=0, raw=None, **overrides):
    """One trial through the runner's own trial function; `raw` sets values past validation (the α → 0 limit)."""
    cfg = C.to_dict(C.build(registry.methods()[method].Config, overrides)) | (raw or {})
    result = run_trial(TrialSpec(method, cfg, seed, data.ref), path / f"{method}-{seed}-{len(list(path.iterdir()))}")
    assert result["status"] == "ok", result.get("error")
    return result


def test_curriculum_goes_from_clear_errors_to_near_ties():
    d = torch.tensor([-3.0, 2.0, -0.5, 0.05, 1.0, 0.1, 3.0, -1.5])
    stage1, delta = curriculum(d, tie_quantile=0.4, stage=1, stages=2)
    stage2, _ = curriculum(d, tie_quantile=0.4, stage=2, stages=2)
    failures = set(torch.nonzero(d < delta).squeeze(-1).tolist())
    assert failures == {0, 2, 3, 5, 7}  # the misclassified pairs and the near-ties below δ
    assert set(torch.nonzero(stage1).squeeze(-1).tolist()) == {0, 7, 2}  # the clearest errors first
    assert set(torch.nonzero(stage2).squeeze(-1).tolist()) == failures


@pytest.mark.parametrize("base, slopes", [("bradley_terry", {}),
                                          ("max_margin", {"positive_weight": 1.5, "negative_weight": 4.0})])
def test_alpha_zero_is_the_base_objective_fitted_alone(base, slopes, synthetic_tiny, tmp_path):
    """α = 0 switches the correction path off: the reward is the warm-started base path, i.e. the base objective
    fitted alone for the same epochs with the same seed (same initialisation, same batches), whichever stage wins.
    Tolerance 1e-6 (the stored rewards have 7 decimals): the runs execute the same operations on the base path.
    The max-margin base must use the slopes of its own config, not the predecessor's 1 / 2."""
    _, data = synthetic_tiny
    alone = fit(base, data, tmp_path, epochs=30, patience=30, **slopes)
    fa = fit("failure_aware", data, tmp_path, warmup_epochs=30, patience=30, base_objective=base, **slopes,
             raw={"correction_scale": 0.0})  # below the searchable range on purpose: the limit α → 0
    np.testing.assert_allclose(fa["rewards"]["test"], alone["rewards"]["test"], atol=1e-6)
    assert fa["diagnostics"][-1]["margin_relative_change"] == pytest.approx(0.0)
    if slopes:  # and the slopes matter: the predecessor's constants give another reward
        constants = fit(base, data, tmp_path, epochs=30, patience=30)
        assert np.max(np.abs(np.subtract(constants["rewards"]["test"], alone["rewards"]["test"]))) > 1e-3


@pytest.mark.parametrize("base", ["bradley_terry", "max_margin"])
def test_the_ablation_is_failure_aware_with_lambda_zero(base, synthetic_tiny, tmp_path):
    """λ = 0 in failure_aware is exactly the registered ablation (same stages, epochs and selection), and the
    ablation's config is failure_aware's without the failure-only settings."""
    fa_fields = {f.name for f in C.fields(registry.methods()["failure_aware"].Config)}
    ablation_fields = {f.name for f in C.fields(registry.methods()["failure_aware_ablation"].Config)}
    assert fa_fields - ablation_fields == FAILURE_ONLY and ablation_fields < fa_fields
    _, data = synthetic_tiny
    shared = {"base_objective": base, "stages": 2, "stage_epochs": 5, "warmup_epochs": 10}
    ablation = fit("failure_aware_ablation", data, tmp_path, **shared)
    lambda_zero = fit("failure_aware", data, tmp_path, **shared, failure_weight=0.0)
    with_failures = fit("failure_aware", data, tmp_path, **shared, failure_weight=5.0)
    np.testing.assert_allclose(lambda_zero["rewards"]["test"], ablation["rewards"]["test"], atol=1e-6)
    assert np.max(np.abs(np.subtract(with_failures["rewards"]["test"], ablation["rewards"]["test"]))) > 1e-3
    stage_epochs = [sum(c.get("stage") == s for c in r["curve"]) for r in (ablation, with_failures)
                    for s in ("warmup", "curriculum-1", "curriculum-2")]
    assert all(0 < n <= 10 for n in stage_epochs)  # both trained every stage (early stopping may cut one short)


def test_best_stage_keeps_the_best_and_a_later_stage_wins_a_tie():
    reward = torch.nn.Linear(1, 1, bias=False)
    best = BestStage()
    for stage, (weight, accuracy) in enumerate([(1.0, 0.8), (2.0, 0.7), (3.0, 0.8), (4.0, 0.6)]):
        reward.weight.data.fill_(weight)
        best.offer(stage, accuracy, reward)
    best.restore(reward)
    assert best.stage == 2 and float(reward.weight.detach()) == 3.0


def test_the_staged_fit_falls_back_to_the_best_stage_and_reports_it(synthetic_tiny, tmp_path):
    """The returned reward is the best of the warm start and the stages by validation pair accuracy; seed 0 here
    is a fit whose curriculum does not beat the warm start, so it falls back to the warm-started reward."""
    _, data = synthetic_tiny
    kept = []
    for seed in (0, 1):
        result = fit("failure_aware", data, tmp_path, seed=seed, stages=2)
        stages = [d for d in result["diagnostics"] if d["diagnostic"].startswith("stage")]
        assert [d["diagnostic"] for d in stages] == ["stage 1", "stage 2"]
        for d in stages:
            assert d["failures"] == d["misclassified"] + d["near_ties"] > 0
            assert d["misclassified"] <= d["training_errors"]
            assert 0 < d["failure_loss_share"] < 1 and d["near_tie_threshold"] > 0
        assert stages[1]["misclassified"] == stages[1]["training_errors"]  # the last stage admits every error
        warmup = max(c["val_pair_accuracy"] for c in result["curve"] if c.get("stage") == "warmup")
        accuracies = [warmup] + [d["stage_val_pair_accuracy"] for d in stages]
        after = result["diagnostics"][-1]
        assert after["diagnostic"] == "after the curriculum"
        assert after["best_stage"] == max(k for k, a in enumerate(accuracies) if a == max(accuracies))
        assert after["warmup_kept"] == (after["best_stage"] == 0)
        assert (after["margin_relative_change"] == 0) == (after["best_stage"] == 0)
        assert result["val_pair_accuracy"] == pytest.approx(max(accuracies))  # the returned reward's, rescored
        kept.append(after["warmup_kept"])
    assert kept == [1, 0]
