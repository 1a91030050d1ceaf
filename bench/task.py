"""The task interface: a task turns a profile's settings into demonstrations (and a quarantined ground truth).

A task module (tasks/<name>.py) subclasses `Task`, declares a `Config` dataclass (see bench.config.param) and its
named `profiles` (setting overrides), and registers itself with `@register_task("name")`.

Ground truth goes into a `truth` artifact whose `truth.json` has, for the val and test splits, one entry per item
(aligned with the split's `Completions`): `reward` (R*, higher is better) and `label` (1 = bad, e.g. toxic).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import ClassVar

from bench import config as configs
from bench.artifacts import ArtifactCache
from bench.data import Demonstrations, TaskData
from bench.errors import BadInput
from bench.reward_models import RewardFunction


@dataclass(frozen=True)
class Profile:
    description: str
    settings: dict


class Task:
    name: ClassVar[str]
    description: ClassVar[str] = ""
    Config: ClassVar[type]
    profiles: ClassVar[dict[str, Profile]]
    label_name: ClassVar[str] = "bad"  # what label 1 means, for the leaderboard legend
    # True when `build` writes a `rerlhf` artifact (bench/rerlhf.py): π₀ can be re-aligned with a recovered reward.
    supports_rerlhf: ClassVar[bool] = False

    def config(self, profile: str, overrides: dict | None = None):
        if profile not in self.profiles:
            raise BadInput(
                f"task {self.name!r} has no profile {profile!r}; choose from: {', '.join(self.profiles)} "
                f"(see `bench ls profiles`)."
            )
        settings = {**self.profiles[profile].settings, **(overrides or {})}
        return configs.build(self.Config, settings, owner=f"task {self.name}")

    def build(self, profile: str, cfg, cache: ArtifactCache, progress=None) -> TaskData:
        """Build (or reuse) the task's demonstrations and ground truth; return them by artifact key."""
        raise NotImplementedError

    def ground_truth(self, data: TaskData) -> RewardFunction:
        """R* as a scoring function, for the scorer and the `oracle` baseline only."""
        raise NotImplementedError

    def policies(self, data: TaskData) -> dict:
        """{"base": π₀, "expert": π_E}, each with `sum_logprobs(prompts, completions)`; for methods that declare
        `needs_policies` (e.g. the implicit reward). Not ground truth: an auditor holds both models."""
        raise NotImplementedError(f"task {self.name} does not expose its policies")


def split_fingerprints(demos: Demonstrations) -> dict[str, str]:
    """A hash of each split's prompt set; the splits must not share a prompt."""
    prompt_sets = {name: set(split.items.prompts) for name, split in demos.splits.items()}
    names = list(prompt_sets)
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            shared = prompt_sets[a] & prompt_sets[b]
            if shared:
                raise RuntimeError(f"splits {a} and {b} share {len(shared)} prompts, e.g. {next(iter(shared))!r}")
    return {
        name: hashlib.sha256("\n".join(sorted(prompts)).encode()).hexdigest()[:16]
        for name, prompts in prompt_sets.items()
    }
