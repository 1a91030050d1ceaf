"""Three ambiguity spreads of a method's recovered reward (defined in docs/ambiguity.md), from stored fits.

Every spread is one distance, the board's seed ambiguity: 1 − mean pairwise Pearson correlation of per-prompt-
centred rewards on the held-out items the board scores (0: the fits recover one reward up to per-prompt shifts and
scale). What changes is the set of fits it is taken over:

    seeds             the board's fits: one configuration, the demonstrations as given, different seeds
    data              fits on bootstrap resamples of the training prompts, at seed 0 and the same configuration
    identifiability   seeds 0..S-1 on the demonstrations as given and seed 0 on every resample, each at every
                      regularisation strength: those fits whose validation loss lies within ε of the best one's,
                      rewards the demonstrations explain equally well

The 95% CIs resample test prompts (the scorer's prompt weights, so the seeds spread equals the board's seed
ambiguity, CI included); the fits are not resampled, as a duplicated fit would agree with itself.

The validation loss is scale-free, so methods whose reward scale is arbitrary compare: the Bradley–Terry log-loss
of the validation pairs' margins at the best positive scale, mean_i log(1 + exp(−s·Δ_i/sd(Δ))) minimised over s.
ε is that loss's standard error for the best fit (validation prompts as clusters): fits closer to the best than one
standard error are ones the validation demonstrations cannot tell apart from it (the one-standard-error rule).
"""

from __future__ import annotations

import itertools
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy.optimize import minimize_scalar

from bench.data import TaskData
from bench.scoring.bootstrap import Bootstrap, Items, percentile_ci, prompt_weights
from bench.scoring.scorer import EvalSet, load_eval_sets
from bench.storage.artifacts import atomic_write_json

FILE = "ambiguity.json"  # beside selection.json in a run group; written by `bench ambiguity`
SCHEMA_VERSION = 1
SPREADS = {
    "seeds": "over the board's seeds (one configuration, the demonstrations as given): optimiser noise",
    "data": "over fits on bootstrap resamples of the training prompts (seed 0, the same configuration): data "
            "ambiguity",
    "identifiability": "over the fits of seeds 0..S−1 and of every resample, each at every regularisation strength, "
                       "whose validation loss is within ε (its standard error) of the best: rewards the "
                       "demonstrations cannot tell apart",
}
DISTANCE = ("1 − mean pairwise Pearson of per-prompt-centred rewards on the board's held-out items (the seed "
            "ambiguity column); 95% CI over test-prompt resamples")
MAX_SCALE = 100.0  # bound of s on standardised margins: a perfectly separating reward reaches loss ≈ 0 well before


@dataclass(frozen=True)
class AmbiguityReport:
    """What `bench ambiguity` writes and the leaderboard's Ambiguity section reads: per method, each spread as
    {"mean", "ci", "n_fits"}, the regulariser and its grid, and the identifiability set's fits."""

    task: str
    profile: str
    split: str
    settings: dict  # {"resamples", "seeds", "bootstrap", "epsilon"}
    methods: dict

    def to_json(self) -> dict:
        return {"schema_version": SCHEMA_VERSION, "task": self.task, "profile": self.profile, "split": self.split,
                "settings": self.settings, "distance": DISTANCE, "definitions": SPREADS, "methods": self.methods}

    @classmethod
    def from_json(cls, obj: dict) -> "AmbiguityReport":
        return cls(obj["task"], obj["profile"], obj["split"], obj["settings"], obj["methods"])

    def write(self, group_dir: Path) -> Path:
        path = Path(group_dir) / FILE
        atomic_write_json(path, self.to_json())
        return path

    @classmethod
    def read(cls, group_dir: Path) -> "AmbiguityReport | None":
        path = Path(group_dir) / FILE
        return cls.from_json(json.loads(path.read_text())) if path.exists() else None


