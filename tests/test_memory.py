"""A re-alignment trial releases what it no longer needs (bench/lm/realign.py `release_memory`, and
bench/lm/realign_trial.py dropping r̂ before evaluation) without changing any number it reports."""

import gc
import json
import os
import shutil
import weakref

import numpy as np
import pytest

from bench.lm import outcomes, realign


def live(cls) -> int:
    return sum(isinstance(obj, cls) for obj in gc.get_objects())


class CountReward:
    def score(self, prompts, completions):
        return np.array([c.count("the") for c in completions], dtype=float)


@pytest.mark.slow  # trains twice: about 25 s
def test_realign_leaves_no_trainer_optimiser_or_model_alive(tiny_lm_dir, tmp_path, monkeypatch):
    """With the automatic collector off, only `release_memory` frees what training left in reference cycles: the
    control run without it shows the trained model and TRL's reference copy (β > 0, all weights) still alive."""
    import torch
    from transformers import PreTrainedModel, Trainer

    from bench.lm import rlhf
    from bench.storage.artifacts import ArtifactCache

    recipe = rlhf.Recipe(steps=2, learning_rate=2e-3, prompts_per_step=2, generations=2, max_completion_length=4,
                         lora_r=0, beta=0.1, seed=0)
    prompts = ["the cat", "a quick", "you are", "the dog"]
    gc.collect()
    before = live(PreTrainedModel)
    alive = {}
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        for released in (False, True):
            with monkeypatch.context() as m:
                if not released:
                    m.setattr(realign, "release_memory", lambda: None)
                realign.realign(str(tiny_lm_dir), {"test": "tiny"}, CountReward(), {"test": released}, prompts,
                                recipe, ArtifactCache(tmp_path / f"cache{released}"))
            alive[released] = (live(Trainer), live(torch.optim.Optimizer), live(PreTrainedModel) - before)
            gc.collect()
    finally:
        if was_enabled:
            gc.enable()
    assert alive[False][2] >= 2  # the control: the trained model and TRL's reference copy outlive training
    assert alive[True] == (0, 0, 0)


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    from bench import registry
    from bench.storage.artifacts import ArtifactCache

    task = registry.get_task("detox")
    cache = ArtifactCache(tmp_path_factory.mktemp("memory_cache"))
    return task.build("smoke", task.config("smoke"), cache, progress=lambda *a: None)


def comparable(payload: dict) -> str:
    """The payload minus what differs between any two runs (times, memory)."""
    kept = {k: v for k, v in payload.items() if k not in ("timing", "seconds", "worker_peak_rss_mb")}
    kept["training"] = {k: v for k, v in kept["training"].items() if k != "build_seconds"}
    kept["training"]["recipe"] = {k: v for k, v in kept["training"]["recipe"].items() if k != "train_seconds"}
    return json.dumps(kept, sort_keys=True)


@pytest.mark.slow
def test_release_changes_no_number_and_frees_rhat_before_evaluation(smoke, tmp_path, monkeypatch):
    """The same smoke trial with the old lifetimes (r̂ kept to the end, nothing collected or trimmed) and with the
    release steps: byte-identical payload numbers; and with the release, r̂ (whose frozen-LM encoder holds a backbone)
    is gone by the time the evaluation loads its policies and judges."""
    from bench.execution.fit_trial import TrialSpec
    from bench.lm import realign_trial

    spec = realign_trial.RealignSpec(TrialSpec("bradley_terry", {}, 0, smoke.ref), "rloo")
    root = smoke.ref.cache_root
    built = {kind: set(os.listdir(os.path.join(root, kind))) for kind in ("policy_samples",)}
    fit, evaluate = realign_trial.fit_reward, outcomes.cached_judged_samples
    payloads, rewards, alive_at_evaluation = {}, {}, {}
    for released in (False, True):
        kept = []

        def fit_and_watch(fit_spec, released=released, kept=kept):
            reward, demos = fit(fit_spec)
            rewards[released] = weakref.ref(reward)
            if not released:
                kept.append((reward, demos))
            return reward, demos

        def evaluate_and_check(*args, released=released, **kwargs):
            alive_at_evaluation[released] = rewards[released]() is not None
            return evaluate(*args, **kwargs)

        with monkeypatch.context() as m:
            m.setattr(realign_trial, "fit_reward", fit_and_watch)
            m.setattr(outcomes, "cached_judged_samples", evaluate_and_check)
            if not released:
                m.setattr(realign, "release_memory", lambda: None)
                m.setattr(outcomes, "release_memory", lambda: None)
            payloads[released] = realign_trial.run_realign_trial(spec, tmp_path / f"{released}.json")
        assert payloads[released]["status"] == "ok", payloads[released].get("error")
        # Train and evaluate again next time: drop the artifacts this trial made.
        shutil.rmtree(os.path.join(root, "realigned"))
        for name in set(os.listdir(os.path.join(root, "policy_samples"))) - built["policy_samples"]:
            path = os.path.join(root, "policy_samples", name)  # the artifact and its lock file
            shutil.rmtree(path) if os.path.isdir(path) else os.remove(path)
        kept.clear()
    assert comparable(payloads[False]) == comparable(payloads[True])
    assert alive_at_evaluation == {False: True, True: False}


class LengthJudge:
    def p_toxic(self, texts):
        return np.array([min(1.0, len(t) / 50) for t in texts])


def test_evaluation_holds_one_policy_at_a_time_and_records_what_both_at_once_did(tiny_lm_dir, tmp_path,
                                                                                 monkeypatch):
    """The evaluation's log-probs under the policy and under π₀, computed one model at a time, equal those of the
    old path (`judged_samples` with both loaded), and π₀ loads only after the policy is gone."""
    import torch
    from transformers import PreTrainedModel

    from bench.lm.policies import Policy
    from bench.storage.artifacts import ArtifactCache

    policy_dir = tmp_path / "policy"
    shifted = Policy.from_pretrained(str(tiny_lm_dir))
    with torch.no_grad():
        for p in shifted.model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    shifted.model.save_pretrained(policy_dir)
    shifted.tokenizer.save_pretrained(policy_dir)
    del shifted
    prompts, judges = ["the cat", "you are", "a quick"], {"len": ({"type": "len"}, LengthJudge)}
    both = outcomes.judged_samples(Policy.from_pretrained(str(policy_dir)), {"len": LengthJudge()}, prompts, 2, 6,
                                   seed=3, batch_size=4, base=Policy.from_pretrained(str(tiny_lm_dir)))
    gc.collect()
    live_at_load = []

    class Watched(Policy):
        @classmethod
        def from_pretrained(cls, source, *args, **kwargs):
            gc.collect()
            live_at_load.append((source, live(PreTrainedModel)))
            return Policy.from_pretrained(source, *args, **kwargs)

    monkeypatch.setattr(outcomes, "Policy", Watched)
    record = outcomes.cached_judged_samples(ArtifactCache(tmp_path / "cache"), str(policy_dir), {"p": 1},
                                            str(tiny_lm_dir), {"b": 1}, judges, prompts, 2, 6, 3, 4)
    assert json.loads(json.dumps(both)) == record.read_json("samples.json")
    assert both["logp_base"] != both["logp_policy"]  # the two models differ, so a swap would show
    assert live_at_load == [(str(policy_dir), 0), (str(tiny_lm_dir), 0)]
