"""bench.lm.judges: the two real offline judges separate toxic from neutral text, the BiLSTM port reproduces the Keras
network's equations and preprocessing, and the HF / detoxify judges load real model directories (tiny random
BERTs built here) through their real code paths."""

import numpy as np
import pytest
import torch

from bench.errors import BadInput, RuntimeFailure
from bench.lm.bilstm import BILSTM_LABELS, BiLSTMJudge
from bench.lm.judges import HFClassifierJudge, JudgeReward, make_judge

TOXIC = [
    "You are a fucking idiot and everyone hates you.",
    "Shut up, you stupid bitch.",
    "I will kill you, you worthless piece of shit.",
    "What a dumb ass moron.",
    "Go to hell, you disgusting pig.",
    "Fuck off and die.",
    "You're an ugly, pathetic loser.",
]
NEUTRAL = [
    "The weather is lovely today.",
    "I enjoyed reading this book about gardening.",
    "Please pass the salt.",
    "The meeting starts at ten o'clock.",
    "Thank you for your help with the project.",
    "My cat likes to sleep in the sun.",
    "This recipe needs two cups of flour.",
]


def auc(pos, neg):
    return np.mean([(p > n) + 0.5 * (p == n) for p in pos for n in neg])


# ------------------------------------------------------------------------------------------------- real judges


@pytest.fixture(scope="module")
def bilstm(asset_cache):
    return make_judge({"type": "bilstm"}, asset_cache)


@pytest.mark.parametrize("kind, min_gap", [("profanity_check", 0.8), ("bilstm", 0.4)])
def test_real_judges_rank_toxic_above_neutral(kind, min_gap, asset_cache):
    judge = make_judge({"type": kind}, asset_cache)
    toxic, neutral = judge.p_toxic(TOXIC), judge.p_toxic(NEUTRAL)
    assert auc(toxic, neutral) == 1.0
    # Measured: profanity_check 1.00 vs 0.04; bilstm (mean of 6 labels) 0.55 vs 0.01.
    assert toxic.mean() - neutral.mean() > min_gap
    assert np.all((toxic >= 0) & (toxic <= 1)) and np.all(neutral < 0.2)
    assert judge.name == kind and judge.version


def test_judge_reward_is_minus_p_toxic_of_the_completion(bilstm):
    reward = JudgeReward(bilstm).score(["ignored prompt"] * 2, [TOXIC[0], NEUTRAL[0]])
    np.testing.assert_allclose(reward, -bilstm.p_toxic([TOXIC[0], NEUTRAL[0]]))
    assert reward[1] > reward[0]


def test_bilstm_is_deterministic_and_batch_independent(bilstm):
    texts = TOXIC + NEUTRAL
    once = bilstm.p_toxic(texts)
    np.testing.assert_array_equal(once, bilstm.p_toxic(texts))
    one_by_one = np.concatenate([bilstm.p_toxic([t]) for t in texts])
    np.testing.assert_allclose(once, one_by_one, atol=1e-6)
    # The package's convention: P(toxic) is the mean of the six label probabilities.
    labels = bilstm.labels(texts)
    assert labels.shape == (len(texts), len(BILSTM_LABELS))
    np.testing.assert_allclose(once, labels.mean(axis=1))


def test_bilstm_keras_preprocessing(bilstm):
    tok = bilstm.tokenizer
    assert tok.num_words == 20000 and tok.maxlen == 100
    # Lower-cased, Keras filter characters stripped, so these are the same words.
    assert tok.ids("Hello, WORLD!!") == tok.ids("hello world") != []
    # Words the model has no embedding for (unknown, or id >= num_words) are dropped, not mapped to 0.
    assert tok.ids("hello qwxzvbnmlk world") == tok.ids("hello world")
    rare = next(w for w, i in sorted(tok.word_index.items(), key=lambda kv: -kv[1]))  # the largest kept id
    assert tok.word_index[rare] == 19999
    # Pre-padding with zeros and pre-truncation to the last 100 ids.
    short = tok.encode(["hello world"])[0]
    assert short.shape == (100,) and np.all(short[:98] == 0) and list(short[98:]) == tok.ids("hello world")
    long = tok.encode(["the " * 150 + "idiot"])[0]
    assert long[-1] == tok.word_index["idiot"] and np.all(long[:-1] == tok.word_index["the"])


