"""`synthetic`: a contextual bandit whose reward is known exactly, so every metric can be checked against truth.

    prompt x        "prompt-0042", with its own base token distribution p₀(·|x) = softmax(ℓ_x)
    completion y    L tokens "w00" … "wNN" drawn i.i.d. from the policy, rendered as text
    reward          R*(x, y) = Σ_t θ[y_t] + c_x        (linear in bag-of-token counts, plus a per-prompt offset
                                                        that no preference can reveal)
    base policy     π₀(y|x)  = Π_t p₀(y_t|x)
    expert          π_E(y|x) ∝ π₀(y|x)·exp(R*(x, y)/β) = Π_t p₀(y_t|x)·exp(θ[y_t]/β) / Z_x   (exactly tilted,
                                                        so it is sampled exactly, token by token)

Pairs are (y⁺ ~ π_E, y⁻ ~ π₀) on the same prompt, as in the papers. A completion is labelled bad (label 1) when
R* falls below the `bad_quantile` quantile of R* over base-policy completions. Prompts are split into disjoint
train / validation / test sets. Stressors: `label_noise` flips a share of training and validation pairs;
`informative_pair_fraction` thins the pairs whose rejected completion is bad and chosen one is not (the
"T→NT" pairs FA-IRL relies on) until they make up at most that share of the training pairs.

World stressors (all off by default, and then left out of the artifact keys, so the older profiles' data and keys
stay what they were): `interaction` subtracts γ·(Σ_t v[y_t])²/L, a squared "style" direction that no linear head
over token counts can represent (the expert stays exact: proposals from the linear tilt, accepted with probability
exp(penalty/β)); `reward_concentration` c maps θ to sign(θ)|θ|^(1+c), rescaled to θ's spread, so a few tokens carry
most of the reward; `test_shift` moves the test prompts' base logits along a random direction (a covariate shift;
validation stays in distribution); `pool_prompts` adds, for that many test prompts, a broad pool of completions from
π₀, π_E and perturbed policies (sharper and reversed tilts, random reward directions, uniform tokens), whose R*
goes into the truth artifact: distances over the data's support and off it. The `world-*` profiles are the
worlds of `bench worlds` (bench/execution/worlds.py), each one stressor away from `world-clean`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from bench import config as configs
from bench.config import param
from bench.data import Completions, Demonstrations, Split, TaskData
from bench.errors import BadInput
from bench.registry import register_task
from bench.storage.artifacts import ArtifactCache, atomic_write_json
from bench.task import Profile, Task, split_fingerprints
from tasks.synthetic_worlds import WORLD_BASE, WORLDS, concentrate, penalty_log_normaliser, pool, softmax


@dataclass
class SyntheticConfig:
    vocab_size: int = param(40, low=2, high=5000, help="number of distinct tokens")
    completion_length: int = param(12, low=1, high=256, help="tokens per completion")
    n_prompts: int = param(2000, low=12, high=100000, help="prompts, split into train/val/test")
    completions_per_prompt: int = param(4, low=1, high=64, help="k completions per policy and prompt (k pairs)")
    val_fraction: float = param(0.2, low=0.05, high=0.45, help="share of prompts for validation")
    test_fraction: float = param(0.25, low=0.05, high=0.45, help="share of prompts for test")
    beta: float = param(1.0, low=0.01, high=100.0, log=True, help="KL coefficient of the exactly tilted expert")
    reward_scale: float = param(0.5, low=0.0, high=10.0, help="std of the token rewards θ")
    prompt_diversity: float = param(1.0, low=0.0, high=10.0, help="std of the per-prompt base logits")
    prompt_offset: float = param(1.0, low=0.0, high=10.0, help="std of the per-prompt reward offset c_x")
    bad_quantile: float = param(0.3, low=0.01, high=0.99, help="R* quantile of base completions below which 'bad'")
    label_noise: float = param(0.0, low=0.0, high=0.5, help="share of train/val pairs flipped")
    informative_pair_fraction: float = param(1.0, low=0.0, high=1.0, help="max share of bad→good training pairs")
    data_seed: int = param(0, low=0, high=2**31 - 1, help="seed of the world and its samples (not the fit seed)")
    interaction: float = param(0.0, low=0.0, high=10.0, help="γ of the squared style penalty a linear head misses")
    reward_concentration: float = param(0.0, low=0.0, high=5.0, help="c in θ ← sign(θ)|θ|^(1+c) (few tokens dominate)")
    test_shift: float = param(0.0, low=0.0, high=10.0, help="shift of the test prompts' base logits (covariate shift)")
    pool_prompts: int = param(0, low=0, high=100000, help="test prompts that get a broad pool of off-policy samples")

    def validate(self):
        if self.val_fraction + self.test_fraction >= 0.9:
            raise BadInput("val_fraction + test_fraction must stay below 0.9 so that training prompts remain.")


# The stressors' neutral values: at these, a setting is left out of the artifact keys (see key_settings).
NEUTRAL = {"interaction": 0.0, "reward_concentration": 0.0, "test_shift": 0.0, "pool_prompts": 0}


def key_settings(cfg: SyntheticConfig) -> dict:
    """The settings an artifact key hashes: every setting, less the stressors at their neutral values."""
    return {k: v for k, v in configs.to_dict(cfg).items() if not (k in NEUTRAL and v == NEUTRAL[k])}


class SyntheticWorld:
    """The known reward and the two policies, drawn from `data_seed`."""

    def __init__(self, cfg: SyntheticConfig):
        rng = np.random.default_rng(cfg.data_seed)
        self.cfg = cfg
        self.vocab = [f"w{i:0{len(str(cfg.vocab_size - 1))}d}" for i in range(cfg.vocab_size)]
        self.prompts = [f"prompt-{i:05d}" for i in range(cfg.n_prompts)]
        self.theta = rng.normal(0.0, cfg.reward_scale, cfg.vocab_size)
        if cfg.reward_concentration > 0:
            self.theta = concentrate(self.theta, cfg.reward_concentration)
        self.offsets = rng.normal(0.0, cfg.prompt_offset, cfg.n_prompts)
        logits = rng.normal(0.0, cfg.prompt_diversity, (cfg.n_prompts, cfg.vocab_size))
        self.logits = logits
        self.base_probs = softmax(logits)
        self.expert_probs = softmax(logits + self.theta / cfg.beta)
        self.rng = rng
        # the stressors draw from their own streams, so the main sequence (and every older profile) is unchanged
        self.style = np.random.default_rng([cfg.data_seed, 1]).normal(0.0, 1.0, cfg.vocab_size) \
            if cfg.interaction > 0 else None

    def sample(self, probs: np.ndarray, k: int | None = None, rng=None) -> np.ndarray:
        """Token ids, shape (k, L), drawn i.i.d. from one prompt's token distribution."""
        k, length = k or self.cfg.completions_per_prompt, self.cfg.completion_length
        return (rng or self.rng).choice(len(probs), size=(k, length), p=probs)

    def penalty(self, tokens: np.ndarray) -> np.ndarray:
        """The non-linear part of R* of token rows (k, L): −γ·(Σ_t v[y_t])²/L (0 without interaction)."""
        if self.style is None:
            return np.zeros(len(tokens))
        return -self.cfg.interaction * self.style[tokens].sum(axis=1) ** 2 / self.cfg.completion_length

    def sample_expert(self, prompt_index: int, k: int | None = None, rng=None) -> np.ndarray:
        """k exact draws of π_E ∝ π₀·exp(R*/β): token-wise from the linear tilt, then, with an interaction,
        rejection with acceptance exp(penalty/β) ≤ 1 (exact, since the penalty is never positive)."""
        probs = self.expert_probs[prompt_index]
        if self.style is None:
            return self.sample(probs, k, rng)
        rng, k = rng or self.rng, k or self.cfg.completions_per_prompt
        kept = []
        while sum(len(b) for b in kept) < k:
            proposal = self.sample(probs, k, rng)
            kept.append(proposal[rng.random(k) < np.exp(self.penalty(proposal) / self.cfg.beta)])
        return np.concatenate(kept)[:k]

    def shift_prompts(self, prompt_indices: np.ndarray, amount: float) -> None:
        """Move these prompts' base logits by amount·u (u a fixed random direction); both policies follow."""
        direction = np.random.default_rng([self.cfg.data_seed, 2]).normal(0.0, 1.0, self.cfg.vocab_size)
        self.logits[prompt_indices] += amount * direction
        self.base_probs[prompt_indices] = softmax(self.logits[prompt_indices])
        self.expert_probs[prompt_indices] = softmax(self.logits[prompt_indices] + self.theta / self.cfg.beta)

    def render(self, tokens: np.ndarray) -> str:
        return " ".join(self.vocab[t] for t in tokens)

    def reward(self, prompt_index: int, tokens: np.ndarray) -> float:
        if self.style is None:
            return float(self.theta[tokens].sum() + self.offsets[prompt_index])
        return float(self.theta[tokens].sum() + self.offsets[prompt_index] + self.penalty(tokens[None])[0])


