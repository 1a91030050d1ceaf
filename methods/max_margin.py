"""Max-margin IRL, the predecessor's asymmetric loss (Joselowitz et al., arXiv 2410.12491).

    L(Δ) = −w₊·Δ if Δ > 0,  −w₋·Δ if Δ < 0,    Δ = r̂(x, y⁺) − r̂(x, y⁻),  (w₊, w₋) = (1, 2)

The loss is linear in Δ, so it is unbounded below: scaling r̂ up always lowers it. The paper's code simply stops
after a few epochs. Here the head's weights are projected back onto an L2 ball of radius `norm_bound` after every
step, which makes the optimum well defined (a direction, as in a hard-margin SVM).
"""

from dataclasses import dataclass

import torch

from bench.config import param
from bench.registry import register_method
from bench.reward_models import make_head
from bench.training import IRLMethod, TrainConfig, encode_pairs, train_pairwise


@dataclass
class MaxMarginConfig(TrainConfig):
    positive_weight: float = param(1.0, low=0.0, high=10.0, help="slope for correctly ordered pairs (w₊)")
    negative_weight: float = param(2.0, low=0.0, high=10.0, help="slope for wrongly ordered pairs (w₋)")
    norm_bound: float = param(10.0, low=0.01, high=1000.0, log=True, help="L2 radius the head is projected onto")


def asymmetric_margin_loss(d: torch.Tensor, w_pos: float = 1.0, w_neg: float = 2.0) -> torch.Tensor:
    """Per-pair loss; wrong orderings cost w₋/w₊ times as much as right ones gain."""
    return torch.where(d > 0, -w_pos * d, -w_neg * d)


def project_onto_ball(parameters, radius: float) -> None:
    params = list(parameters)
    with torch.no_grad():
        norm = torch.sqrt(sum((p**2).sum() for p in params))
        if norm > radius:
            for p in params:
                p.mul_(radius / norm)


@register_method("max_margin")
class MaxMargin(IRLMethod):
    description = "asymmetric max-margin IRL of the predecessor paper, with a norm bound so it cannot diverge"
    Config = MaxMarginConfig

    def fit(self, train, model, cfg, ctx):
        model.head = make_head(cfg.head, model.encoder.dim, cfg.hidden).to(ctx.device)
        train_pairs = encode_pairs(model, train, ctx.device)
        val_pairs = encode_pairs(model, ctx.val, ctx.device)

        def loss(d, _idx):
            return asymmetric_margin_loss(d, cfg.positive_weight, cfg.negative_weight).mean()

        train_pairwise(
            model, loss, train_pairs, val_pairs, cfg, ctx,
            project=lambda: project_onto_ball(model.head.parameters(), cfg.norm_bound),
        )
        return model
