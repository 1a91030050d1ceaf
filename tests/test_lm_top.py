"""The trainable-layer reward-model class (head lm_top<k>, bench/kit/lm_top.py) on a tiny random GPT-2: with k = 0
it is the linear head over frozen features; with k = 1 the top block trains with the head; a fit is reproducible;
the lower-layer states are cached on disk and reused; a task without a language model refuses the class."""

import numpy as np
import pytest
import torch

from bench import config as C
from bench import registry
from bench.cli import check_head, main
from bench.data import PreferencePairs
from bench.errors import BadInput
from bench.execution.fit_trial import seed_everything
from bench.kit.interface import FitContext
from bench.kit.lm_top import TopLayersEncoder, upgrade
from bench.kit.losses import bradley_terry_loss
from bench.kit.reward_models import BagOfTokens, RewardModel, make_encoder, make_head
from bench.kit.training import encode_pairs, margins

PROMPTS = ["the cat sat on", "a quick brown fox", "please pass the", "you are a", "the weather today is",
           "we walked along the", "the dog sat on", "a lazy dog"]
GOOD = ["kind and thoughtful person", "sunny with a light breeze", "the salt to me", "books by the river"]
BAD = ["mat and the log", "fox jumps over", "pepper and the dog", "talked about the cat"]


def toy_pairs(offset: int) -> PreferencePairs:
    """Pairs whose chosen completion is always from GOOD, the rejected one from BAD (each prompt's own draw)."""
    prompts, chosen, rejected = [], [], []
    for i, p in enumerate(PROMPTS * 2):
        prompts.append(p)
        chosen.append(GOOD[(i + offset) % len(GOOD)])
        rejected.append(BAD[(i * 3 + offset) % len(BAD)])
    return PreferencePairs(prompts, chosen, rejected)


def fit(spec: dict, head: str, seed: int = 0, method: str = "bradley_terry", **settings):
    """As a fit trial does (bench/execution/fit_trial.py): seed, build the model, fit; returns the fitted model.
    A head the CLI does not offer (lm_top0) is set after validation, which checks the classes a run may use."""
    seed_everything(seed)
    encoder = make_encoder(spec)
    model = RewardModel(encoder, make_head("linear", encoder.dim))
    cls = registry.methods()[method]
    epochs = {"epochs": 20} if "epochs" in {f.name for f in C.fields(cls.Config)} else {}
    cfg = C.build(cls.Config, {**epochs, "lr": 0.05, **settings}, owner=method)
    cfg.head = head
    ctx = FitContext(seed=seed, device=torch.device("cpu"), val=toy_pairs(1), report=lambda **m: None)
    return cls().fit(toy_pairs(0), model, cfg, ctx)


@pytest.fixture(scope="module")
def spec(tiny_lm_dir):
    return {"type": "frozen_lm", "model": str(tiny_lm_dir), "dim": 64, "max_length": 64}


def train_loss(model) -> float:
    with torch.no_grad():
        d = margins(model, encode_pairs(model, toy_pairs(0), torch.device("cpu")))
        return float(bradley_terry_loss(d, 0.1).mean())


def scores(model) -> np.ndarray:
    texts = toy_pairs(2)
    return model.score(texts.prompts + texts.prompts, texts.chosen + texts.rejected)


def test_zero_top_layers_is_the_linear_head_over_frozen_features(spec):
    linear, top0 = fit(spec, "linear"), fit(spec, "lm_top0")
    assert isinstance(top0.encoder, TopLayersEncoder) and top0.encoder.top is None
    a, b = scores(linear), scores(top0)
    # the same steps from the same head: features agree to float rounding (pooled per text vs in a padded batch)
    assert np.abs(a - b).max() < 1e-4 * np.abs(a).max()
    assert torch.allclose(linear.head.weight, top0.head.weight, atol=1e-5)


def test_top_block_trains_with_the_head_and_fits_the_pairs_better(spec):
    linear, top1 = fit(spec, "linear"), fit(spec, "lm_top1")
    untrained = upgrade(make_encoder(spec), 1)
    pairs = zip(top1.encoder.top.parameters(), untrained.top.parameters())
    moved = [float((a - b).detach().abs().max()) for a, b in pairs if a.requires_grad]
    assert moved and min(moved) > 0  # every trainable tensor of the top block (and the final norm) moved
    assert not top1.encoder.top.get_input_embeddings().weight.requires_grad
    assert train_loss(top1) < train_loss(linear)


def test_same_seed_same_scores_and_states_cached_on_disk(spec, tmp_path):
    table = dict(spec, features_dir=str(tmp_path / "cache" / "lm_features" / "k0"))
    first = fit(table, "lm_top1", seed=3)
    stored = list((tmp_path / "cache" / "lm_top_states").glob("*/states.npy"))
    assert len(stored) == 2  # the training pairs' texts and the validation pairs' texts, one artifact each
    second = fit(table, "lm_top1", seed=3)  # reads the stored states
    assert np.array_equal(scores(first), scores(second))
    assert not np.array_equal(scores(first), scores(fit(table, "lm_top1", seed=4)))


@pytest.mark.parametrize("method", ["max_margin", "failure_aware"])
def test_every_method_with_a_head_trains_the_top_block(spec, method):
    model = fit(spec, "lm_top1", method=method, **({"warmup_epochs": 5, "stage_epochs": 3}
                                                    if method == "failure_aware" else {}))
    assert isinstance(model.encoder, TopLayersEncoder)
    if method == "max_margin":  # the norm bound holds the linear head, not the blocks
        assert float(model.head.weight.detach().norm()) <= 10.0 + 1e-4
    assert np.all(np.isfinite(scores(model)))


def test_a_task_without_a_language_model_refuses_the_class(capsys):
    with pytest.raises(BadInput, match="use --head linear or --head mlp"):
        upgrade(BagOfTokens(["a", "b"]), 1)
    with pytest.raises(BadInput, match="use --head linear or --head mlp"):
        check_head("synthetic", "lm_top2")
    check_head("detox", "lm_top2")
    assert main(["run", "--task", "synthetic", "--head", "lm_top1"]) == 2


def test_scoring_new_texts_keeps_no_states(spec):
    model = fit(spec, "lm_top1")
    held = len(model.encoder.states)
    texts = PreferencePairs(["an unseen prompt", "another one"], ["with a new ending", "and more"], ["x", "y"])
    transient = model.score(texts.prompts, texts.chosen)
    assert len(model.encoder.states) == held  # a policy's samples scored during re-alignment are not kept
    with torch.no_grad():
        stored = model(model.encoder.encode(texts.prompts, texts.chosen)).numpy()
    assert np.abs(transient - stored).max() < 1e-5 * max(1.0, np.abs(stored).max())