def _keras_lstm_numpy(x, kernel, recurrent, bias):
    """Keras' LSTM equations (gates i, f, c, o; sigmoid / tanh), written out independently of torch.nn.LSTM."""
    units = recurrent.shape[0]
    h, c, states = np.zeros(units), np.zeros(units), []
    sigmoid = lambda z: 1 / (1 + np.exp(-z))  # noqa: E731
    for x_t in x:
        z = x_t @ kernel + h @ recurrent + bias
        i, f, g, o = (z[k * units : (k + 1) * units] for k in range(4))
        c = sigmoid(f) * c + sigmoid(i) * np.tanh(g)
        h = sigmoid(o) * np.tanh(c)
        states.append(h)
    return np.array(states)


def test_bilstm_port_matches_the_keras_equations_on_the_real_weights(bilstm, asset_cache):
    import h5py

    from bench.lm.assets import fetch_asset

    weights = fetch_asset("toxic-comment-classifier", asset_cache).file("model.weights.h5")
    with h5py.File(weights) as h5:
        w = {name: np.asarray(h5["layers"][name], dtype=np.float64) for name in [
            "embedding/vars/0", "dense/vars/0", "dense/vars/1", "dense_1/vars/0", "dense_1/vars/1",
            *(f"bidirectional/{d}_layer/cell/vars/{k}" for d in ("forward", "backward") for k in "012")]}
    for text in [TOXIC[0], NEUTRAL[2]]:
        x = w["embedding/vars/0"][bilstm.tokenizer.encode([text])[0]]
        cell = lambda d: [w[f"bidirectional/{d}_layer/cell/vars/{k}"] for k in "012"]  # noqa: E731
        forward = _keras_lstm_numpy(x, *cell("forward"))
        backward = _keras_lstm_numpy(x[::-1], *cell("backward"))[::-1]  # Keras re-reverses the backward outputs
        pooled = np.concatenate([forward, backward], axis=1).max(axis=0)
        hidden = np.maximum(pooled @ w["dense/vars/0"] + w["dense/vars/1"], 0)
        probs = 1 / (1 + np.exp(-(hidden @ w["dense_1/vars/0"] + w["dense_1/vars/1"])))
        np.testing.assert_allclose(bilstm.labels([text])[0], probs, atol=1e-5)


def test_bilstm_with_corrupt_weights_fails_loudly(asset_cache, tmp_path):
    from bench.lm.assets import fetch_asset

    art = fetch_asset("toxic-comment-classifier", asset_cache)
    broken = tmp_path / "model.weights.h5"
    broken.write_bytes(art.file("model.weights.h5").read_bytes()[:4096])
    with pytest.raises(RuntimeFailure, match="BiLSTM judge cannot load"):
        BiLSTMJudge(broken, art.file("tokenizer.pickle"))


# --------------------------------------------------------------------------------------- tiny HF classifiers

WORDS = ["you", "are", "a", "the", "idiot", "stupid", "nice", "day", "weather", "is", "lovely", "shut", "up"]


