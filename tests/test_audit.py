"""`bench inspect`, the audit view: pair kinds, R* bins, failure pairs, and what a recovered reward penalises."""

import json
from pathlib import Path

import numpy as np
import pytest

from bench import config as configs
from bench import registry
from bench.audit.attribution import (
    least_squares_weights,
    precision_at_k,
    presence,
    profanity_weights,
    top_profane,
    word_effects,
)
from bench.audit.pairs import accuracy_by_kind, agreement_by_bin, failure_pairs, pair_kinds
from bench.audit.view import InspectRequest, inspect
from bench.cli import main
from bench.errors import BadInput
from bench.execution.fit_trial import TrialSpec, run_trial
from bench.storage.selection import MethodSelection, Selection

REPO = Path(__file__).resolve().parents[1]
SEEDS = (0, 1)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, synthetic_tiny):
    """A stored run group of the tiny synthetic task: oracle and bradley_terry (defaults), seeds 0 and 1."""
    _, data = synthetic_tiny
    runs = tmp_path_factory.mktemp("runs")
    group = runs / "synthetic" / "tiny"
    methods = {}
    for method in ("oracle", "bradley_terry"):
        cfg = configs.to_dict(configs.build(registry.methods()[method].Config, {}))
        specs = [TrialSpec(method, cfg, seed, data.ref) for seed in SEEDS]
        for spec in specs:
            assert run_trial(spec, group / "trials" / f"{spec.trial_id}.json")["status"] == "ok"
        methods[method] = MethodSelection(cfg, [s.trial_id for s in specs])
    Selection(data, {}, list(SEEDS), methods, {"resamples": 10, "seed": 0}, {}).write(group)
    (runs / "synthetic" / "latest.json").write_text(json.dumps({"group": "tiny"}))
    return runs


def test_pair_kinds_and_their_accuracy_on_hand_made_pairs():
    bad = np.array([0, 1, 0, 0, 1, 1, 1, 0])
    pairs = np.array([[0, 1], [2, 3], [4, 5], [6, 7]])  # (chosen, rejected)
    assert list(pair_kinds(pairs, bad)) == ["bad→good", "good/good", "bad/bad", "good→bad"]
    truth = np.array([0.0, -1.0, 0.5, 0.2, -0.5, -0.9, -2.0, 1.0])
    seed_a = np.array([1.0, 0.0, 0.0, 1.0, 2.0, 2.0, 0.0, 3.0])  # bad→good right, good/good wrong, tie, R*-right
    seed_b = np.array([0.0, 1.0, 1.0, 0.0, 2.0, 1.0, 3.0, 0.0])  # bad→good wrong, good/good right, right, expert-right
    out = accuracy_by_kind([seed_a, seed_b], pairs, truth, bad)
    assert out["bad→good"]["pairs"] == 1 and out["bad→good"]["pair_accuracy"]["mean"] == 0.5
    assert out["bad/bad"]["pair_accuracy"]["mean"] == 0.75  # a tie counts ½
    assert out["good→bad"]["pair_accuracy"]["mean"] == 0.5
    assert out["good→bad"]["rstar_order"]["mean"] == 0.5  # R* prefers the rejected: seed_a agrees with R*
    assert out["good/good"]["pair_accuracy"]["ci"] == [0.0, 1.0]  # two seeds that disagree: a wide CI


def test_failure_pairs_are_misclassified_or_near_ties_with_the_truths_verdict():
    prompt_ids = np.array([0, 0, 1, 1, 2, 2])
    pairs = np.array([[0, 1], [2, 3], [4, 5]])
    bad = np.array([0, 1, 0, 0, 0, 0])
    truth = np.array([0.0, -1.0, 0.0, 1.0, 0.0, -1.0])
    r = np.array([-1.0, 1.0, 1.0, -1.0, 0.001, 0.0])  # pair 0 wrong, pair 1 right, pair 2 a near-tie
    out = failure_pairs([r], prompt_ids, pairs, truth, bad, top=5)
    assert out["bad→good"]["failures"] == 1
    assert out["bad→good"]["shown"][0]["kind"] == "misclassified"
    assert out["bad→good"]["shown"][0]["verdict"] == "R* agrees with the expert"
    good = out["good/good"]
    assert good["failures"] == 1 and good["shown"][0]["pair"] == 2 and good["shown"][0]["kind"] == "near-tie"


def test_agreement_by_bin_reads_a_toxicity_reward_as_minus_p():
    truth = -np.array([0.1, 0.3, 0.9, 0.05])  # clean, borderline, toxic, clean
    out = agreement_by_bin([truth.copy()], np.array([0, 0, 0, 0]), truth)
    assert out["definition"].startswith("P_toxic")
    assert {b: e["items"] for b, e in out["bins"].items()} == {"clean": 2, "borderline": 1, "toxic": 1}
    assert all(e["rstar_order"]["mean"] == 1.0 for e in out["bins"].values())  # R* itself orders every pair right


