"""The implicit reward of KL-regularised RLHF (training-free; the analytic baseline of DPO and reward-bench):

    r̂(x, y) = β · log π_E(y|x) / π₀(y|x)

The optimum of E[r] − β·KL(π‖π₀) is π_E ∝ π₀·exp(r/β), so this recovers the expert's reward exactly up to a
per-prompt constant (β log Z_x) whenever the expert really is that optimum. It needs both models, which an
auditor holds, and no demonstrations at all.
"""

from dataclasses import dataclass

import numpy as np

from bench.config import param
from bench.kit.interface import IRLMethod
from bench.registry import register_method


@dataclass
class ImplicitConfig:
    beta: float = param(1.0, low=1e-4, high=100.0, log=True, tune=False, help="KL coefficient β (a scale only)")


class ImplicitReward:
    def __init__(self, base, expert, beta: float):
        self.base, self.expert, self.beta = base, expert, beta

    def score(self, prompts, completions):
        return self.beta * (np.asarray(self.expert.sum_logprobs(prompts, completions))
                            - np.asarray(self.base.sum_logprobs(prompts, completions)))


@register_method("implicit")
class Implicit(IRLMethod):
    description = "training-free implicit reward beta*log(pi_E/pi_0): exact for KL-regularised RLHF up to a shift"
    Config = ImplicitConfig
    needs_policies = True

    def fit(self, train, model, cfg, ctx):
        return ImplicitReward(ctx.policies["base"], ctx.policies["expert"], cfg.beta)
