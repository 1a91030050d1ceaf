"""The task interface: a task turns a profile's settings into demonstrations (and a quarantined ground truth).

A task (a module or package under tasks/) subclasses `Task`, declares a `Config` dataclass (see bench/config.py)
and its named `profiles` (setting overrides), registers itself with `@register_task("name")` and is listed in the
`irl_bench.tasks` entry-point group. Two optional hooks keep the core free of any one task's vocabulary:
`realignment` (an object with `mode`, `spec` and `run_trial`, e.g. bench/lm/realign_trial.py) lets `bench run`
re-align a policy with each recovered reward, and report sections registered in the `irl_bench.report_sections`
entry-point group under the task's name add the task's own tables and figures to its leaderboard.

Ground truth goes into a `truth` artifact whose `truth.json` has, for the val and test splits, one entry per item
(aligned with the split's `Completions`): `reward` (R*, higher is better) and `label` (1 = bad, e.g. toxic).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import ClassVar

from bench import config as configs
from bench.data import Demonstrations, RewardFunction, TaskData, TaskRef
from bench.errors import BadInput
from bench.storage.artifacts import ArtifactCache


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
    # Re-alignment of π₀ with each recovered reward (bench/lm/realign_trial.py), for tasks with policies; None: none.
    realignment: ClassVar[object | None] = None

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

    def ground_truth(self, data: TaskRef) -> RewardFunction:
        """R* as a scoring function, for the scorer and the `oracle` baseline only."""
        raise NotImplementedError

    def policies(self, data: TaskRef) -> dict:
        """{"base": π₀, "expert": π_E}, each with `sum_logprobs(prompts, completions)`; for methods that declare
        `needs_policies` (e.g. the implicit reward). Not ground truth: an auditor holds both models."""
        raise NotImplementedError(f"task {self.name} does not expose its policies")


def hash_texts(texts: list[str], length: int = 24) -> str:
    """The one fingerprint of an ordered list of texts (prompts, a corpus) used in artifact keys."""
    return hashlib.sha256("\n".join(texts).encode()).hexdigest()[:length]


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