@register_task("synthetic")
class Synthetic(Task):
    description = "contextual bandit with a known linear reward and an exactly tilted expert (seconds, exact checks)"
    Config = SyntheticConfig
    profiles = {
        "default": Profile("2000 prompts x 4 pairs, 40 tokens, clean labels", {}),
        "noisy": Profile("the default world with 20% of demonstration pairs flipped", {"label_noise": 0.2}),
        "scarce": Profile(
            "the default world keeping at most 5% bad-to-good training pairs", {"informative_pair_fraction": 0.05}
        ),
        "tiny": Profile("60 prompts, for fast tests", {"n_prompts": 60, "vocab_size": 20, "completion_length": 8}),
        **{f"world-{name}": Profile(text, {**WORLD_BASE, **settings}) for name, (text, settings) in WORLDS.items()},
    }

    def build(self, profile, cfg, cache: ArtifactCache, progress=None) -> TaskData:
        inputs = {"task": self.name, "config": key_settings(cfg)}
        generated = {}

        def generate():
            if not generated:
                generated.update(_generate(cfg))
            return generated

        demos = cache.get_or_build(
            "demos", inputs, lambda d: atomic_write_json(d / "demos.json", generate()["demos"].to_json(), indent=None)
        )
        truth = cache.get_or_build("truth", inputs, lambda d: _write_truth(d, generate()))
        policies = cache.get_or_build(
            "policies", inputs, lambda d: atomic_write_json(d / "policies.json", generate()["policies"], indent=None)
        )
        artifacts = {"policies": policies.key}
        if cfg.pool_prompts:
            artifacts["pool"] = cache.get_or_build(
                "pool", inputs, lambda d: atomic_write_json(d / "pool.json", generate()["pool"], indent=None)).key
        summary = cache.load("truth", truth.key).read_json("summary.json")
        return TaskData(self.name, profile, str(cache.root), demos.key, truth.key, summary, artifacts=artifacts)

    def ground_truth(self, data: TaskData):
        params = ArtifactCache(data.cache_root).load("truth", data.truth_key).read_json("world.json")
        return LinearTokenReward(params["vocab"], params["theta"], params["offsets"], params.get("interaction"))

    def policies(self, data: TaskData) -> dict:
        params = ArtifactCache(data.cache_root).load("policies", data.artifacts["policies"]).read_json("policies.json")
        return {role: TokenPolicy(params["vocab"], params["prompts"], params[role], params.get(f"{role}_penalty"))
                for role in ("base", "expert")}