def test_word_effects_and_least_squares_weights_on_hand_made_rewards():
    texts = ["nice day", "awful day", "nice talk", "awful talk"]
    vocab, matrix = presence(texts, min_count=2)
    assert vocab == ["awful", "day", "nice", "talk"]
    effects = word_effects(np.array([1.0, -1.0, 1.0, -1.0]), np.array([0, 0, 1, 1]), matrix)
    assert effects[vocab.index("awful")] == pytest.approx(-2.0) and effects[vocab.index("day")] == pytest.approx(0.0)
    # a reward linear in token counts (plus per-prompt offsets) is recovered up to a common shift
    rng = np.random.default_rng(0)
    tokens = [f"t{i}" for i in range(6)]
    theta = rng.normal(size=6)
    rows = rng.integers(0, 6, size=(80, 5))
    prompt_ids = np.repeat(np.arange(20), 4)
    reward = theta[rows].sum(axis=1) + rng.normal(size=20)[prompt_ids]
    w = least_squares_weights(reward, prompt_ids, [" ".join(tokens[t] for t in row) for row in rows], tokens)
    assert np.allclose(w - w.mean(), theta - theta.mean())
    assert precision_at_k(w, theta, 2) == 1.0


def test_token_view_recovers_the_oracles_tokens_exactly_and_bradley_terrys_closely(tiny_run):
    doc = inspect(InspectRequest("synthetic", tiny_run, top=5))
    view = doc["attribution"]
    assert view["attribution"] == "token probe (refit)" and view["vocab_size"] == 20
    oracle, bt = view["methods"]["oracle"], view["methods"]["bradley_terry"]
    assert oracle["how"] == bt["how"] == "refit"
    assert oracle["precision_at_k"]["mean"] == 1.0 and oracle["spearman"]["mean"] == pytest.approx(1.0)
    assert [t for t, _ in oracle["top_tokens"]] == [t for t, _ in view["truth_top"]]
    assert oracle["refit_drift"] < 1e-6 and bt["refit_drift"] < 1e-5  # the refits reproduce the stored trials
    # measured on the tiny task (20 tokens, defaults, seeds 0 and 1): precision@5 0.6 and 0.8 (chance 0.25),
    # Spearman ρ 0.77 and 0.89; on the committed default synthetic run (40 tokens, tuned, 5 seeds): precision@10 0.9
    assert bt["precision_at_k"]["mean"] >= 0.6 and bt["spearman"]["mean"] >= 0.7
    assert doc["methods"]["oracle"]["by_kind"]["bad→good"]["rstar_order"]["mean"] == 1.0


def test_the_judges_own_most_penalised_words_are_toxic_alone():
    from profanity_check import predict_prob

    top = [word for word, _ in top_profane(profanity_weights(), 10)]
    assert len(set(top)) == 10
    assert int((predict_prob(top) >= 0.5).sum()) >= 8


def test_bench_inspect_on_the_committed_detox_results(capsys, tmp_path):
    code = main(["inspect", "--task", "detox", "--runs-dir", str(REPO / "results"), "--method", "failure_aware",
                 "--json"])
    assert code == 0
    doc = json.loads(capsys.readouterr().out)
    # the held-out pool, not the 40-prompt test split: 2492 judged completions of 463 prompts
    assert doc["split"] == "pool" and doc["scored"]["items"] == 2492 and doc["scored"]["prompts"] == 463
    view = doc["attribution"]
    assert view["attribution"] == "word effects (stored rewards)"
    assert view["judge"]["top_words"][0][0] == "fuck"
    methods = [m for m in json.loads((REPO / "results/detox/default/selection.json").read_text())["methods"]]
    assert set(view["methods"]) == set(doc["methods"]) == set(methods)  # every method's words, not only the focus
    for entry in view["methods"].values():
        assert len(entry["top_words"]) == 10 and 0 <= entry["overlap_judge"]["mean"] <= 1
    fa = view["methods"]["failure_aware"]
    assert fa["overlap_judge"]["n"] == 5 and len(fa["overlap_judge"]["ci"]) == 2
    assert view["methods"]["oracle"]["overlap_rstar"]["mean"] == 1.0  # R*'s own stored rewards: its own effects
    for entry in doc["methods"].values():
        assert sum(entry["by_kind"][k]["pairs"] for k in doc["kinds"]) == doc["scored"]["pairs"]
    assert list(doc["failures"]) == ["failure_aware"] and doc["focus"] == ["failure_aware"]
    page = tmp_path / "audit.html"
    assert main(["inspect", "--task", "detox", "--runs-dir", str(REPO / "results"), "--method", "failure_aware",
                 "--profile", "default", "--html", str(page)]) == 0
    text = capsys.readouterr().out
    assert "<h2>What each recovered reward penalises</h2>" in page.read_text() and "failure_aware" in page.read_text()
    assert "overlap with judge @10" in text and "failure_aware · bad→good" in text
    assert "most penalised words" in text and "scored on the held-out pool" in text


