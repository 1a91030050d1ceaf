"""Re-RLHF with a recovered reward r̂: does optimising r̂ detoxify π₀ the way R* did?

`realign` re-runs the expert recipe of bench/lm/rlhf.py from π₀ with r̂ as the reward, normalised and multiplied
by the spread of R*'s rewards on π₀'s samples. r̂'s scale and offset are unidentified, so a raw r̂ would give every
method its own effective learning rate and KL coefficient; normalising removes that, and the scale restores the
reward-to-KL ratio the expert trained with (TRL's RLOO adds −β·KL to the reward and does not normalise advantages
by default). Two normalisations: `batch` z-scores r̂ within each generation batch (`BatchNormalisedReward`; the
published runs), `affine` applies one fixed map estimated on π₀'s training samples (`AffineNormalisedReward`),
under which R* itself is the expert's reward up to a constant. Without the scale, a smoke-profile re-alignment
with R* drifted to KL ≈ 52 nats where π_E stopped at ≈ 5.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np

from bench.errors import RuntimeFailure
from bench.lm import rlhf
from bench.lm.outcomes import release_memory
from bench.storage.artifacts import Artifact, ArtifactCache, atomic_write_json
from bench.task import hash_texts


class BatchNormalisedReward:
    """r̂ as the RL trainer sees it: z-scored within each generation batch, times `scale`.

    r̂'s offset and scale are unidentified (any affine map of a reward induces the same preferences), so a raw r̂
    would make one learning rate and KL coefficient mean something different for every method. The z-score fixes
    that; `scale` (the spread of R*'s rewards on π₀'s samples, recorded by the task) then gives every r̂ the
    reward-to-KL ratio that the expert's recipe had with R* itself. A batch whose r̂ is constant carries no
    preference: its rewards are all 0 (no update), not a division by 0. Raw r̂ statistics of every batch are kept
    in `batches` for the training curve."""

    def __init__(self, reward, scale: float = 1.0, eps: float = 1e-8):
        self.reward, self.scale, self.eps = reward, float(scale), eps
        self.batches: list[dict] = []

    def __call__(self, prompts: list[str], completions: list[str]) -> np.ndarray:
        raw = np.asarray(self.reward.score(prompts, completions), dtype=float)
        if raw.shape != (len(completions),) or not np.all(np.isfinite(raw)):
            raise RuntimeFailure(f"the recovered reward returned {raw.shape} scores (finite: "
                                 f"{bool(np.all(np.isfinite(raw)))}) for {len(completions)} completions")
        mean, std = float(raw.mean()), float(raw.std())
        self.batches.append({"mean_reward": mean, "rhat_std": std, "rhat_min": float(raw.min()),
                             "rhat_max": float(raw.max()), "n": len(raw), "constant": bool(std <= self.eps)})
        return self.normalise(raw)

    def normalise(self, raw: np.ndarray) -> np.ndarray:
        std = raw.std()
        return self.scale * ((raw - raw.mean()) / std if std > self.eps else np.zeros_like(raw))

    def describe(self) -> dict:
        return {"kind": "z-score of r̂ within each generation batch, times scale", "scale": self.scale}


class AffineNormalisedReward(BatchNormalisedReward):
    """r̂ under one fixed affine map, estimated once on π₀'s own samples: scale × (r̂ − m) / s, with m and s the mean
    and standard deviation of r̂ over `reference` completions (π₀'s training samples). For r̂ = a·R* + b (a > 0)
    this is R* − mean(R*) whenever `scale` is R*'s spread on the same samples — the expert's own reward up to a
    constant, which RLOO's leave-one-out baseline ignores — so re-aligning with R* reproduces the expert's recipe.
    Per-batch z-scoring instead inflates R*'s small within-batch differences (measured ×2.2 on detox)."""

    def __init__(self, reward, reference: tuple[list[str], list[str]], scale: float = 1.0, eps: float = 1e-8):
        super().__init__(reward, scale, eps)
        ref = np.asarray(reward.score(*reference), dtype=float)
        if not np.all(np.isfinite(ref)):
            raise RuntimeFailure("the recovered reward returned non-finite scores on π₀'s reference samples")
        self.mean, self.std = float(ref.mean()), float(ref.std())
        self.n_reference = len(ref)

    def normalise(self, raw: np.ndarray) -> np.ndarray:
        if self.std <= self.eps:
            return np.zeros_like(raw)
        return self.scale * (raw - self.mean) / self.std

    def describe(self) -> dict:
        return {"kind": "affine: (r̂ − mean) / std over π₀'s training samples, times scale", "scale": self.scale,
                "mean": round(self.mean, 7), "std": round(self.std, 7), "reference_samples": self.n_reference}


NORMALISATIONS = ("batch", "affine")


@dataclass(frozen=True)
class Realigned:
    """A re-aligned policy: the artifact (model/ is a plain HF directory, loadable by bench.lm.policies) and its
    record (reward identity, normalisation, recipe, training time) and raw-r̂ training curve."""

    artifact: Artifact
    record: dict
    curve: list[dict]

    @property
    def model_dir(self) -> str:
        return str(self.artifact.path / "model")


def realign(base_dir: str, base_identity: dict, reward, reward_identity: dict, prompts: list[str], recipe,
            cache: ArtifactCache, reward_scale: float = 1.0, progress=None, normalisation: str = "batch",
            reference: tuple[list[str], list[str]] | None = None) -> Realigned:
    """π₀ (at `base_dir`) trained with bench.lm.rlhf's recipe `recipe` (pass the expert's, for the same budget) against
    the recovered reward `reward` (`score(prompts, completions)`, higher is better), normalised by `normalisation`
    ("batch", or "affine" on the (prompts, completions) of π₀ in `reference`) and multiplied by `reward_scale`.

    Cached as artifact kind `realigned`, keyed by the base, `reward_identity` (what makes r̂ unique, e.g. the method,
    its config, seed and demonstrations), the normalisation, the recipe and the training prompts."""
    recipe.validate()
    if normalisation == "affine":
        normalised = AffineNormalisedReward(reward, reference, reward_scale)
    else:
        normalised = BatchNormalisedReward(reward, reward_scale)
    inputs = {
        "base": base_identity,
        "reward": reward_identity,
        "normalisation": normalised.describe(),
        "recipe": rlhf.recipe_key(recipe),
        "prompts_sha256": hash_texts(prompts, length=64),
        "n_prompts": len(prompts),
    }

    def build(out):
        logged = rlhf.train_policy(out, base_dir, normalised, prompts, recipe, progress)
        atomic_write_json(out / "curve.json", rlhf.merge_curve(normalised.batches, logged))
        atomic_write_json(out / "realign.json", {
            "reward": reward_identity, "base": base_identity, "normalisation": normalised.describe(),
            "batch_size": recipe.prompts_per_step * recipe.generations,
            "constant_batches": sum(b["constant"] for b in normalised.batches),
            "reward_batches": len(normalised.batches), "recipe": json.loads((out / "recipe.json").read_text())})

    artifact = cache.get_or_build("realigned", inputs, build)
    release_memory()  # the trainer, optimiser, reference copy and trained model, before the caller evaluates
    return Realigned(artifact, artifact.read_json("realign.json"), artifact.read_json("curve.json"))
