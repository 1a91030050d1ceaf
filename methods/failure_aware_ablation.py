"""The ablation of failure-aware IRL (methods/failure_aware.py): the same fit with the failure loss off (λ = 0).

The warm start, the zero-initialised correction path r̂ = r̂_base + α·r̂_corr, the K stages of `stage_epochs` each
and the choice of the best stage by validation are all failure_aware's; every stage trains the correction path on
the standard objective L_std alone, so the budget is the same and its row shows what the failure stage adds. Its
config is failure_aware's without the failure-only settings (δ's quantile, λ, the sharpening, the hinge margin γ).
"""

from __future__ import annotations

import torch

from bench.registry import register_method
from methods.failure_aware import FailureAware, StagedConfig


@register_method("failure_aware_ablation")
class FailureAwareAblation(FailureAware):
    description = "failure_aware with the failure loss off (lambda = 0): same warm start, stages and epochs"
    Config = StagedConfig

    def stage_loss(self, d_all: torch.Tensor, stage: int, cfg, standard_loss):
        """Every stage minimises mean L_std over the correction path; no failures are sought."""
        return lambda d, _idx: standard_loss(d).mean(), {}
