"""The three ambiguity spreads (docs/ambiguity.md): a known-answer world, the resample's place in trial ids, and
`bench ambiguity` end to end."""

import json

import numpy as np
import pytest

from bench.data import Completions, Demonstrations, Split, TaskData
from bench.execution.fit_trial import TrialSpec, bootstrap_prompts, run_trial
from bench.scoring.ambiguity import AmbiguityReport, evaluation, score_method, spread, validation_loss
from bench.scoring.bootstrap import Bootstrap, Items, prompt_weights
from bench.storage.artifacts import ArtifactCache, atomic_write_json

VOCAB = ["a", "b", "u"]  # R* = count(a) − count(b) + count(u); u never differs within a demonstration pair
A, B, U = 0, 1, 2
THETA = np.array([1.0, -1.0, 1.0])


def _text(counts: np.ndarray, rng) -> str:
    tokens = [tok for tok, n in zip(VOCAB, counts) for _ in range(int(n))]
    return " ".join(rng.permutation(tokens))


def _pair_split(n_prompts: int, offset: int, rng) -> Split:
    """Two pairs per prompt; y⁺ and y⁻ share their count of u, so no demonstration says anything about u's weight.
    The preference follows R* through a Bradley–Terry draw."""
    ids, prompts, texts, pairs = [], [], [], []
    for p in range(n_prompts):
        for _ in range(2):
            u = rng.integers(0, 4)
            first, second = rng.integers(0, 4, len(VOCAB)), rng.integers(0, 4, len(VOCAB))
            first[U] = second[U] = u
            if rng.random() > 1 / (1 + np.exp(-THETA @ (first - second))):
                first, second = second, first
            pairs.append((len(texts), len(texts) + 1))
            for counts in (first, second):
                ids.append(p)
                prompts.append(f"prompt-{offset + p}")
                texts.append(_text(counts, rng))
    return Split(Completions(ids, prompts, texts, ["expert", "base"] * (len(texts) // 2)), pairs)


def _test_split(n_prompts: int, rng) -> tuple[Split, np.ndarray]:
    """Four completions per prompt with independent counts of every token."""
    ids, prompts, texts, reward = [], [], [], []
    for p in range(n_prompts):
        for _ in range(4):
            counts = rng.integers(0, 4, len(VOCAB))
            ids.append(p)
            prompts.append(f"test-{p}")
            texts.append(_text(counts, rng))
            reward.append(float(THETA @ counts))
    pairs = [(i, i + 1) if reward[i] >= reward[i + 1] else (i + 1, i) for i in range(0, len(texts), 2)]
    return Split(Completions(ids, prompts, texts, ["base"] * len(texts)), pairs), np.array(reward)


@pytest.fixture(scope="module")
def known_world(tmp_path_factory) -> TaskData:
    """A world whose demonstrations identify the weights of `a` and `b` and say nothing about that of `u`."""
    rng = np.random.default_rng(7)
    splits = {"train": _pair_split(250, 0, rng), "val": _pair_split(60, 1000, rng)}
    splits["test"], test_reward = _test_split(60, rng)
    val_reward = [float(THETA @ _counts(t)) for t in splits["val"].items.texts]
    demos = Demonstrations(splits, {"type": "bag_of_tokens", "vocab": VOCAB})
    cache = ArtifactCache(tmp_path_factory.mktemp("cache"))
    inputs = {"task": "known-answer"}
    d = cache.get_or_build("demos", inputs, lambda p: atomic_write_json(p / "demos.json", demos.to_json()))
    truth = {"val": {"reward": val_reward, "label": [int(r < 3) for r in val_reward]},
             "test": {"reward": test_reward.tolist(), "label": (test_reward < 3).astype(int).tolist()}}
    t = cache.get_or_build("truth", inputs, lambda p: atomic_write_json(p / "truth.json", truth))
    return TaskData("known-answer", "test", str(cache.root), d.key, t.key)


def _counts(text: str) -> np.ndarray:
    return np.array([text.split().count(tok) for tok in VOCAB], dtype=float)


def test_known_answer_unidentified_weight_spreads_identified_does_not(known_world, tmp_path):
    """Bradley–Terry with a linear head over token counts, fitted over the identifiability grid of `bench
    ambiguity` (seeds 0-7 on the demonstrations, resamples 1-3 at seed 0, each at weight_decay 0 and 0.1).
    Its weights are read back from the stored test rewards (a linear head over counts: r = X·w exactly). No
    gradient ever reaches u's weight, so it keeps its seed's initial value, shrunk by the decay; a's and b's are
    fitted."""
    data = known_world
    config = {"temperature": 1.0, "lr": 0.2, "epochs": 40, "batch_size": 100, "weight_decay": 0.0}
    grid = [(seed, 0) for seed in range(8)] + [(0, r) for r in range(1, 4)]
    fits = [run_trial(TrialSpec("bradley_terry", config | {"weight_decay": wd}, seed, data.ref, r),
                      tmp_path / f"{wd}-{seed}-{r}.json") for wd in (0.0, 0.1) for seed, r in grid]
    assert all(f["status"] == "ok" for f in fits)
    test = data.demos().splits["test"].items
    X = np.stack([_counts(t) for t in test.texts])
    weights = np.array([np.linalg.lstsq(X, np.array(f["rewards"]["test"]), rcond=None)[0] for f in fits])
    assert np.all(weights[:, A] > 0.5) and np.all(weights[:, B] < -0.5)  # learnt (R*: ±1 per count)
    # A reward is identified up to a positive scale (early stopping leaves a's weight anywhere in ≈ 1.0-1.5), so
    # each fit's weights are taken as a unit vector; the spread of a weight is its standard deviation over fits.
    unit = weights / np.linalg.norm(weights, axis=1, keepdims=True)
    sd = unit.std(axis=0)
    # Thresholds: u's weight is its initial draw, U(−1/√3, 1/√3) (sd ≈ 0.33), shrunk towards 0 by the decay
    # (weight_decay 0.1), so across the 22 fits it spreads by a tenth of the norm or more; a's and b's shares move
    # only as much as u's weight takes from the norm and resampling noise does. Measured: u 0.14, a 0.02, b 0.02.
    assert sd[U] > 0.08, sd
    assert max(sd[A], sd[B]) < 0.04, sd
    assert sd[U] > 3 * max(sd[A], sd[B]), sd

    # The same in the board's distance: along u the recovered rewards disagree, along a and b they agree.
    for feature, low, high in ((U, 0.3, 2.0), (A, 0.0, 0.01), (B, 0.0, 0.01)):
        only = np.zeros_like(X)
        only[:, feature] = X[:, feature]
        items = Items(prompt=np.array(test.prompt_ids), pairs=np.zeros((0, 2), dtype=int), truth=only[:, feature],
                      bad=np.zeros(len(X), dtype=bool))
        boot = Bootstrap(items, prompt_weights(items.n_prompts, 50, np.random.default_rng(0)))
        value = spread(boot, [only @ w for w in weights])[0]
        assert low <= value <= high, (VOCAB[feature], value)

    # And through the scorer of `bench ambiguity`: every fit explains the validation pairs about equally well
    # (u never matters there), so the identifiability set holds fits of both strengths.
    boot, val = evaluation(data, "test", 200, 0)
    scored = score_method(boot, val, "test", fits[:8], fits[8:11], fits, "weight_decay")
    ident = scored["identifiability"]
    assert scored["grid"] == [0.0, 0.1] and ident["of_fits"] == 22
    assert {f["weight_decay"] for f in scored["fits"] if f["within"]} == {0.0, 0.1}
    assert ident["ci"][0] <= ident["mean"] <= ident["ci"][1]


def test_validation_loss_is_scale_free_and_orders_fits():
    rng = np.random.default_rng(0)
    prompt = np.repeat(np.arange(100), 4)
    truth = rng.normal(size=400)
    pairs = np.array([(i, i + 1) if truth[i] > truth[i + 1] else (i + 1, i) for i in range(0, 400, 2)])
    good, se = validation_loss(truth, pairs, prompt)
    assert validation_loss(10 * truth, pairs, prompt)[0] == pytest.approx(good, abs=1e-6)
    assert good < validation_loss(truth + rng.normal(scale=2, size=400), pairs, prompt)[0]
    assert validation_loss(np.zeros(400), pairs, prompt)[0] == pytest.approx(np.log(2))
    assert 0 < se < 0.1


def test_resample_enters_the_trial_id_only_when_set(known_world):
    ref = known_world.ref
    plain = TrialSpec("bradley_terry", {"lr": 0.01}, 0, ref)
    assert TrialSpec("bradley_terry", {"lr": 0.01}, 0, ref, 0).trial_id == plain.trial_id
    assert "resample" not in plain.to_json()
    ids = {TrialSpec("bradley_terry", {"lr": 0.01}, 0, ref, r).trial_id for r in (1, 2)}
    assert len(ids) == 2 and plain.trial_id not in ids
    again = TrialSpec.from_json(TrialSpec("bradley_terry", {"lr": 0.01}, 0, ref, 2).to_json())
    assert again.resample == 2 and again.trial_id in ids


def test_bootstrap_prompts_draws_whole_prompts(known_world):
    train = known_world.demos().splits["train"].preference_pairs
    drawn = bootstrap_prompts(train, 1)
    assert len(set(train.prompts)) == 250 and len(drawn) == len(train)  # two pairs per prompt
    for p in set(drawn.prompts):  # each drawn prompt brings all its pairs, a whole number of times
        assert drawn.prompts.count(p) % train.prompts.count(p) == 0
    assert len(set(drawn.prompts)) < 200  # with replacement: about 63% distinct
    assert bootstrap_prompts(train, 1) == drawn and bootstrap_prompts(train, 2) != drawn


@pytest.mark.slow
def test_bench_ambiguity_end_to_end(tmp_path, capsys):
    """A stored run, then `bench ambiguity`: its seeds spread is the board's seed ambiguity, the board gains the
    Ambiguity table, and a rerun runs nothing."""
    from bench.cli import main

    runs = str(tmp_path / "runs")
    common = ["--task", "synthetic", "--profile", "tiny", "--runs-dir", runs]
    assert main(["ambiguity", *common]) == 2  # no stored run yet
    assert "bench run --task synthetic --profile tiny" in capsys.readouterr().err
    assert main(["run", *common, "--methods", "bradley_terry,random", "--seeds", "2", "--bootstrap", "200"]) == 0
    assert main(["ambiguity", *common, "--methods", "max_margin"]) == 2
    assert main(["ambiguity", *common, "--resamples", "1"]) == 2
    capsys.readouterr()
    assert main(["ambiguity", *common, "--resamples", "2", "--seeds", "2"]) == 0
    assert "8 ambiguity fits: 2 reused, 6 to run" in capsys.readouterr().out  # wd {0, 0.1} × (2 seeds + 2 resamples)
    group = tmp_path / "runs/synthetic/tiny"
    report = AmbiguityReport.read(group)
    assert list(report.methods) == ["bradley_terry"] and len(list((group / "ambiguity").glob("*.json"))) == 6
    board = json.loads((tmp_path / "runs/leaderboards/synthetic-tiny.json").read_text())
    bt = next(r for r in board["rows"] if r["method"] == "bradley_terry")
    spreads = board["ambiguity"]["methods"]["bradley_terry"]
    assert {k: spreads["seeds"][k] for k in ("mean", "ci")} == bt["metrics"]["seed_ambiguity"]
    assert spreads["data"]["n_fits"] == 2 and spreads["identifiability"]["of_fits"] == 8
    assert "## Ambiguity" in (tmp_path / "runs/leaderboards/synthetic-tiny.md").read_text()
    assert "<h2>Ambiguity</h2>" in (tmp_path / "runs/leaderboards/synthetic-tiny.html").read_text()
    assert main(["ambiguity", *common, "--resamples", "2", "--seeds", "2"]) == 0
    assert "8 ambiguity fits: 8 reused, 0 to run" in capsys.readouterr().out
