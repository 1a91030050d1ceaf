"""The synthetic stress worlds: each world's stated property holds on its generated data, the expert stays exact,
older profiles keep their artifact keys; the null STARC convention; the matrix verdict rules; bad input."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from bench import config as configs
from bench import registry
from bench.errors import BadInput
from bench.scoring.bootstrap import Bootstrap, Items, prompt_weights
from bench.scoring.metrics import centre_per_prompt, starc_distance
from bench.scoring.null_starc import NULL_DISTANCE, bootstrap_starc_null, is_uninformative, starc_distance_null
from bench.scoring.worlds import token_counts
from bench.storage.artifacts import ArtifactCache
from tasks.synthetic import NEUTRAL, LinearTokenReward, SyntheticWorld, TokenPolicy, _generate, key_settings
from tasks.synthetic_worlds import WORLDS, penalty_log_normaliser

TASK = registry.get_task("synthetic")


@pytest.fixture(scope="module")
def worlds():
    return {name: _generate(TASK.config(f"world-{name}")) for name in WORLDS}


def _split_arrays(generated, split="test"):
    s = generated["demos"].splits[split]
    return (np.array(s.items.prompt_ids), np.array(generated["truth"][split]["reward"]),
            np.array(generated["truth"][split]["label"]), np.array(s.items.sources))


def _linear_floor(generated) -> float:
    ids, reward, _, _ = _split_arrays(generated)
    x = token_counts(generated["demos"].splits["test"].items.texts, generated["demos"].encoder["vocab"])
    xc = np.stack([centre_per_prompt(c, ids) for c in x.T], axis=1)
    w, *_ = np.linalg.lstsq(xc, centre_per_prompt(reward, ids), rcond=None)
    return starc_distance(xc @ w, reward, ids)


def test_every_world_is_a_profile_with_a_statement():
    for name, (statement, _) in WORLDS.items():
        assert TASK.profiles[f"world-{name}"].description == statement and len(statement) > 20


def test_imbalanced_has_five_percent_bad_base_completions(worlds):
    for name, low, high in (("imbalanced", 0.035, 0.065), ("clean", 0.25, 0.35)):
        labels = np.concatenate([_split_arrays(worlds[name], s)[2][_split_arrays(worlds[name], s)[3] == "base"]
                                 for s in ("train", "val", "test")])
        assert low <= labels.mean() <= high, (name, labels.mean())


def test_scarce_keeps_few_informative_pairs_and_noisy_flips_a_fifth(worlds):
    share = {n: worlds[n]["summary"]["splits"]["train"]["informative_pairs"]
             / worlds[n]["summary"]["splits"]["train"]["pairs"] for n in ("scarce", "clean")}
    assert share["scarce"] <= 0.05 + 1e-9 and share["clean"] > 0.2
    train = worlds["noisy"]["summary"]["splits"]["train"]
    assert 0.17 <= train["flipped_pairs"] / train["pairs"] <= 0.23
    assert worlds["clean"]["summary"]["splits"]["train"]["flipped_pairs"] == 0


def test_misspecified_reward_is_out_of_reach_of_a_linear_head_but_not_of_one_more_feature(worlds):
    floor = _linear_floor(worlds["misspecified"])
    assert floor > 0.3 and _linear_floor(worlds["clean"]) < 1e-9
    # R* is linear in the counts plus a function of one projection v·counts: add (v·counts)² and it is exact,
    # which a one-hidden-layer MLP approximates (its ReLUs bend along v)
    g = worlds["misspecified"]
    ids, reward, _, _ = _split_arrays(g)
    x = token_counts(g["demos"].splits["test"].items.texts, g["demos"].encoder["vocab"])
    style = np.array(g["world"]["interaction"]["style"])
    x = np.column_stack([x, (x @ style) ** 2])
    xc = np.stack([centre_per_prompt(c, ids) for c in x.T], axis=1)
    w, *_ = np.linalg.lstsq(xc, centre_per_prompt(reward, ids), rcond=None)
    assert starc_distance(xc @ w, reward, ids) < 1e-6


def test_near_ties_expert_is_weakly_tilted(worlds):
    gap = {n: worlds[n]["summary"]["splits"]["test"]["expert_mean_reward"]
           - worlds[n]["summary"]["splits"]["test"]["base_mean_reward"] for n in ("near-ties", "clean")}
    assert 0 < gap["near-ties"] < 0.3 * gap["clean"]


def test_heavy_tailed_reward_sits_on_a_few_tokens(worlds):
    def top_share(g):
        sq = np.sort(np.array(g["world"]["theta"]) ** 2)[::-1]
        return sq[: len(sq) // 10].sum() / sq.sum()

    assert top_share(worlds["heavy-tailed"]) > 0.8 and top_share(worlds["clean"]) < 0.5
    assert np.std(worlds["heavy-tailed"]["world"]["theta"]) == pytest.approx(np.std(worlds["clean"]["world"]["theta"]))


def test_shifted_test_prompts_come_from_another_prompt_distribution(worlds):
    def distance(g, a, b):  # total variation between the splits' mean base token distributions
        logp, rows = np.array(g["policies"]["base"]), {p: i for i, p in enumerate(g["policies"]["prompts"])}
        mean = {s: np.exp(logp[[rows[p] for p in set(g["demos"].splits[s].items.prompts)]]).mean(0) for s in (a, b)}
        return 0.5 * np.abs(mean[a] - mean[b]).sum()

    assert distance(worlds["shifted"], "train", "test") > 0.2
    assert distance(worlds["shifted"], "train", "val") < 0.05 and distance(worlds["clean"], "train", "test") < 0.05


def test_small_data_has_a_few_hundred_pairs(worlds):
    assert 200 <= worlds["small-data"]["summary"]["splits"]["train"]["pairs"] <= 500


def test_pool_covers_every_policy_with_exact_rewards(worlds):
    g = worlds["clean"]
    assert set(g["pool"]["sources"]) == {"base", "expert", "sharper", "reversed", "random+", "random-", "uniform"}
    w = g["world"]  # the oracle's reward (R*) scores the pool exactly as recorded
    scored = LinearTokenReward(w["vocab"], w["theta"], w["offsets"]).score(g["pool"]["prompts"], g["pool"]["texts"])
    np.testing.assert_allclose(scored, g["truth"]["pool"]["reward"], atol=1e-9)


def test_misspecified_expert_is_exact(worlds):
    cfg = TASK.config("world-misspecified")
    world = SyntheticWorld(cfg)
    a = cfg.interaction / (cfg.completion_length * cfg.beta)
    exact = penalty_log_normaliser(world.expert_probs[:2], world.style, a, cfg.completion_length)
    rng = np.random.default_rng(0)
    for i in range(2):
        y = rng.choice(cfg.vocab_size, size=(100_000, cfg.completion_length), p=world.expert_probs[i])
        assert exact[i] == pytest.approx(np.log(np.mean(np.exp(-a * world.style[y].sum(1) ** 2))), abs=0.01)
    # so the implicit reward β·log π_E/π₀ recovers R* up to per-prompt shifts
    g, items = worlds["misspecified"], worlds["misspecified"]["demos"].splits["test"].items
    p = g["policies"]
    expert = TokenPolicy(p["vocab"], p["prompts"], p["expert"], p["expert_penalty"])
    base = TokenPolicy(p["vocab"], p["prompts"], p["base"])
    log_ratio = expert.sum_logprobs(items.prompts, items.texts) - base.sum_logprobs(items.prompts, items.texts)
    implicit = cfg.beta * log_ratio
    assert starc_distance(implicit, np.array(g["truth"]["test"]["reward"]), np.array(items.prompt_ids)) < 1e-9


def test_older_profiles_keep_their_artifact_keys():
    for profile in ("default", "noisy", "scarce", "tiny"):
        cfg = TASK.config(profile)
        assert key_settings(cfg) == {k: v for k, v in configs.to_dict(cfg).items() if k not in NEUTRAL}
    # the default profile's demos key, as committed in results/synthetic/default/selection.json
    inputs = {"task": "synthetic", "config": key_settings(TASK.config("default"))}
    assert ArtifactCache(Path("unused")).key("demos", inputs) == "5da0b07af603cc91e561"


# -- the null STARC convention ------------------------------------------------------------------------------------

def _hand_made():
    ids = np.repeat(np.arange(6), 4)
    truth = np.array([3.0, 1.0, -2.0, 0.5] * 6) + np.repeat(np.arange(6) * 10.0, 4)
    r = truth + np.random.default_rng(1).normal(0, 0.7, len(truth))
    return ids, truth, r


def test_null_starc_is_invariant_to_per_prompt_shifts_and_positive_scaling():
    ids, truth, r = _hand_made()
    base = starc_distance_null(r, truth, ids)
    assert 0 < base < NULL_DISTANCE
    shifted = 3.7 * r + np.repeat(np.random.default_rng(2).normal(0, 5, 6), 4)
    assert starc_distance_null(shifted, truth, ids) == pytest.approx(base, abs=1e-12)
    assert starc_distance_null(truth - 7.0, truth, ids) == pytest.approx(0.0, abs=1e-12)
    assert starc_distance_null(-2 * truth, truth, ids) == pytest.approx(2.0)


def test_an_uninformative_reward_never_beats_the_null():
    ids, truth, _ = _hand_made()
    constant, per_prompt = np.full(len(truth), 4.2), np.repeat(np.arange(6.0), 4)
    for r in (constant, per_prompt, np.zeros(len(truth))):
        assert is_uninformative(r, ids)
        assert starc_distance_null(r, truth, ids) == NULL_DISTANCE  # the plain definition gives 1.0 (below random)
        assert starc_distance(r, truth, ids) == pytest.approx(1.0)
    # an independent random reward sits at √2 on average, so the constant scores the null's expectation
    rng = np.random.default_rng(3)
    big_ids = np.repeat(np.arange(300), 8)
    big_truth = rng.normal(size=len(big_ids))
    mean_random = np.mean([starc_distance_null(rng.normal(size=len(big_ids)), big_truth, big_ids) for _ in range(50)])
    assert mean_random == pytest.approx(math.sqrt(2), abs=0.01)
    items = Items(ids, np.array([[0, 1]]), truth, np.zeros(len(truth), dtype=bool))
    boot = Bootstrap(items, prompt_weights(6, 20, np.random.default_rng(0)))
    assert np.all(bootstrap_starc_null(boot, constant) == NULL_DISTANCE)
    _, _, r = _hand_made()
    assert bootstrap_starc_null(boot, r)[0] == pytest.approx(starc_distance_null(r, truth, ids), abs=1e-12)


# -- verdict rules and bad input ------------------------------------------------------------------------------------

def _column(world, diff, p_holm, metric="starc", ref="bradley_terry"):
    return {"world": world, "methods": {}, "linear_floor": None, "coverage": {},
            "differences": {f"failure_aware - {ref}": {metric: {"diff": diff, "ci": [diff - 0.01, diff + 0.01],
                                                                "p": p_holm, "p_holm": p_holm}}}}


def test_verdicts_follow_the_stated_rules():
    from bench.reporting.worlds import verdicts

    doc = {"worlds": [_column("clean", 0.02, 0.01), _column("noisy", 0.03, 0.2), _column("scarce", -0.05, 0.001)]}
    got = {h["id"]: h["verdict"] for h in verdicts(doc)}
    assert got["H1"] == "contradicted"  # FA − BT > 0 significantly, the claim was < 0
    assert got["H8"] == "undecided"  # right sign, Holm p ≥ 0.05
    assert got["H7"] == "contradicted"  # FA better on scarce, against the caveat
    assert got["H4"] == "not run"
    many = {"worlds": [_column(f"w{i}", -0.01, 0.01, "seed_ambiguity") for i in range(5)]}
    assert {h["id"]: h["verdict"] for h in verdicts(many)}["H6"] == "supported"
    many["worlds"].append(_column("w9", 0.02, 0.01, "seed_ambiguity"))
    assert {h["id"]: h["verdict"] for h in verdicts(many)}["H6"] == "undecided"


def test_bad_worlds_requests_name_the_fix(tmp_path):
    from bench.execution.worlds import WorldsRequest, validate

    with pytest.raises(BadInput, match="choose all or from: clean"):
        validate(WorldsRequest(worlds="clean,nosuch", runs_dir=tmp_path))
    with pytest.raises(BadInput, match="--seeds 2 or more"):
        validate(WorldsRequest(seeds=1, runs_dir=tmp_path))
    with pytest.raises(BadInput, match="declares no worlds"):
        validate(WorldsRequest(task="detox", runs_dir=tmp_path))
    with pytest.raises(BadInput, match="head"):
        validate(WorldsRequest(head="transformer", runs_dir=tmp_path))


def _rendered_column(world, shift):
    cell = lambda v, standing="": {"mean": v, "ci": [v - 0.01, v + 0.01], "standing": standing}  # noqa: E731
    methods = {m: {"starc": cell(0.1 + k * 0.05 + shift, "best" if k == 0 else ""), "roc_auc": cell(0.9 - k * 0.01),
                   "pool_starc": cell(0.2 + k * 0.05), "seed_ambiguity": cell(0.001 * k, "tied" if k else "best")}
               for k, m in enumerate(["bradley_terry", "failure_aware", "max_margin"])}
    tuning = {"source": "tuned/x.json", "budget": {"completed": 10, "configurations": 10, "cpu_hours": 0.01},
              "objective": {"value": 0.8}, "tuning_seeds": [1000, 1001]}
    column = _column(world, 0.05, 0.01)
    column.update(stresses=f"{world} stress", data={"train_pairs": 10, "test_items": 20, "bad_test_items": 3,
                                                    "pool_items": 5},
                  linear_floor=0.3, methods=methods, tuning={m: tuning for m in methods},
                  configs={m: {"head": "linear", "lr": 0.01, "epochs": 20} for m in methods},
                  coverage={"order_test": ["bradley_terry", "failure_aware"], "agree": shift == 0,
                            "order_pool": ["bradley_terry", "failure_aware"][:: 1 if shift == 0 else -1],
                            "bradley_terry": {"diff": 0.1, "ci": [0.05, 0.15]}})
    return column


def test_board_renders_every_table_and_the_heat_map():
    from bench.reporting.worlds import verdicts
    from bench.reporting.worlds_render import render_html, render_markdown

    doc = {"task": "synthetic", "worlds": [_rendered_column("clean", 0.0), _rendered_column("misspecified", 0.3)],
           "conventions": {"alpha": 0.05, "starc_null": "√2", "differences": "paired", "coverage": "pool − test",
                           "linear_floor": "least squares"}}
    doc["hypotheses"] = verdicts(doc)
    markdown = render_markdown(doc)
    for heading in ("## Worlds", "## STARC to R* on test items ↓", "## ROC-AUC on test items ↑", "## Coverage",
                    "## Paired differences", "## Pre-stated hypotheses", "## Tuning record"):
        assert heading in markdown
    # floor 0.3 lies below every STARC CI of misspecified
    assert "| misspecified | **supported** |" in markdown.split("| H11 |")[1].split("\n")[0]
    assert "**0.100 [0.090, 0.110]**" in markdown and "0.001 [-0.009, 0.011] ≈" in markdown
    assert "| orders agree | yes | **no** |" in markdown
    page = render_html(doc)
    assert page.count("<table>") == markdown.count("\n## ") and "data:image/png;base64," in page
