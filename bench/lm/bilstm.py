"""The Jigsaw BiLSTM of the `toxic-comment-classifier` package, run in PyTorch without TensorFlow: the network
rebuilt layer by layer, its Keras weights read from the package's HDF5 file, and the Keras tokenizer unpickled
with stubs (never executing Keras code) and reproduced exactly; scores equal the TensorFlow path."""

from __future__ import annotations

import hashlib
import pickle
from pathlib import Path

import numpy as np
import torch
from torch import nn

from bench.errors import BadInput, RuntimeFailure
from bench.lm.assets import fetch_asset
from bench.lm.policies import pick_device
from bench.storage.artifacts import ArtifactCache, file_sha256

BILSTM_LABELS = ("toxic", "severe_toxic", "obscene", "threat", "insult", "identity_hate")
BILSTM_MAXLEN = 100  # the package pads / truncates every text to 100 token ids


class BiLSTMNet(nn.Module):
    """Embedding(20000, 50) → BiLSTM(50 per direction) → max over time → Dense 50 + ReLU → Dense 6 + sigmoid.

    The same network as toxic-comment-classifier's Keras model (its dropout layers are inactive at inference)."""

    def __init__(self, vocab: int = 20000, dim: int = 50, units: int = 50, labels: int = 6):
        super().__init__()
        self.embedding = nn.Embedding(vocab, dim)
        self.lstm = nn.LSTM(dim, units, batch_first=True, bidirectional=True)
        self.dense = nn.Linear(2 * units, 50)
        self.out = nn.Linear(50, labels)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        states, _ = self.lstm(self.embedding(ids))  # (batch, time, 2·units), forward and backward concatenated
        pooled = states.max(dim=1).values
        return torch.sigmoid(self.out(torch.relu(self.dense(pooled))))


def load_keras_bilstm_weights(net: BiLSTMNet, weights_h5: Path) -> None:
    """Copy the Keras 3 `model.weights.h5` into `net`.

    Keras stores kernels as (in, out) where torch wants (out, in), so they are transposed. Keras and torch order
    the LSTM gates the same way (input, forget, cell, output), but Keras has one bias per gate where torch adds
    `bias_ih + bias_hh`: the Keras bias goes into `bias_ih` and `bias_hh` is zero."""
    import h5py  # only to read the Keras weights once

    def t(array) -> torch.Tensor:
        return torch.from_numpy(np.asarray(array, dtype=np.float32))

    with h5py.File(weights_h5, "r") as h5:
        layers = h5["layers"]
        state = {"embedding.weight": t(layers["embedding/vars/0"])}
        for keras_name, suffix in (("forward_layer", ""), ("backward_layer", "_reverse")):
            cell = layers[f"bidirectional/{keras_name}/cell/vars"]
            state[f"lstm.weight_ih_l0{suffix}"] = t(cell["0"]).T.contiguous()
            state[f"lstm.weight_hh_l0{suffix}"] = t(cell["1"]).T.contiguous()
            state[f"lstm.bias_ih_l0{suffix}"] = t(cell["2"])
            state[f"lstm.bias_hh_l0{suffix}"] = torch.zeros_like(t(cell["2"]))
        for keras_name, torch_name in (("dense", "dense"), ("dense_1", "out")):
            state[f"{torch_name}.weight"] = t(layers[f"{keras_name}/vars/0"]).T.contiguous()
            state[f"{torch_name}.bias"] = t(layers[f"{keras_name}/vars/1"])
    net.load_state_dict(state, strict=True)


class _KerasStub:
    """Stands in for any `keras.*` class while unpickling, so the tokenizer loads without TensorFlow/Keras."""

    def __setstate__(self, state):
        self.__dict__.update(state)


# Everything else a Keras Tokenizer pickle refers to (its word counts and document counts). Any other global, such as
# os.system in a pickle crafted to run code when loaded, is refused, so unpickling can only build these containers.
_SAFE_GLOBALS = {("builtins", "int"), ("collections", "OrderedDict"), ("collections", "defaultdict")}


class _NoKerasUnpickler(pickle.Unpickler):
    """Keras classes become inert stubs; only `_SAFE_GLOBALS` load besides; any other global is an UnpicklingError."""

    def find_class(self, module, name):
        if module == "keras" or module.startswith("keras."):
            return _KerasStub
        if (module, name) in _SAFE_GLOBALS:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"global {module}.{name} is not allowed in a Keras tokenizer pickle")


