"""Reward models r̂(x, y) = head(encoder(x, y)).

An *encoder* turns (prompt, completion) texts into a feature tensor. Frozen encoders (bag of tokens; a frozen LM
backbone, whose features are computed once and cached) let a head train in seconds on CPU; an encoder that is an
`nn.Module` with trainable parameters (e.g. an LM's last k layers) trains together with the head, on GPUs.
Encoders are rebuilt in trial workers from a JSON spec, so each type registers a constructor here.
"""

from __future__ import annotations

import functools
import hashlib
import json
from pathlib import Path
from typing import Callable, Protocol

import numpy as np
import torch
from torch import nn

ENCODERS: dict[str, Callable[[dict], "Encoder"]] = {}


class Encoder(Protocol):
    dim: int

    def encode(self, prompts: list[str], completions: list[str]) -> torch.Tensor: ...


def register_encoder(kind: str):
    def decorate(factory):
        ENCODERS[kind] = factory
        return factory

    return decorate


def make_encoder(spec: dict) -> Encoder:
    if spec["type"] not in ENCODERS:
        raise KeyError(f"no encoder of type {spec['type']!r}; known: {sorted(ENCODERS)}")
    return ENCODERS[spec["type"]](spec)


class BagOfTokens:
    """Counts of each vocabulary token in the completion (whitespace tokens; unknown tokens are ignored)."""

    def __init__(self, vocab: list[str]):
        self.vocab = list(vocab)
        self.index = {tok: i for i, tok in enumerate(self.vocab)}
        self.dim = len(self.vocab)

    def encode(self, prompts: list[str], completions: list[str]) -> torch.Tensor:
        rows, cols = [], []
        for row, text in enumerate(completions):
            for tok in text.split():
                col = self.index.get(tok)
                if col is not None:
                    rows.append(row)
                    cols.append(col)
        counts = np.zeros((len(completions), self.dim), dtype=np.float32)
        np.add.at(counts, (np.array(rows, dtype=int), np.array(cols, dtype=int)), 1.0)
        return torch.from_numpy(counts)


@register_encoder("bag_of_tokens")
def _bag_of_tokens(spec: dict) -> BagOfTokens:
    return BagOfTokens(spec["vocab"])


TOP_PREFIX = "lm_top"  # head "lm_top<k>": the backbone's last k blocks train with a linear head (bench/kit/lm_top.py)
TOP_HEADS = ["lm_top1", "lm_top2"]  # the trainable-layer classes a run may ask for


def top_layers(kind: str) -> int | None:
    """k of a head "lm_top<k>", None for a head over fixed features ("linear", "mlp")."""
    rest = kind[len(TOP_PREFIX):] if kind.startswith(TOP_PREFIX) else ""
    return int(rest) if rest.isdigit() else None


class TopHead(nn.Linear):
    """The linear head of the trainable-layer class: a bias-free linear map that also names its k, so that the
    shared trainer (bench/kit/training.py `encode_pairs`) gives the reward model the encoder whose k top blocks
    train with it."""

    def __init__(self, dim: int, top_layers: int):
        super().__init__(dim, 1, bias=False)
        self.top_layers = top_layers


def make_head(kind: str, dim: int, hidden: int = 64) -> nn.Module:
    if kind == "linear":
        # No bias: a constant offset never changes a preference, and without it the norm bound means something.
        return nn.Linear(dim, 1, bias=False)
    if kind == "mlp":
        return nn.Sequential(nn.Linear(dim, hidden), nn.ReLU(), nn.Linear(hidden, 1, bias=False))
    if top_layers(kind) is not None:
        return TopHead(dim, top_layers(kind))
    raise ValueError(f"unknown head {kind!r}")