class TokenPolicy:
    """A product policy π(y|x) = Π_t p(y_t|x), exposing exact log-probabilities of completions; with `penalty`
    ({"style", "a", "log_normaliser"}) the product is reweighted by exp(−a·(Σ_t v[y_t])²) and renormalised per
    prompt (the exact expert of the misspecified world)."""

    def __init__(self, vocab: list[str], prompts: list[str], log_probs: list[list[float]], penalty=None):
        self.index = {tok: i for i, tok in enumerate(vocab)}
        self.row = {p: i for i, p in enumerate(prompts)}
        self.log_probs = np.array(log_probs)
        self.penalty = penalty

    def sum_logprobs(self, prompts, completions):
        product = np.array([sum(self.log_probs[self.row[p], self.index[t]] for t in c.split())
                            for p, c in zip(prompts, completions)])
        if not self.penalty:
            return product
        v, lz = self.penalty["style"], self.penalty["log_normaliser"]
        s = np.array([sum(v[self.index[t]] for t in c.split()) for c in completions])
        return product - self.penalty["a"] * s**2 - np.array([lz[self.row[p]] for p in prompts])


class LinearTokenReward:
    """R*(x, y) = Σ_t θ[y_t] + c_x, scoring any text (unknown prompts get offset 0); with `interaction`
    ({"gamma", "style", "length"}) also − γ·(Σ_t v[y_t])²/L."""

    def __init__(self, vocab: list[str], theta: list[float], offsets: dict[str, float], interaction=None):
        self.weights = dict(zip(vocab, theta))
        self.offsets = offsets
        self.interaction = interaction
        self.style = dict(zip(vocab, interaction["style"])) if interaction else {}

    def score(self, prompts, completions):
        linear = np.array(
            [sum(self.weights.get(t, 0.0) for t in c.split()) + self.offsets.get(p, 0.0)
             for p, c in zip(prompts, completions)]
        )
        if not self.interaction:
            return linear
        style = np.array([sum(self.style.get(t, 0.0) for t in c.split()) for c in completions])
        return linear - self.interaction["gamma"] * style**2 / self.interaction["length"]


