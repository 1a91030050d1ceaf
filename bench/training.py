"""Shared machinery for methods that learn from preference pairs: the method interface, the fit context, and one
training loop (minibatches, Adam, early stopping on validation pair accuracy, progress reports).

A method supplies only its loss on reward margins Δ = r̂(y⁺) − r̂(y⁻); everything else lives here once.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Callable, ClassVar, Protocol

import numpy as np
import torch
from torch import nn

from bench.config import param
from bench.data import PreferencePairs
from bench.reward_models import RewardFunction, RewardModel


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


@dataclass
class TrainConfig:
    """Knobs every pairwise-trained method shares."""

    lr: float = param(0.01, low=1e-5, high=1.0, log=True, search=(1e-3, 0.1), help="Adam learning rate")
    epochs: int = param(60, low=1, high=10000, log=True, search=(10, 150), help="maximum passes over the pairs")
    batch_size: int = param(64, low=1, high=65536, log=True, search=(16, 256), help="pairs per step")
    weight_decay: float = param(0.0, low=0.0, high=0.1, help="decoupled L2 penalty (AdamW)")
    patience: int = param(15, low=1, high=1000, tune=False, help="epochs without a validation gain before stopping")
    head: str = param("linear", choices=["linear", "mlp"], help="reward head over the features")
    hidden: int = param(64, low=4, high=1024, log=True, tune=False, help="hidden width of the mlp head")


@dataclass(frozen=True)
class PairTensors:
    chosen: torch.Tensor  # features of y⁺, one row per pair
    rejected: torch.Tensor

    def __len__(self) -> int:
        return self.chosen.shape[0]


def encode_pairs(model: RewardModel, pairs: PreferencePairs, device: torch.device) -> PairTensors:
    return PairTensors(
        chosen=model.features(pairs.prompts, pairs.chosen).to(device),
        rejected=model.features(pairs.prompts, pairs.rejected).to(device),
    )


def margins(reward: nn.Module, pairs: PairTensors) -> torch.Tensor:
    return reward(pairs.chosen).squeeze(-1) - reward(pairs.rejected).squeeze(-1)


@torch.no_grad()
def pair_accuracy(reward: nn.Module, pairs: PairTensors) -> float:
    """Share of pairs ordered correctly; a tie counts one half."""
    d = margins(reward, pairs)
    return float(((d > 0).double() + 0.5 * (d == 0).double()).mean())


LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (margins of a batch, their pair indices) -> loss


def train_pairwise(
    reward: nn.Module,
    loss_fn: LossFn,
    train: PairTensors,
    val: PairTensors,
    cfg: TrainConfig,
    ctx: FitContext,
    *,
    parameters=None,
    project: Callable[[], None] | None = None,
    stage: str = "fit",
    epochs: int | None = None,
) -> float:
    """Minimise `loss_fn` over minibatches of `train`; keep the weights with the best validation pair accuracy.

    `parameters` restricts what is trained (default: all of `reward`); `project` runs after every step (e.g. a
    norm bound). Returns the best validation pair accuracy.
    """
    params = list(parameters if parameters is not None else reward.parameters())
    optimiser = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    generator = torch.Generator().manual_seed(ctx.seed)
    # Only states reached by this call compete: a stage always returns a model it trained.
    best_acc, best_state, since_best = -1.0, None, 0
    for epoch in range(epochs if epochs is not None else cfg.epochs):
        order = torch.randperm(len(train), generator=generator).to(train.chosen.device)
        for start in range(0, len(train), cfg.batch_size):
            idx = order[start : start + cfg.batch_size]
            batch = PairTensors(train.chosen[idx], train.rejected[idx])
            loss = loss_fn(margins(reward, batch), idx)
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            if project is not None:
                project()
        acc = pair_accuracy(reward, val)
        ctx.report(stage=stage, epoch=epoch, loss=float(loss.detach()), val_pair_accuracy=acc)
        if acc > best_acc:
            since_best = 0
        else:
            since_best += 1
        if acc >= best_acc:  # on a plateau keep training: later weights have larger margins
            best_acc, best_state = acc, copy.deepcopy(reward.state_dict())
        if since_best >= cfg.patience:
            break
    if best_state is not None:
        reward.load_state_dict(best_state)
    return best_acc