class RewardModel(nn.Module):
    """A head over encoder features; `forward` takes what `features` returns, `score` takes texts. An encoder that
    is an `nn.Module` (trainable layers) is a submodule: `features` gives its inputs, `forward` runs it."""

    def __init__(self, encoder: Encoder, head: nn.Module):
        super().__init__()
        self.encoder = encoder
        self.head = head

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        if isinstance(self.encoder, nn.Module):
            features = self.encoder(features)
        return self.head(features).squeeze(-1)

    def features(self, prompts: list[str], completions: list[str]) -> torch.Tensor:
        return self.encoder.encode(prompts, completions)

    @torch.no_grad()
    def score(self, prompts: list[str], completions: list[str]) -> np.ndarray:
        if hasattr(self.encoder, "features_of"):  # trainable layers: features of any text, without keeping its inputs
            return self.head(self.encoder.features_of(prompts, completions)).squeeze(-1).double().cpu().numpy()
        device = next(self.head.parameters()).device
        return self(self.features(prompts, completions).to(device)).double().cpu().numpy()


class SumOfRewards(nn.Module):
    """r̂ = r̂_base + α · r̂_correction over shared features (the dual-path model of failure-aware IRL)."""

    def __init__(self, base: nn.Module, correction: nn.Module, alpha: float):
        super().__init__()
        self.base, self.correction, self.alpha = base, correction, alpha

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.base(features) + self.alpha * self.correction(features)


def text_seeded_normal(seed: int, prompt: str, completion: str) -> float:
    """A standard-normal draw fixed by (seed, text): the same completion always gets the same random score."""
    digest = hashlib.sha256(f"{seed}\x00{prompt}\x00{completion}".encode()).digest()
    return float(np.random.default_rng(int.from_bytes(digest[:8], "little")).standard_normal())


class RandomReward:
    """The null baseline: an i.i.d. random score per completion, carrying no information about the reward."""

    def __init__(self, seed: int):
        self.seed = seed

    def score(self, prompts: list[str], completions: list[str]) -> np.ndarray:
        return np.array([text_seeded_normal(self.seed, p, c) for p, c in zip(prompts, completions)])


# ------------------------------------------------------------------------------- frozen language-model features


def text_key(prompt: str, completion: str) -> str:
    """The key of a (prompt, completion) pair in a features table."""
    return hashlib.sha256(f"{prompt}\x00{completion}".encode()).hexdigest()[:32]


