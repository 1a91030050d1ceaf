"""Shared machinery for methods that learn from preference pairs: one training loop (minibatches, AdamW, early
stopping on validation pair accuracy, progress reports) and `PairwiseMethod`, the fit of a method that is its loss.

A pairwise method supplies only its per-pair loss on reward margins Δ = r̂(y⁺) − r̂(y⁻) (and, optionally, a
constraint applied after every step); the head, the encoded pairs and the loop live here once.

The trainable-layer class (head "lm_top<k>", bench/kit/lm_top.py) is handled here too, for every method: the
encoded pairs are then row ids of cached lower-layer states, the reward model runs the top k blocks over them, and
every `train_pairwise` call also updates those blocks (at `LR_SCALE` times the head's learning rate), whatever
`parameters` it restricts the heads to — they are the representation every path of the reward reads.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from bench.config import param
from bench.data import PreferencePairs
from bench.kit.interface import FitContext, IRLMethod
from bench.kit.lm_top import upgrade
from bench.kit.reward_models import TOP_HEADS, RewardModel, TopHead, make_head


@dataclass
class OptimiserConfig:
    """Knobs of the shared trainer and head, for methods that set their own number of epochs (e.g. a staged fit)."""

    lr: float = param(0.01, low=1e-5, high=1.0, log=True, search=(1e-3, 0.1), help="Adam learning rate")
    batch_size: int = param(64, low=1, high=65536, log=True, search=(16, 256), help="pairs per step")
    weight_decay: float = param(0.0, low=0.0, high=0.1, help="decoupled L2 penalty (AdamW)")
    patience: int = param(15, low=1, high=1000, tune=False, help="epochs without a validation gain before stopping")
    head: str = param("linear", choices=["linear", "mlp", *TOP_HEADS],
                      help="reward head over the features; lm_top<k>: the LM's last k blocks train with it")
    hidden: int = param(64, low=4, high=1024, log=True, tune=False, help="hidden width of the mlp head")


@dataclass
class TrainConfig(OptimiserConfig):
    """Knobs every method fitted by one `train_pairwise` call shares."""

    epochs: int = param(60, low=1, high=10000, log=True, search=(10, 150), help="maximum passes over the pairs")


@dataclass(frozen=True)
class PairTensors:
    chosen: torch.Tensor  # features of y⁺, one row per pair
    rejected: torch.Tensor

    def __len__(self) -> int:
        return self.chosen.shape[0]


def encode_pairs(model: RewardModel, pairs: PreferencePairs, device: torch.device) -> PairTensors:
    """The pairs' features, or for a head lm_top<k> (which gives `model` the encoder whose top k blocks train with
    it) the row ids of their cached lower-layer states."""
    k = next((m.top_layers for m in model.head.modules() if isinstance(m, TopHead)), None)
    if k is not None:
        model.encoder = upgrade(model.encoder, k).to(device)
        n = len(pairs)
        rows = model.features(list(pairs.prompts) * 2, list(pairs.chosen) + list(pairs.rejected)).to(device)
        return PairTensors(chosen=rows[:n], rejected=rows[n:])
    return PairTensors(
        chosen=model.features(pairs.prompts, pairs.chosen).to(device),
        rejected=model.features(pairs.prompts, pairs.rejected).to(device),
    )


def margins(reward: nn.Module, pairs: PairTensors) -> torch.Tensor:
    return reward(pairs.chosen).squeeze(-1) - reward(pairs.rejected).squeeze(-1)


@torch.no_grad()
def pair_accuracy(reward: nn.Module, pairs: PairTensors) -> float:
    """Share of pairs ordered correctly; a tie counts one half."""
    return _validation(reward, pairs)[0]


@torch.no_grad()
def _validation(reward: nn.Module, pairs: PairTensors) -> tuple[float, dict]:
    """Pair accuracy, and the reward's margin and scale (as TRL's reward trainer logs them: a loss that is linear
    in Δ can lower itself by growing the scale alone, which these numbers show), from one pass over the pairs."""
    chosen, rejected = reward(pairs.chosen).squeeze(-1), reward(pairs.rejected).squeeze(-1)
    d = chosen - rejected
    both = torch.cat([chosen, rejected])
    return float(((d > 0).double() + 0.5 * (d == 0).double()).mean()), {
        "val_margin_mean": float(d.mean()), "val_reward_mean": float(both.mean()),
        "val_reward_std": float(both.std()) if len(both) > 1 else 0.0}


LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (margins of a batch, their pair indices) -> loss


def train_pairwise(
    reward: nn.Module,
    loss_fn: LossFn,
    train: PairTensors,
    val: PairTensors,
    cfg: OptimiserConfig,
    ctx: FitContext,
    *,
    parameters=None,
    project: Callable[[], None] | None = None,
    stage: str = "fit",
    epochs: int | None = None,
) -> float:
    """Minimise `loss_fn` over minibatches of `train`; keep the weights with the best validation pair accuracy.

    `parameters` restricts what is trained (default: all of `reward`); `project` runs after every step (e.g. a
    norm bound); `epochs` overrides `cfg.epochs` (a config without that field must pass it). Returns the best
    validation pair accuracy.
    """
    params = list(parameters if parameters is not None else reward.parameters())
    encoder = getattr(reward, "encoder", None)
    if isinstance(encoder, nn.Module):  # trainable layers: always trained, at their own (smaller) learning rate
        layers = [p for p in encoder.parameters() if p.requires_grad]
        params = [{"params": [p for p in params if all(p is not q for q in layers)]},
                  {"params": layers, "lr": cfg.lr * encoder.lr_scale}]
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
        acc, scale = _validation(reward, val)
        ctx.report(stage=stage, epoch=epoch, loss=float(loss.detach()), val_pair_accuracy=acc, **scale)
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


class BestStage:
    """The best model over the stages of a staged fit (each a `train_pairwise` call), by the trainer's own criterion:
    validation pair accuracy, a later stage winning a tie as a later epoch does. `restore` loads the winner."""

    def __init__(self):
        self.stage, self.accuracy, self.state = None, -1.0, None

    def offer(self, stage, accuracy: float, reward: nn.Module) -> None:
        if accuracy >= self.accuracy:
            self.stage, self.accuracy, self.state = stage, accuracy, copy.deepcopy(reward.state_dict())

    def restore(self, reward: nn.Module) -> None:
        reward.load_state_dict(self.state)


class PairwiseMethod(IRLMethod):
    """A method that is its loss: a fresh head (`cfg.head`) over the encoder's features, trained on the encoded
    training pairs by `train_pairwise` to minimise the mean of `loss(Δ, cfg)`; `constrain` runs after every step."""

    Config = TrainConfig

    def loss(self, margins: torch.Tensor, cfg) -> torch.Tensor:
        """Per-pair loss on the margins Δ of a batch."""
        raise NotImplementedError

    def constrain(self, model: RewardModel, cfg) -> None:
        """Called after every optimiser step (e.g. to project onto a norm ball); nothing by default."""

    def fit(self, train: PreferencePairs, model: RewardModel, cfg, ctx: FitContext) -> RewardModel:
        model.head = make_head(cfg.head, model.encoder.dim, cfg.hidden).to(ctx.device)
        train_pairs = encode_pairs(model, train, ctx.device)
        val_pairs = encode_pairs(model, ctx.val, ctx.device)
        train_pairwise(model, lambda d, _idx: self.loss(d, cfg).mean(), train_pairs, val_pairs, cfg, ctx,
                       project=lambda: self.constrain(model, cfg))
        return model
