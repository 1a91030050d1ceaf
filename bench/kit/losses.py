"""Losses on reward margins Δ = r̂(x, y⁺) − r̂(x, y⁻), shared by the methods that use them, and the norm bound
that keeps a loss linear in Δ from diverging."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from bench.config import param


def bradley_terry_loss(d: torch.Tensor, temperature: float) -> torch.Tensor:
    """Per-pair negative log-likelihood of the preference under Bradley–Terry: −log σ(Δ / T)."""
    return -F.logsigmoid(d / temperature)


def asymmetric_margin_loss(d: torch.Tensor, w_pos: float = 1.0, w_neg: float = 2.0) -> torch.Tensor:
    """The predecessor's max-margin loss per pair: −w₊·Δ if Δ > 0, −w₋·Δ otherwise; wrong orderings cost w₋/w₊
    times as much as right ones gain."""
    return torch.where(d > 0, -w_pos * d, -w_neg * d)


def positive_slope():
    """The config field of w₊, declared once for every method with an asymmetric-margin objective."""
    return param(1.0, low=0.0, high=10.0, help="slope for correctly ordered pairs (w₊)")


def negative_slope():
    """The config field of w₋ (see `positive_slope`)."""
    return param(2.0, low=0.0, high=10.0, help="slope for wrongly ordered pairs (w₋)")


def project_onto_ball(parameters, radius: float) -> None:
    """Scale the parameters (jointly) back onto the L2 ball of `radius` if they left it."""
    params = list(parameters)
    with torch.no_grad():
        norm = torch.sqrt(sum((p**2).sum() for p in params))
        if norm > radius:
            for p in params:
                p.mul_(radius / norm)
