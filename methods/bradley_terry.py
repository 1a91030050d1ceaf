"""Uniform Bradley–Terry / maximum-entropy IRL: every pair weighted equally,

    L = −mean_i log σ(Δ_i / T),    Δ_i = r̂(x_i, y_i⁺) − r̂(x_i, y_i⁻)

the likelihood of the demonstrations when the expert prefers y⁺ with probability σ(Δ/T). T = 0.1 in the
FA-IRL group's code.
"""

from dataclasses import dataclass

import torch.nn.functional as F

from bench.config import param
from bench.registry import register_method
from bench.reward_models import make_head
from bench.training import IRLMethod, TrainConfig, encode_pairs, train_pairwise


@dataclass
class BradleyTerryConfig(TrainConfig):
    temperature: float = param(0.1, low=0.01, high=10.0, log=True, help="T in σ(Δ/T)")


def bradley_terry_loss(d, temperature: float):
    """Per-pair negative log-likelihood of the preference."""
    return -F.logsigmoid(d / temperature)


@register_method("bradley_terry")
class BradleyTerry(IRLMethod):
    description = "uniform Bradley-Terry (MaxEnt) IRL: -log sigmoid(margin / T), all pairs weighted equally"
    Config = BradleyTerryConfig

    def fit(self, train, model, cfg, ctx):
        model.head = make_head(cfg.head, model.encoder.dim, cfg.hidden).to(ctx.device)
        train_pairs = encode_pairs(model, train, ctx.device)
        val_pairs = encode_pairs(model, ctx.val, ctx.device)
        train_pairwise(model, lambda d, _idx: bradley_terry_loss(d, cfg.temperature).mean(), train_pairs, val_pairs, cfg, ctx)
        return model
