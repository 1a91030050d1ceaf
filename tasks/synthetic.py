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

    def validate(self):
        if self.val_fraction + self.test_fraction >= 0.9:
            raise BadInput("val_fraction + test_fraction must stay below 0.9 so that training prompts remain.")


class SyntheticWorld:
    """The known reward and the two policies, drawn from `data_seed`."""

    def __init__(self, cfg: SyntheticConfig):
        rng = np.random.default_rng(cfg.data_seed)
        self.cfg = cfg
        self.vocab = [f"w{i:0{len(str(cfg.vocab_size - 1))}d}" for i in range(cfg.vocab_size)]
        self.prompts = [f"prompt-{i:05d}" for i in range(cfg.n_prompts)]
        self.theta = rng.normal(0.0, cfg.reward_scale, cfg.vocab_size)
        self.offsets = rng.normal(0.0, cfg.prompt_offset, cfg.n_prompts)
        logits = rng.normal(0.0, cfg.prompt_diversity, (cfg.n_prompts, cfg.vocab_size))
        self.base_probs = _softmax(logits)
        self.expert_probs = _softmax(logits + self.theta / cfg.beta)
        self.rng = rng

    def sample(self, probs: np.ndarray) -> np.ndarray:
        """Token ids, shape (k, L), drawn i.i.d. from one prompt's token distribution."""
        k, length = self.cfg.completions_per_prompt, self.cfg.completion_length
        return self.rng.choice(len(probs), size=(k, length), p=probs)

    def render(self, tokens: np.ndarray) -> str:
        return " ".join(self.vocab[t] for t in tokens)

    def reward(self, prompt_index: int, tokens: np.ndarray) -> float:
        return float(self.theta[tokens].sum() + self.offsets[prompt_index])


def _softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


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
    }

    def build(self, profile, cfg, cache: ArtifactCache, progress=None) -> TaskData:
        inputs = {"task": self.name, "config": configs.to_dict(cfg)}
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
        summary = cache.load("truth", truth.key).read_json("summary.json")
        return TaskData(self.name, profile, str(cache.root), demos.key, truth.key, summary,
                        artifacts={"policies": policies.key})

    def ground_truth(self, data: TaskData):
        params = ArtifactCache(data.cache_root).load("truth", data.truth_key).read_json("world.json")
        return LinearTokenReward(params["vocab"], params["theta"], params["offsets"])

    def policies(self, data: TaskData) -> dict:
        params = ArtifactCache(data.cache_root).load("policies", data.artifacts["policies"]).read_json("policies.json")
        return {role: TokenPolicy(params["vocab"], params["prompts"], params[role]) for role in ("base", "expert")}


class TokenPolicy:
    """A product policy π(y|x) = Π_t p(y_t|x), exposing exact log-probabilities of completions."""

    def __init__(self, vocab: list[str], prompts: list[str], log_probs: list[list[float]]):
        self.index = {tok: i for i, tok in enumerate(vocab)}
        self.row = {p: i for i, p in enumerate(prompts)}
        self.log_probs = np.array(log_probs)

    def sum_logprobs(self, prompts, completions):
        return np.array([sum(self.log_probs[self.row[p], self.index[t]] for t in c.split())
                         for p, c in zip(prompts, completions)])


class LinearTokenReward:
    """R*(x, y) = Σ_t θ[y_t] + c_x, scoring any text (unknown prompts get offset 0)."""

    def __init__(self, vocab: list[str], theta: list[float], offsets: dict[str, float]):
        self.weights = dict(zip(vocab, theta))
        self.offsets = offsets

    def score(self, prompts, completions):
        return np.array(
            [sum(self.weights.get(t, 0.0) for t in c.split()) + self.offsets.get(p, 0.0)
             for p, c in zip(prompts, completions)]
        )


def _generate(cfg: SyntheticConfig) -> dict:
    world = SyntheticWorld(cfg)
    rng = world.rng
    order = rng.permutation(cfg.n_prompts)
    n_val, n_test = round(cfg.n_prompts * cfg.val_fraction), round(cfg.n_prompts * cfg.test_fraction)
    split_prompts = {"test": order[:n_test], "val": order[n_test : n_test + n_val], "train": order[n_test + n_val :]}

    samples = {}  # split -> list of (prompt index, expert token rows, base token rows)
    for split in ("train", "val", "test"):
        samples[split] = [
            (p, world.sample(world.expert_probs[p]), world.sample(world.base_probs[p])) for p in split_prompts[split]
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
    policies = {"vocab": world.vocab, "prompts": world.prompts,
                "base": np.log(world.base_probs).tolist(), "expert": np.log(world.expert_probs).tolist()}
    return {"demos": demos, "truth": truth, "summary": summary, "world": world_params, "policies": policies}


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
    atomic_write_json(directory / "summary.json", generated["summary"])
    atomic_write_json(directory / "world.json", generated["world"], indent=None)
