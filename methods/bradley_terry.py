"""Uniform Bradley–Terry / maximum-entropy IRL: every pair weighted equally,

    L = −mean_i log σ(Δ_i / T),    Δ_i = r̂(x_i, y_i⁺) − r̂(x_i, y_i⁻)

the likelihood of the demonstrations when the expert prefers y⁺ with probability σ(Δ/T). T = 0.1 in the
FA-IRL group's code.
"""

from dataclasses import dataclass

from bench.config import param
from bench.kit.losses import bradley_terry_loss
from bench.kit.training import PairwiseMethod, TrainConfig
from bench.registry import register_method


@dataclass
class BradleyTerryConfig(TrainConfig):
    temperature: float = param(0.1, low=0.01, high=10.0, log=True, help="T in σ(Δ/T)")


@register_method("bradley_terry")
class BradleyTerry(PairwiseMethod):
    description = "uniform Bradley-Terry (MaxEnt) IRL: -log sigmoid(margin / T), all pairs weighted equally"
    Config = BradleyTerryConfig

    def loss(self, margins, cfg):
        return bradley_terry_loss(margins, cfg.temperature)