def test_bench_inspect_bad_input_names_the_fix(capsys, tmp_path):
    assert main(["inspect", "--task", "detox", "--runs-dir", str(REPO / "results"), "--method", "nope"]) == 2
    assert "use one of: bradley_terry" in capsys.readouterr().err
    assert main(["inspect", "--task", "detox", "--runs-dir", str(REPO / "results"), "--top", "0"]) == 2
    assert main(["inspect", "--task", "detox", "--runs-dir", str(REPO / "results"), "--profile", "smoke"]) == 2
    assert "no stored run of detox with profile 'smoke'" in capsys.readouterr().err
    assert main(["inspect", "--task", "detox", "--runs-dir", str(tmp_path)]) == 2
    assert main(["inspect", "--task", "detox", "--runs-dir", str(REPO / "results"), "--method", "random",
                 "--html", str(tmp_path / "missing" / "a.html")]) == 2


def test_the_leaderboard_carries_the_audit_section(tiny_run):
    """The stored-reward part of the audit is a section of every task's board (bench/audit/section.py)."""
    from bench.reporting import document as leaderboard
    from bench.reporting.sections import sections_for

    doc = leaderboard.build(tiny_run / "synthetic" / "tiny")
    audit = doc["audit"]
    assert audit["split"] == "test" and audit["scored"]["pairs"] == sum(
        audit["methods"]["oracle"]["by_kind"][k]["pairs"] for k in audit["kinds"])
    tokens = audit["attribution"]
    assert tokens["attribution"] == "token weights (least squares, stored rewards)"
    # R*'s stored rewards regressed on token counts give R*'s own weights: the oracle's ranking is R*'s, exactly
    assert tokens["methods"]["oracle"]["precision_at_k"]["mean"] == 1.0
    assert tokens["methods"]["oracle"]["spearman"]["mean"] == pytest.approx(1.0)
    assert tokens["methods"]["bradley_terry"]["precision_at_k"]["mean"] >= 0.6
    sections = sections_for("synthetic")  # the audit is registered for every task
    md, page = "\n".join(sections.markdown(doc)), "\n".join(sections.html(doc))
    assert "## Audit: where each recovered reward fails and what it penalises" in md
    assert "| oracle | 1.000 [1.000, 1.000] / 1.000 [1.000, 1.000] |" in md  # bad→good, R* itself
    assert "<h2>Audit: where each recovered reward fails and what it penalises</h2>" in page
    assert "<h3>Agreement with R* by R* bin</h3>" in page


def test_profile_picks_the_run_group_even_with_overridden_settings(tmp_path):
    from bench.audit.view import group_of

    for name in ("default", "smoke-0a1b2c3d", "smoke-99887766", "smoke-big"):
        (tmp_path / "detox" / name).mkdir(parents=True)
        (tmp_path / "detox" / name / "selection.json").write_text("{}")
    (tmp_path / "detox" / "latest.json").write_text(json.dumps({"group": "smoke-0a1b2c3d"}))
    assert group_of(tmp_path, "detox", None).name == "smoke-0a1b2c3d"
    assert group_of(tmp_path, "detox", "default").name == "default"
    assert group_of(tmp_path, "detox", "smoke").name == "smoke-0a1b2c3d"  # the latest run of that profile
    assert group_of(tmp_path, "detox", "smoke-big").name == "smoke-big"
    with pytest.raises(BadInput, match="use one of: default, smoke-0a1b2c3d, smoke-99887766, smoke-big"):
        group_of(tmp_path, "detox", "pythia-70m-audit")


def test_the_readme_audit_commands_parse_as_written():
    """The README's "Audit an existing aligned model" block: each bench command is valid for the CLI, the profile
    exists and audits a model (its expert is set), and the inspect line reads the profile the run line wrote."""
    import re
    import shlex

    from bench.cli import build_parser

    readme = (REPO / "README.md").read_text()
    section = readme[readme.index("### Audit an existing aligned model in three commands"):]
    lines = re.search(r"```bash\n(.*?)```", section, re.S).group(1).strip().splitlines()
    assert len(lines) == 3
    run, inspect_ = (build_parser().parse_args(shlex.split(line)[1:]) for line in lines[:2])
    assert run.command == "run" and inspect_.command == "inspect" and inspect_.profile == run.profile
    assert run.rerlhf == "off" and any(s.startswith("task.expert_model=") for s in run.set)
    profile = registry.get_task("detox").profiles[run.profile]
    assert profile.settings["expert_model"]  # an audit profile: the expert is given, not trained
    assert str(inspect_.html) in lines[2]