def validation_loss(r: np.ndarray, pairs: np.ndarray, prompt: np.ndarray) -> tuple[float, float]:
    """(loss, standard error): the scale-free Bradley–Terry log-loss of the pairs' margins (see the module text)
    and its standard error with the pairs of one prompt as a cluster."""
    d = r[pairs[:, 0]] - r[pairs[:, 1]]
    sd = d.std()
    z = d / sd if sd > 0 else np.zeros_like(d)  # a reward constant on every pair explains nothing: loss log 2
    best = minimize_scalar(lambda s: np.logaddexp(0.0, -s * z).mean(), bounds=(0.0, MAX_SCALE), method="bounded")
    per_pair = np.logaddexp(0.0, -best.x * z)
    loss = float(per_pair.mean())
    _, owner = np.unique(prompt[pairs[:, 0]], return_inverse=True)
    residual = np.bincount(owner, weights=per_pair - loss)
    n_clusters = len(residual)
    se = float(np.sqrt(n_clusters / max(n_clusters - 1, 1) * (residual**2).sum()) / len(per_pair))
    return loss, se


def spread(boot: Bootstrap, rewards: list[np.ndarray]) -> np.ndarray:
    """1 − mean pairwise centred Pearson of the rewards, row 0 on the items, rows 1.. on prompt resamples (NaN with
    fewer than two fits)."""
    if len(rewards) < 2:
        return np.full(len(boot.W), np.nan)
    return 1 - np.mean([boot.centred_pearson(a, b) for a, b in itertools.combinations(rewards, 2)], axis=0)


def _estimate(values: np.ndarray, n_fits: int) -> dict:
    lo, hi = percentile_ci(values[1:])
    return {"mean": _clean(values[0]), "ci": [_clean(lo), _clean(hi)], "n_fits": n_fits}


def evaluation(data: TaskData, split: str, n_boot: int, seed: int) -> tuple[Bootstrap, EvalSet]:
    """The scorer's bootstrap of the split (the same prompt weights for the same seed) and the validation items."""
    sets = load_eval_sets(data)
    items = Items(prompt=sets[split].prompt_ids, pairs=sets[split].pairs, truth=sets[split].reward,
                  bad=sets[split].bad)
    return Bootstrap(items, prompt_weights(items.n_prompts, n_boot, np.random.default_rng(seed))), sets["val"]


def score_method(boot: Bootstrap, val: EvalSet, split: str, seeds: list[dict], data_fits: list[dict],
                 grid_fits: list[dict], regulariser: str | None) -> dict:
    """One method's three spreads from its trial results (payloads with "rewards", "seed", "config", and
    "resample" when not 0). `grid_fits` is every fit of the identifiability grid."""
    rewards = lambda fits: [np.asarray(f["rewards"][split], dtype=float) for f in fits]  # noqa: E731
    if not grid_fits:
        raise ValueError("no successful fit to score")
    losses = [validation_loss(np.asarray(f["rewards"]["val"], dtype=float), val.pairs, val.prompt_ids)
              for f in grid_fits]
    best = int(np.argmin([loss for loss, _ in losses]))
    best_loss, epsilon = losses[best]
    within = [i for i, (loss, _) in enumerate(losses) if loss <= best_loss + epsilon]
    fits = [{"trial_id": f["trial_id"], "seed": f["seed"], "resample": f.get("resample", 0),
             **({regulariser: f["config"][regulariser]} if regulariser else {}),
             "val_loss": _clean(loss), "within": i in within}
            for i, (f, (loss, _)) in enumerate(zip(grid_fits, losses))]
    return {
        "seeds": _estimate(spread(boot, rewards(seeds)), len(seeds)),
        "data": _estimate(spread(boot, rewards(data_fits)), len(data_fits)),
        "identifiability": _estimate(spread(boot, rewards([grid_fits[i] for i in within])), len(within))
        | {"epsilon": _clean(epsilon), "best_val_loss": _clean(best_loss), "of_fits": len(grid_fits)},
        "regulariser": regulariser,
        "grid": sorted({f["config"][regulariser] for f in grid_fits}) if regulariser else [],
        "fits": fits,
    }


def _clean(x, digits: int = 6):
    """JSON-safe, rounded as the scorer rounds: NaN becomes None."""
    if x is None or not np.isfinite(x):
        return None
    return round(float(x), digits) + 0.0
