"""What flows between stages: completions, preference pairs, and the task data a trial reloads by artifact key.

Ground truth is never part of these objects. It lives in a separate `truth` artifact that only the scorer (and the
`oracle` baseline, by declaration) opens.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from bench.storage.artifacts import Artifact, ArtifactCache

SPLITS = ("train", "val", "test")


class RewardFunction(Protocol):
    """Anything that scores completions (higher is better): a fitted reward model, a judge, a baseline."""

    def score(self, prompts: list[str], completions: list[str]) -> np.ndarray: ...


@dataclass(frozen=True)
class PreferencePairs:
    """All a method ever sees: for pair i, `chosen[i]` (from the expert) is preferred to `rejected[i]` (from π₀)."""

    prompts: list[str]
    chosen: list[str]
    rejected: list[str]

    def __post_init__(self):
        if not (len(self.prompts) == len(self.chosen) == len(self.rejected)):
            raise ValueError("prompts, chosen and rejected must have the same length")

    def __len__(self) -> int:
        return len(self.prompts)


@dataclass(frozen=True)
class Completions:
    """Every completion of one split, in a fixed order; metrics are computed over these items."""

    prompt_ids: list[int]  # index of the prompt within the split, for per-prompt centring and bootstrap
    prompts: list[str]
    texts: list[str]
    sources: list[str]  # "expert" or "base"

    def __len__(self) -> int:
        return len(self.texts)


@dataclass(frozen=True)
class Split:
    items: Completions
    pairs: list[tuple[int, int]]  # (chosen item index, rejected item index)

    @property
    def preference_pairs(self) -> PreferencePairs:
        return PreferencePairs(
            prompts=[self.items.prompts[c] for c, _ in self.pairs],
            chosen=[self.items.texts[c] for c, _ in self.pairs],
            rejected=[self.items.texts[r] for _, r in self.pairs],
        )

    def to_json(self) -> dict:
        i = self.items
        return {
            "items": {"prompt_ids": i.prompt_ids, "prompts": i.prompts, "texts": i.texts, "sources": i.sources},
            "pairs": [list(p) for p in self.pairs],
        }

    @classmethod
    def from_json(cls, obj: dict) -> "Split":
        return cls(items=Completions(**obj["items"]), pairs=[tuple(p) for p in obj["pairs"]])


@dataclass(frozen=True)
class TaskData:
    """The demonstrations of one task profile, by reference: a worker reopens them from the cache."""

    task: str
    profile: str
    cache_root: str
    demos_key: str  # artifact "demos": splits + encoder spec, no ground truth
    truth_key: str  # artifact "truth": ground-truth rewards/labels of val and test items (scorer only)
    summary: dict = field(default_factory=dict)  # facts for the leaderboard (sizes, split hashes, policy stats)
    artifacts: dict = field(default_factory=dict)  # other artifact keys by kind, e.g. {"policies": key}

    def to_json(self) -> dict:
        return {
            "task": self.task,
            "profile": self.profile,
            "cache_root": self.cache_root,
            "demos_key": self.demos_key,
            "truth_key": self.truth_key,
            "summary": self.summary,
            "artifacts": self.artifacts,
        }

    @classmethod
    def from_json(cls, obj: dict) -> "TaskData":
        return cls(**obj)

    @property
    def ref(self) -> "TaskRef":
        return TaskRef(self.task, self.profile, self.cache_root, self.demos_key, self.truth_key, self.artifacts)

    def demos(self) -> "Demonstrations":
        return self.ref.demos()


@dataclass(frozen=True)
class TaskRef:
    """What a trial carries to its worker: the task's artifacts by key, without the leaderboard summary."""

    task: str
    profile: str
    cache_root: str
    demos_key: str
    truth_key: str
    artifacts: dict = field(default_factory=dict)

    def to_json(self) -> dict:
        return {"task": self.task, "profile": self.profile, "cache_root": self.cache_root,
                "demos_key": self.demos_key, "truth_key": self.truth_key, "artifacts": self.artifacts}

    @classmethod
    def from_json(cls, obj: dict) -> "TaskRef":
        return cls(**obj)

    def cache(self) -> ArtifactCache:
        return ArtifactCache(self.cache_root)

    def demos(self) -> "Demonstrations":
        return Demonstrations.from_artifact(self.cache().load("demos", self.demos_key))


@dataclass(frozen=True)
class Demonstrations:
    splits: dict[str, Split]
    encoder: dict  # spec from which bench.kit.reward_models.make_encoder rebuilds the feature encoder

    @classmethod
    def from_artifact(cls, artifact: Artifact) -> "Demonstrations":
        obj = artifact.read_json("demos.json")
        return cls(splits={s: Split.from_json(obj["splits"][s]) for s in SPLITS}, encoder=obj["encoder"])

    def to_json(self) -> dict:
        return {"splits": {s: self.splits[s].to_json() for s in SPLITS}, "encoder": self.encoder}
