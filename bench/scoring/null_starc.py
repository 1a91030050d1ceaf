"""STARC under a null convention that an uninformative reward cannot beat.

The plain one-step STARC (bench/scoring/metrics.py `starc_distance`) keeps a reward that is constant within every
prompt at zero after canonicalisation, so its distance to R* is ‖0 − b̂‖ = 1: *better* than the ≈ √2 of an
independent random reward. A table normalised between `random` (0) and `oracle` (1) then credits such a reward
(`length` on the synthetic task, where every completion has the same length) with ≈ 0.29 of the oracle's quality.

Convention used here: a reward whose per-prompt-centred values are all zero scores √2, the distance R* has to an
independent reward direction (for unit vectors â, b̂ with E[â·b̂] = 0, E‖â − b̂‖² = 2). So an uninformative reward
scores the null's expected value, never above it; every other reward scores exactly as before, and the identity
STARC = √(2 − 2·centred r) now holds for it too (its centred correlation is 0). Every board uses this convention.
"""

from __future__ import annotations

import math

import numpy as np

from bench.scoring.bootstrap import Bootstrap
from bench.scoring.metrics import centre_per_prompt, starc_distance

NULL_DISTANCE = math.sqrt(2)
RELATIVE_TOLERANCE = 1e-9  # centred values this small relative to the reward's size are rounding noise


def is_uninformative(r: np.ndarray, prompt_ids: np.ndarray) -> bool:
    """True when r is constant within every prompt (up to rounding): it orders no two completions of a prompt."""
    r = np.asarray(r, dtype=float)
    centred = centre_per_prompt(r, np.asarray(prompt_ids))
    return bool(np.abs(centred).max() <= RELATIVE_TOLERANCE * max(np.abs(r).max(), 1e-300))


def starc_distance_null(r: np.ndarray, truth: np.ndarray, prompt_ids: np.ndarray) -> float:
    """`metrics.starc_distance`, except that an uninformative reward scores √2 (the null) instead of 1."""
    if is_uninformative(r, prompt_ids):
        return NULL_DISTANCE
    return starc_distance(r, truth, prompt_ids)


def bootstrap_starc_null(boot: Bootstrap, r: np.ndarray) -> np.ndarray:
    """`Bootstrap.starc` under the same convention: (B+1,) values, all √2 for an uninformative reward."""
    if is_uninformative(r, boot.items.prompt):
        return np.full(len(boot.W), NULL_DISTANCE)
    return boot.starc(r)
