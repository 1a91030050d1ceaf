"""The stress worlds of the `synthetic` task (profiles `world-<name>`, run together by `bench worlds`): each one
stressor away from `clean`, with an exact R* and exact expert samples; plus the pieces only worlds use: the heavier
reward tail, the broad pool of off-policy completions, and the exact normaliser of the expert under an interaction.
"""

from __future__ import annotations

import numpy as np

WORLD_BASE = {"n_prompts": 800, "pool_prompts": 100}
WORLDS = {
    "clean": ("the default world at 800 prompts: linear R*, clean labels (the reference)", {}),
    "misspecified": ("R* has a squared style term γ(Σv)²/L that a linear head cannot represent (an MLP can)",
                     {"interaction": 0.5}),
    "imbalanced": ("only ≈5% of base completions are bad (R* below its 5% quantile)", {"bad_quantile": 0.05}),
    "noisy": ("20% of training and validation pairs flipped", {"label_noise": 0.2}),
    "scarce": ("at most 5% of training pairs are informative bad→good pairs", {"informative_pair_fraction": 0.05}),
    "near-ties": ("a weakly tilted expert (β = 4): most pairs are near-ties under R*", {"beta": 4.0}),
    "heavy-tailed": ("a few tokens carry most of the reward (θ ← sign·|θ|³, same spread)",
                     {"reward_concentration": 2.0}),
    "shifted": ("test prompts come from a shifted prompt distribution (base logits moved by 1.5·u)",
                {"test_shift": 1.5}),
    "small-data": ("a few hundred training pairs (400 prompts, 2 pairs each, 35% for training)",
                   {"n_prompts": 400, "completions_per_prompt": 2, "test_fraction": 0.45}),
}

POOL_SAMPLES = 2  # completions per pool policy and prompt
QUADRATURE_NODES = 160


def softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def concentrate(theta: np.ndarray, c: float) -> np.ndarray:
    """sign(θ)|θ|^(1+c), rescaled to θ's standard deviation: the same signs and order, a heavier tail."""
    heavy = np.sign(theta) * np.abs(theta) ** (1 + c)
    return heavy * theta.std() / heavy.std()


def penalty_log_normaliser(probs: np.ndarray, style: np.ndarray, a: float, length: int) -> np.ndarray:
    """log E_{y ~ p^⊗L}[exp(−a·(Σ_t v[y_t])²)] for each row of `probs` (P, V): the log-normaliser that turns the
    linear tilt p into the exact expert when R* carries the penalty −γ(Σv)²/L (a = γ/(Lβ)).

    exp(−a s²) = E_z[cos(√(2a)·z·s)] for z ~ N(0, 1), and the tokens are i.i.d., so the expectation is
    E_z[Re φ(√(2a) z)^L] with φ(u) = Σ_j p_j e^{i u v_j}: one smooth integral over z, done by Gauss–Hermite
    quadrature (exact to rounding for these sizes; tests/test_worlds.py checks it against Monte Carlo)."""
    nodes, weights = np.polynomial.hermite_e.hermegauss(QUADRATURE_NODES)
    weights = weights / np.sqrt(2 * np.pi)
    phase = np.exp(1j * np.sqrt(2 * a) * nodes[:, None] * style[None, :])  # (n, V)
    phi = probs @ phase.T  # (P, n)
    return np.log(np.clip((phi**length).real @ weights, 1e-300, None))


def pool(world, prompt_indices) -> tuple[dict, dict]:
    """A broad pool on the given prompts: POOL_SAMPLES completions from each of π₀, π_E and perturbed policies
    (a sharper tilt, the reversed tilt, ± a random reward direction, uniform tokens). Returns the items (texts
    only) and their R*. Its own random stream: the demonstrations do not depend on it."""
    rng = np.random.default_rng([world.cfg.data_seed, 3])
    beta, theta = world.cfg.beta, world.theta
    direction = rng.normal(0.0, theta.std() or 1.0, len(theta))
    tilts = {"sharper": 3 * theta / beta, "reversed": -theta / beta, "random+": direction / beta,
             "random-": -direction / beta}
    items = {"prompt_ids": [], "prompts": [], "texts": [], "sources": []}
    rewards = []
    for local_id, p in enumerate(prompt_indices):
        draws = {"base": world.sample(world.base_probs[p], POOL_SAMPLES, rng),
                 "expert": world.sample_expert(p, POOL_SAMPLES, rng)}
        for name, tilt in tilts.items():
            draws[name] = world.sample(softmax(world.logits[p] + tilt), POOL_SAMPLES, rng)
        draws["uniform"] = world.sample(np.full(len(theta), 1.0 / len(theta)), POOL_SAMPLES, rng)
        for source, rows in draws.items():
            for y in rows:
                items["prompt_ids"].append(local_id)
                items["prompts"].append(world.prompts[p])
                items["texts"].append(world.render(y))
                items["sources"].append(source)
                rewards.append(world.reward(p, y))
    return items, {"reward": rewards}