def lm_batches(model, tokenizer, prompts: list[str], completions: list[str], batch_size: int = 16,
               max_length: int = 256):
    """Run a causal LM over prompt + completion texts in batches; yield (text indices, hidden states, mask).

    Prompt and completion are tokenized separately and concatenated (the split a policy samples with), truncated
    to the first `max_length` tokens, left-padded with position ids that count real tokens only, so a text's
    states do not depend on its batch. The caller runs under `torch.no_grad()` with the model in eval mode."""
    device = next(model.parameters()).device
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (tokenizer.eos_token_id or 0)
    prompt_ids = tokenizer(list(prompts))["input_ids"]
    completion_ids = tokenizer(list(completions), add_special_tokens=False)["input_ids"]
    rows = [(p + c)[:max_length] or [pad] for p, c in zip(prompt_ids, completion_ids)]
    order = sorted(range(len(rows)), key=lambda i: len(rows[i]))
    for start in range(0, len(order), batch_size):
        batch = order[start : start + batch_size]
        width = max(len(rows[i]) for i in batch)
        ids = torch.full((len(batch), width), pad, dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for j, i in enumerate(batch):
            ids[j, width - len(rows[i]) :] = torch.tensor(rows[i])
            mask[j, width - len(rows[i]) :] = 1
        ids, mask = ids.to(device), mask.to(device)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        yield batch, model(input_ids=ids, attention_mask=mask, position_ids=positions,
                           output_hidden_states=True).hidden_states, mask


@torch.no_grad()
def lm_features(model, tokenizer, prompts: list[str], completions: list[str], batch_size: int = 16,
                max_length: int = 256, progress: Callable[[int], None] | None = None) -> np.ndarray:
    """Mean-pooled last hidden state of a causal LM over prompt + completion, shape (n, hidden): see `lm_batches`
    for the tokenization. `progress(k)` is called with the number of texts done after each batch."""
    out = None
    was_training = model.training
    model.eval()
    for batch, hidden_states, mask in lm_batches(model, tokenizer, prompts, completions, batch_size, max_length):
        hidden = hidden_states[-1].float()
        pooled = (hidden * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)
        if out is None:
            out = np.zeros((len(prompts), pooled.shape[-1]), dtype=np.float32)
        out[batch] = pooled.cpu().numpy()
        if progress is not None:
            progress(len(batch))
    model.train(was_training)
    return out if out is not None else np.zeros((0, 0), dtype=np.float32)


class FrozenLMFeatures:
    """Features of a frozen LM backbone (see `lm_features`), standardised with stored training-set statistics.

    Spec: {"type": "frozen_lm", "model": hub id or HF directory, "dim": hidden size, "max_length": int,
    "features_dir": directory with features.npy (float32 rows), keys.json (their `text_key`s) and
    standardise.json ({"mean": [...], "std": [...]})}, optionally "extra_features_dirs": more tables of the same
    backbone (features.npy + keys.json, e.g. a held-out pool the scorer reads; the main table's standardisation
    applies). Texts found in a table cost a lookup; any other text is encoded with the backbone, loaded on first
    need.

    The trainable-layer class (head "lm_top<k>": the backbone's last k blocks train with the head) wraps this
    encoder: bench/kit/lm_top.py."""

    def __init__(self, spec: dict):
        self.spec = spec
        self.dim = int(spec["dim"])
        self.max_length = int(spec.get("max_length", 256))
        self.rows: dict[str, int] = {}
        self.table = np.zeros((0, self.dim), dtype=np.float32)
        directory = Path(spec["features_dir"]) if spec.get("features_dir") else None
        if directory is not None and (directory / "features.npy").exists():
            self.table = np.load(directory / "features.npy")
            self.rows = {k: i for i, k in enumerate(json.loads((directory / "keys.json").read_text()))}
            norm = json.loads((directory / "standardise.json").read_text())
            self.mean = np.asarray(norm["mean"], dtype=np.float32)
            self.std = np.asarray(norm["std"], dtype=np.float32)
        elif "mean" in spec:
            self.mean = np.asarray(spec["mean"], dtype=np.float32)
            self.std = np.asarray(spec["std"], dtype=np.float32)
        else:
            self.mean, self.std = np.zeros(self.dim, np.float32), np.ones(self.dim, np.float32)
        for extra in spec.get("extra_features_dirs", []):
            keys = json.loads((Path(extra) / "keys.json").read_text())
            offset = len(self.table)
            self.table = np.concatenate([self.table, np.load(Path(extra) / "features.npy")])
            self.rows.update({k: offset + i for i, k in enumerate(keys) if k not in self.rows})

    @functools.cached_property
    def backbone(self):
        """The frozen LM, loaded only when a text is missing from the features table."""
        from transformers import AutoModelForCausalLM, AutoTokenizer  # heavy; most fits never need the backbone

        tok = AutoTokenizer.from_pretrained(self.spec["model"], trust_remote_code=False)
        model = AutoModelForCausalLM.from_pretrained(self.spec["model"], dtype=torch.float32,
                                                     trust_remote_code=False)
        return model.eval(), tok

    def encode(self, prompts: list[str], completions: list[str]) -> torch.Tensor:
        keys = [text_key(p, c) for p, c in zip(prompts, completions)]
        feats = np.zeros((len(keys), self.dim), dtype=np.float32)
        missing = []
        for i, k in enumerate(keys):
            row = self.rows.get(k)
            if row is None:
                missing.append(i)
            else:
                feats[i] = self.table[row]
        if missing:
            model, tok = self.backbone
            feats[missing] = lm_features(model, tok, [prompts[i] for i in missing], [completions[i] for i in missing],
                                         max_length=self.max_length)
        return torch.from_numpy((feats - self.mean) / self.std)


@register_encoder("frozen_lm")
def _frozen_lm(spec: dict) -> FrozenLMFeatures:
    return FrozenLMFeatures(spec)
