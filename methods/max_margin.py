"""Max-margin IRL, the predecessor's asymmetric loss (Joselowitz et al., arXiv 2410.12491).

    L(Δ) = −w₊·Δ if Δ > 0,  −w₋·Δ if Δ < 0,    Δ = r̂(x, y⁺) − r̂(x, y⁻),  (w₊, w₋) = (1, 2)

The loss is linear in Δ, so it is unbounded below: scaling r̂ up always lowers it. The paper's code simply stops
after a few epochs. Here the head's weights are projected back onto an L2 ball of radius `norm_bound` after every
step, which makes the optimum well defined (a direction, as in a hard-margin SVM).
"""

from dataclasses import dataclass

from bench.config import param
from bench.kit.losses import asymmetric_margin_loss, negative_slope, positive_slope, project_onto_ball
from bench.kit.training import PairwiseMethod, TrainConfig
from bench.registry import register_method


@dataclass
class MaxMarginConfig(TrainConfig):
    positive_weight: float = positive_slope()
    negative_weight: float = negative_slope()
    norm_bound: float = param(10.0, low=0.01, high=1000.0, log=True, help="L2 radius the head is projected onto")


@register_method("max_margin")
class MaxMargin(PairwiseMethod):
    description = "asymmetric max-margin IRL of the predecessor paper, with a norm bound so it cannot diverge"
    Config = MaxMarginConfig

    def loss(self, margins, cfg):
        return asymmetric_margin_loss(margins, cfg.positive_weight, cfg.negative_weight)

    def constrain(self, model, cfg):
        project_onto_ball(model.head.parameters(), cfg.norm_bound)
