"""The method interface: what an IRL method receives and what it returns.

A method (methods/<name>.py) subclasses `IRLMethod` (or `PairwiseMethod` in bench/kit/training.py, for methods
that are a loss on reward margins), declares a `Config` dataclass and registers with `@register_method("name")`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, ClassVar, Protocol

import numpy as np
import torch

from bench.data import PreferencePairs, RewardFunction
from bench.kit.reward_models import RewardModel


@dataclass
class FitContext:
    """What a method may use besides its training pairs. Never holds the ground-truth reward, except for methods
    that declare `needs_ground_truth` (the `oracle` baseline)."""

    seed: int
    device: torch.device
    val: PreferencePairs
    report: Callable[..., None]
    ground_truth: RewardFunction | None = None
    policies: dict | None = None  # {"base": π₀, "expert": π_E}, for methods that declare `needs_policies`


class PolicyLogProb(Protocol):
    """What a method may ask of a policy: log π(y|x) of whole completions."""

    def sum_logprobs(self, prompts: list[str], completions: list[str]) -> np.ndarray: ...


class IRLMethod:
    """Base class of registered methods (see methods/). `fit` returns anything with `score(prompts, completions)`.

    A method sees its training pairs and the FitContext. Declaring `needs_policies` adds the audited expert and
    its base model (an auditor has both); only `needs_ground_truth` (the oracle) adds R*."""

    name: ClassVar[str]
    description: ClassVar[str] = ""
    Config: ClassVar[type]
    needs_ground_truth: ClassVar[bool] = False
    needs_policies: ClassVar[bool] = False

    def fit(self, train: PreferencePairs, model: RewardModel, cfg, ctx: FitContext) -> RewardFunction:
        raise NotImplementedError
