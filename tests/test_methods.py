"""The IRL methods on the synthetic task, run in-process through the same trial function Ray runs."""

import builtins
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch

from bench import config as C
from bench import registry
from bench.execution.fit_trial import TrialSpec, run_trial
from bench.kit.training import IRLMethod
from bench.scoring import metrics as M
from bench.scoring.scorer import load_eval_sets
from bench.storage.results import read_result


def fit(method, data, tmp_path, seed=0, **overrides):
    cfg = C.build(registry.methods()[method].Config, overrides)
    spec = TrialSpec(method, C.to_dict(cfg), seed, data.ref)
    result = run_trial(spec, tmp_path / f"{method}-{seed}.json")
    assert result == read_result(tmp_path / f"{method}-{seed}.json")
    return result


@pytest.mark.parametrize("method", ["bradley_terry", "max_margin", "failure_aware", "failure_aware_ablation"])
def test_irl_methods_recover_the_known_reward(method, synthetic_tiny, tmp_path):
    _, data = synthetic_tiny
    result = fit(method, data, tmp_path)
    assert result["status"] == "ok", result.get("error")
    test = load_eval_sets(data)["test"]
    r = np.array(result["rewards"]["test"])
    assert M.centred_pearson(r, test.reward, test.prompt_ids) > 0.7
    assert M.roc_auc(r, ~test.bad) > 0.75
    assert result["curve"], "the fit reported its learning curve"


def test_baselines(synthetic_tiny, tmp_path):
    _, data = synthetic_tiny
    test = load_eval_sets(data)["test"]
    oracle = np.array(fit("oracle", data, tmp_path)["rewards"]["test"])
    assert np.allclose(oracle, test.reward, atol=1e-6)
    random_a = np.array(fit("random", data, tmp_path, seed=0)["rewards"]["test"])
    random_b = np.array(fit("random", data, tmp_path, seed=1)["rewards"]["test"])
    assert not np.allclose(random_a, random_b)
    assert abs(M.pearson(random_a, test.reward)) < 0.25


def test_implicit_reward_is_exact_and_length_is_uninformative(synthetic_tiny, tmp_path):
    _, data = synthetic_tiny
    test = load_eval_sets(data)["test"]
    implicit = np.array(fit("implicit", data, tmp_path)["rewards"]["test"])
    assert M.starc_distance(implicit, test.reward, test.prompt_ids) == pytest.approx(0.0, abs=1e-6)
    length = np.array(fit("length", data, tmp_path)["rewards"]["test"])
    assert np.ptp(length) == 0  # every synthetic completion has the same length


def test_same_seed_same_numbers_other_seed_other_fit(synthetic_tiny, tmp_path):
    _, data = synthetic_tiny
    a = fit("failure_aware", data, tmp_path / "a", seed=3)
    b = fit("failure_aware", data, tmp_path / "b", seed=3)
    c = fit("failure_aware", data, tmp_path / "c", seed=4)
    assert a["rewards"] == b["rewards"]
    assert a["rewards"] != c["rewards"]


def test_max_margin_respects_its_norm_bound(synthetic_tiny):
    from bench.kit.reward_models import RewardModel, make_encoder, make_head
    from bench.kit.training import FitContext

    _, data = synthetic_tiny
    demos = data.demos()
    encoder = make_encoder(demos.encoder)
    model = RewardModel(encoder, make_head("linear", encoder.dim))
    ctx = FitContext(seed=0, device=torch.device("cpu"), val=demos.splits["val"].preference_pairs,
                     report=lambda **_: None)
    method = registry.get_method("max_margin")
    cfg = C.build(method.Config, {"norm_bound": "0.5", "epochs": "30"})
    fitted = method.fit(demos.splits["train"].preference_pairs, model, cfg, ctx)
    norm = float(torch.linalg.norm(fitted.head.weight.detach()))
    assert norm == pytest.approx(0.5, rel=1e-4)  # the unbounded loss pushes the weights onto the ball


@dataclass
class _NoConfig:
    pass


class _Spy(IRLMethod):
    """Records what a method can see, and every file opened while it fits."""

    Config = _NoConfig
    seen: dict = {}

    def fit(self, train, model, cfg, ctx):
        opened = []
        real_open = builtins.open

        def spying_open(file, *args, **kwargs):
            opened.append(str(file))
            return real_open(file, *args, **kwargs)

        builtins.open = spying_open
        try:
            reward = registry.get_method("bradley_terry")
            result = reward.fit(train, model, C.build(reward.Config, {"epochs": 3}), ctx)
        finally:
            builtins.open = real_open
        _Spy.seen = {"ctx": ctx, "train": train, "opened": opened}
        return result


class _Raises(IRLMethod):
    Config = _NoConfig

    def fit(self, train, model, cfg, ctx):
        raise ValueError("this method is broken")


class _NaN(IRLMethod):
    Config = _NoConfig

    def fit(self, train, model, cfg, ctx):
        class NaNReward:
            def score(self, prompts, completions):
                return np.full(len(completions), np.nan)
        return NaNReward()


@pytest.fixture
def extra_methods():
    for name, cls in {"_spy": _Spy, "_raises": _Raises, "_nan": _NaN}.items():
        registry.register_method(name)(cls)
    yield
    for name in ("_spy", "_raises", "_nan"):
        registry._METHODS.pop(name, None)


def test_ground_truth_is_quarantined_from_methods(extra_methods, synthetic_tiny, tmp_path):
    _, data = synthetic_tiny
    result = run_trial(TrialSpec("_spy", {}, 0, data.ref), tmp_path / "spy.json")
    assert result["status"] == "ok", result.get("error")
    seen = _Spy.seen
    assert seen["ctx"].ground_truth is None
    assert set(vars(seen["train"])) == {"prompts", "chosen", "rejected"}
    truth_dir = str(Path(data.cache_root) / "truth")
    assert not any(p.startswith(truth_dir) for p in seen["opened"])
    assert {k for k, v in vars(seen["ctx"]).items() if v is not None} == {"seed", "device", "val", "report"}
    assert set(vars(seen["ctx"].val)) == {"prompts", "chosen", "rejected"}


def test_failing_and_nan_methods_are_recorded_as_failed(extra_methods, synthetic_tiny, tmp_path):
    _, data = synthetic_tiny
    raised = run_trial(TrialSpec("_raises", {}, 0, data.ref), tmp_path / "a.json")
    assert raised["status"] == "failed" and "this method is broken" in raised["error"]
    nan = run_trial(TrialSpec("_nan", {}, 0, data.ref), tmp_path / "b.json")
    assert nan["status"] == "failed" and "non-finite" in nan["error"]
    assert read_result(tmp_path / "b.json")["status"] == "failed"