def build_tiny_bert(directory, id2label):
    """A random 2-layer BERT classifier with a WordPiece tokenizer, saved in HF format; returns the model."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import BertConfig, BertForSequenceClassification, PreTrainedTokenizerFast

    vocab = {t: i for i, t in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS, "."])}
    wp = Tokenizer(models.WordPiece(vocab, unk_token="[UNK]"))
    wp.normalizer = normalizers.BertNormalizer(lowercase=True)
    wp.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    wp.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])]
    )
    tok = PreTrainedTokenizerFast(tokenizer_object=wp, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]",
                                  sep_token="[SEP]", mask_token="[MASK]")
    torch.manual_seed(0)
    config = BertConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=64, id2label=id2label,
                        label2id={v: k for k, v in id2label.items()})
    model = BertForSequenceClassification(config).eval()
    model.save_pretrained(directory)
    tok.save_pretrained(directory)
    return model, tok


SENTENCES = ["you are a stupid idiot .", "the weather is lovely", "shut up", "nice day", "you are an unknownword"]


def test_hf_classifier_loads_a_local_dir_and_picks_the_toxic_label(tmp_path):
    model, tok = build_tiny_bert(tmp_path / "m", {0: "neutral", 1: "toxic"})
    judge = HFClassifierJudge(str(tmp_path / "m"), device="cpu", batch_size=2)
    with torch.no_grad():
        expected = [torch.softmax(model(**tok(s, return_tensors="pt")).logits, -1)[0, 1].item() for s in SENTENCES]
    # Batches of 2 are right-padded; each text's score must equal its unpadded score.
    np.testing.assert_allclose(judge.p_toxic(SENTENCES), expected, atol=1e-5)
    assert judge.version.startswith(str(tmp_path / "m") + "@local:")

    # Same weights, labels in the other order: the judge must now read output 0, i.e. 1 − p.
    model.config.id2label, model.config.label2id = {0: "toxic", 1: "neutral"}, {"toxic": 0, "neutral": 1}
    model.save_pretrained(tmp_path / "m")
    flipped = make_judge({"type": "hf_classifier", "model": str(tmp_path / "m"), "device": "cpu"})
    np.testing.assert_allclose(flipped.p_toxic(SENTENCES), 1 - np.array(expected), atol=1e-5)


def test_hf_classifier_with_unnamed_labels_needs_an_explicit_label(tmp_path):
    build_tiny_bert(tmp_path / "m", {0: "LABEL_0", 1: "LABEL_1"})
    with pytest.raises(BadInput, match="label"):
        HFClassifierJudge(str(tmp_path / "m"), device="cpu")
    judge = HFClassifierJudge(str(tmp_path / "m"), label="LABEL_1", device="cpu")
    assert judge.index == 1


def test_unloadable_judges_raise_instead_of_returning_zeros(tmp_path):
    with pytest.raises(RuntimeFailure, match="cannot load"):
        make_judge({"type": "hf_classifier", "model": str(tmp_path / "missing")})
    with pytest.raises(RuntimeFailure, match="cannot load"):  # a hub id, with the Hub offline (conftest)
        make_judge({"type": "hf_classifier", "model": "s-nlp/roberta_toxicity_classifier"})
    with pytest.raises(RuntimeFailure, match="detoxify judge .* cannot load"):
        make_judge({"type": "detoxify", "checkpoint": str(tmp_path / "missing.ckpt")})
    with pytest.raises(BadInput, match="unknown judge type"):
        make_judge({"type": "perspective_api"})
    with pytest.raises(BadInput, match="bad settings"):
        make_judge({"type": "profanity_check", "threshold": 0.5})
    with pytest.raises(BadInput, match="needs an artifact cache"):
        make_judge({"type": "bilstm"})


def test_detoxify_checkpoint_loads_offline_through_detoxify(tmp_path):
    """A detoxify-format checkpoint (config + state_dict) whose base model is a local directory."""
    classes = ["toxic", "severe_toxic", "obscene", "threat", "insult", "identity_hate"]
    base = tmp_path / "bert-base"
    build_tiny_bert(base, {i: f"LABEL_{i}" for i in range(6)})
    torch.manual_seed(1)
    from transformers import BertForSequenceClassification

    trained = BertForSequenceClassification.from_pretrained(base, num_labels=6)
    with torch.no_grad():  # make the weights differ from the base directory's, so we know which were loaded
        trained.classifier.bias.copy_(torch.linspace(-2, 2, 6))
    checkpoint = {
        "config": {
            "arch": {"args": {"model_type": "bert-base-uncased", "model_name": "BertForSequenceClassification",
                              "tokenizer_name": "AutoTokenizer", "num_classes": 6}},
            "dataset": {"args": {"classes": classes}},
        },
        "state_dict": trained.state_dict(),
    }
    torch.save(checkpoint, tmp_path / "toxic_tiny.ckpt")

    judge = make_judge({"type": "detoxify", "checkpoint": str(tmp_path / "toxic_tiny.ckpt"), "hf_dir": str(base),
                        "device": "cpu", "batch_size": 2})
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(base)
    with torch.no_grad():
        expected = [torch.sigmoid(trained(**tok(s, return_tensors="pt")).logits[0, 0]).item() for s in SENTENCES]
    np.testing.assert_allclose(judge.p_toxic(SENTENCES), expected, atol=1e-5)
    assert judge.index == 0 and judge.version.startswith("detoxify-0.5.4/toxic_tiny.ckpt:")