class KerasWordTokenizer:
    """The preprocessing of a pickled `keras.preprocessing.text.Tokenizer` plus `pad_sequences(maxlen)`:
    lower-case, replace each filter character by the split character, split, map words to ids, drop unknown words
    and ids ≥ num_words, then keep the last `maxlen` ids and left-pad with 0 (Keras' 'pre' defaults)."""

    def __init__(self, pickle_path: Path, maxlen: int = BILSTM_MAXLEN):
        with open(pickle_path, "rb") as fh:
            try:
                keras_tok = _NoKerasUnpickler(fh).load()
            except pickle.UnpicklingError as exc:
                raise RuntimeFailure(f"the tokenizer pickle {pickle_path} is refused: {exc}, so loading it could run "
                                     f"code; rebuild the 'toxic-comment-classifier' asset (delete it from the cache)."
                                     ) from None
        state = keras_tok.__dict__
        if state.get("char_level") or state.get("analyzer") is not None:
            raise RuntimeFailure(f"the tokenizer in {pickle_path} is not a word-level Keras tokenizer.")
        self.num_words = state["num_words"]
        self.lower = state["lower"]
        self.split = state["split"]
        self.oov_index = state["word_index"].get(state["oov_token"]) if state.get("oov_token") else None
        self.table = str.maketrans({c: self.split for c in state["filters"]})
        # Only the ids the model can see; keeps about 20k of the pickle's 210k words in memory.
        self.word_index = {w: i for w, i in state["word_index"].items() if self.num_words is None or i < self.num_words}
        self.maxlen = maxlen

    def ids(self, text: str) -> list[int]:
        if self.lower:
            text = text.lower()
        out = []
        for word in text.translate(self.table).split(self.split):
            if not word:
                continue
            i = self.word_index.get(word)
            if i is not None:
                out.append(i)
            elif self.oov_index is not None:
                out.append(self.oov_index)
        return out

    def encode(self, texts: list[str]) -> np.ndarray:
        batch = np.zeros((len(texts), self.maxlen), dtype=np.int64)
        for row, text in enumerate(texts):
            ids = self.ids(text)[-self.maxlen :]
            if ids:
                batch[row, self.maxlen - len(ids) :] = ids
        return batch


class BiLSTMJudge:
    """toxic-comment-classifier's BiLSTM in PyTorch. P(toxic) is the mean of its 6 Jigsaw label probabilities,
    the package's own convention (`ToxicCommentClassifier.predict`); `reduce="max"` or `"toxic"` are alternatives
    (`labels()` gives all six)."""

    name = "bilstm"

    def __init__(self, weights_h5: Path, tokenizer_pickle: Path, reduce: str = "mean", device: str | None = "cpu",
                 batch_size: int = 256):
        if reduce not in ("mean", "max", "toxic"):
            raise BadInput(f"the bilstm judge's reduce must be 'mean', 'max' or 'toxic', not {reduce!r}.")
        try:
            self.tokenizer = KerasWordTokenizer(Path(tokenizer_pickle))
            self.net = BiLSTMNet()
            load_keras_bilstm_weights(self.net, Path(weights_h5))
        except RuntimeFailure:
            raise
        except Exception as exc:
            raise RuntimeFailure(
                f"the BiLSTM judge cannot load from {weights_h5} and {tokenizer_pickle} ({type(exc).__name__}: {exc}); "
                f"rebuild the 'toxic-comment-classifier' asset (delete it from the cache)."
            ) from exc
        self.device = pick_device(device)
        self.net.to(self.device).eval()
        self.reduce = reduce
        self.batch_size = batch_size
        digest = hashlib.sha256((file_sha256(Path(weights_h5)) + file_sha256(Path(tokenizer_pickle))).encode())
        self.version = f"bilstm-weights:{digest.hexdigest()[:12]}/{reduce}"  # content hash: the files name no version

    @classmethod
    def from_asset(cls, cache: ArtifactCache, **kwargs) -> "BiLSTMJudge":
        art = fetch_asset("toxic-comment-classifier", cache)
        return cls(art.file("model.weights.h5"), art.file("tokenizer.pickle"), **kwargs)

    @torch.no_grad()
    def labels(self, texts: list[str]) -> np.ndarray:
        """(n, 6) probabilities of BILSTM_LABELS."""
        out = np.zeros((len(texts), len(BILSTM_LABELS)))
        for start in range(0, len(texts), self.batch_size):
            ids = torch.from_numpy(self.tokenizer.encode(texts[start : start + self.batch_size])).to(self.device)
            out[start : start + len(ids)] = self.net(ids).double().cpu().numpy()
        return out

    def p_toxic(self, texts: list[str]) -> np.ndarray:
        probs = self.labels(list(texts))
        if self.reduce == "mean":
            return probs.mean(axis=1)
        if self.reduce == "max":
            return probs.max(axis=1)
        return probs[:, 0]


# ------------------------------------------------------------------------------------------------ HF classifier
