"""Reward models r̂(x, y) = head(encoder(x, y)).

An *encoder* turns (prompt, completion) texts into a feature tensor. Frozen encoders (bag of tokens; a frozen LM
backbone, whose features are computed once and cached) let a head train in seconds on CPU; an encoder that is an
`nn.Module` with trainable parameters (e.g. an LM's last k layers) trains together with the head, on GPUs.
Encoders are rebuilt in trial workers from a JSON spec, so each type registers a constructor here.
"""

from __future__ import annotations

import hashlib
from typing import Callable, Protocol

import numpy as np
import torch
from torch import nn

ENCODERS: dict[str, Callable[[dict], "Encoder"]] = {}


class Encoder(Protocol):
    dim: int

    def encode(self, prompts: list[str], completions: list[str]) -> torch.Tensor: ...


class RewardFunction(Protocol):
    """Anything that scores completions: a fitted reward model, a judge, a baseline."""

    def score(self, prompts: list[str], completions: list[str]) -> np.ndarray: ...


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


def make_head(kind: str, dim: int, hidden: int = 64) -> nn.Module:
    if kind == "linear":
        # No bias: a constant offset never changes a preference, and without it the norm bound means something.
        return nn.Linear(dim, 1, bias=False)
    if kind == "mlp":
        return nn.Sequential(nn.Linear(dim, hidden), nn.ReLU(), nn.Linear(hidden, 1, bias=False))
    raise ValueError(f"unknown head {kind!r}")


class RewardModel(nn.Module):
    """A head over encoder features; `forward` takes features, `score` takes texts."""

    def __init__(self, encoder: Encoder, head: nn.Module):
        super().__init__()
        self.encoder = encoder
        self.head = head

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.head(features).squeeze(-1)

    def features(self, prompts: list[str], completions: list[str]) -> torch.Tensor:
        return self.encoder.encode(prompts, completions)

    @torch.no_grad()
    def score(self, prompts: list[str], completions: list[str]) -> np.ndarray:
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