def _generate(cfg: SyntheticConfig) -> dict:
    world = SyntheticWorld(cfg)
    rng = world.rng
    order = rng.permutation(cfg.n_prompts)
    n_val, n_test = round(cfg.n_prompts * cfg.val_fraction), round(cfg.n_prompts * cfg.test_fraction)
    split_prompts = {"test": order[:n_test], "val": order[n_test : n_test + n_val], "train": order[n_test + n_val :]}

    samples = {}  # split -> list of (prompt index, expert token rows, base token rows)
    for split in ("train", "val", "test"):
        if split == "test" and cfg.test_shift > 0:
            world.shift_prompts(split_prompts["test"], cfg.test_shift)
        samples[split] = [
            (p, world.sample_expert(p), world.sample(world.base_probs[p])) for p in split_prompts[split]
        ]
    base_rewards = [world.reward(p, y) for split in samples.values() for p, _, base in split for y in base]
    bad_threshold = float(np.quantile(base_rewards, cfg.bad_quantile))

    splits, truth, stats = {}, {}, {}
    for split, rows in samples.items():
        prompt_ids, prompts, texts, sources, rewards, pairs = [], [], [], [], [], []
        for local_id, (p, expert_rows, base_rows) in enumerate(rows):
            first = len(texts)
            for source, token_rows in (("expert", expert_rows), ("base", base_rows)):
                for y in token_rows:
                    prompt_ids.append(local_id)
                    prompts.append(world.prompts[p])
                    texts.append(world.render(y))
                    sources.append(source)
                    rewards.append(world.reward(p, y))
            k = cfg.completions_per_prompt
            pairs += [(first + i, first + k + i) for i in range(k)]
        labels = [int(r < bad_threshold) for r in rewards]
        informative = [labels[r] == 1 and labels[c] == 0 for c, r in pairs]
        if split == "train" and cfg.informative_pair_fraction < 1.0:
            pairs, informative = _thin_informative(pairs, informative, cfg.informative_pair_fraction, rng)
        flipped = 0
        if split != "test" and cfg.label_noise > 0:
            flip = rng.random(len(pairs)) < cfg.label_noise
            flipped = int(flip.sum())
            pairs = [(r, c) if f else (c, r) for (c, r), f in zip(pairs, flip)]
        splits[split] = Split(Completions(prompt_ids, prompts, texts, sources), pairs)
        truth[split] = {"reward": rewards, "label": labels}
        stats[split] = {
            "prompts": len(rows),
            "pairs": len(pairs),
            "informative_pairs": int(sum(informative)),
            "flipped_pairs": flipped,
            "expert_mean_reward": float(np.mean([r for r, s in zip(rewards, sources) if s == "expert"])),
            "base_mean_reward": float(np.mean([r for r, s in zip(rewards, sources) if s == "base"])),
            "expert_bad_rate": float(np.mean([lab for lab, s in zip(labels, sources) if s == "expert"])),
            "base_bad_rate": float(np.mean([lab for lab, s in zip(labels, sources) if s == "base"])),
        }
    demos = Demonstrations(splits=splits, encoder={"type": "bag_of_tokens", "vocab": world.vocab})
    summary = {"splits": stats, "split_hashes": split_fingerprints(demos), "bad_threshold": bad_threshold}
    world_params = {
        "vocab": world.vocab,
        "theta": world.theta.tolist(),
        "offsets": {world.prompts[i]: float(c) for i, c in enumerate(world.offsets)},
        "beta": cfg.beta,
    }
    if world.style is not None:
        world_params["interaction"] = {"gamma": cfg.interaction, "style": world.style.tolist(),
                                       "length": cfg.completion_length}
    policies = {"vocab": world.vocab, "prompts": world.prompts,
                "base": np.log(world.base_probs).tolist(), "expert": np.log(world.expert_probs).tolist()}
    if world.style is not None:
        a = cfg.interaction / (cfg.completion_length * cfg.beta)
        policies["expert_penalty"] = {"style": world.style.tolist(), "a": a, "log_normaliser": penalty_log_normaliser(
            world.expert_probs, world.style, a, cfg.completion_length).tolist()}
    generated = {"demos": demos, "truth": truth, "summary": summary, "world": world_params, "policies": policies}
    if cfg.pool_prompts:
        generated["pool"], generated["truth"]["pool"] = pool(world, split_prompts["test"][: cfg.pool_prompts])
    return generated


def _thin_informative(pairs, informative, max_share, rng):
    """Drop random informative pairs until they are at most `max_share` of the remaining pairs."""
    inf_idx = [i for i, flag in enumerate(informative) if flag]
    n_other = len(pairs) - len(inf_idx)
    keep_inf = min(len(inf_idx), int(max_share * n_other / (1 - max_share)) if max_share < 1 else len(inf_idx))
    dropped = set(rng.choice(inf_idx, size=len(inf_idx) - keep_inf, replace=False).tolist()) if inf_idx else set()
    kept = [i for i in range(len(pairs)) if i not in dropped]
    return [pairs[i] for i in kept], [informative[i] for i in kept]


def _write_truth(directory, generated: dict) -> None:
    truth = generated["truth"]
    atomic_write_json(directory / "truth.json", {s: truth[s] for s in ("val", "test")}, indent=None)
    if "pool" in truth:
        atomic_write_json(directory / "pool.json", truth["pool"], indent=None)
    atomic_write_json(directory / "summary.json", generated["summary"])
    atomic_write_json(directory / "world.json", generated["world"], indent=None)
