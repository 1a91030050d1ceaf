"""Reference points every IRL method is measured against.

`random` is the null: an i.i.d. random score per completion (fixed by seed and text), carrying no information.
`length` scores a completion by its length alone, in the direction the training pairs prefer: a reward that
"wins" through length is a confound, not a recovered reward (reward-bench's length-only baseline).
`oracle` is the ground-truth reward itself, the best any method can do; it is the one registered method that
declares `needs_ground_truth`, so the runner hands it the task's ground truth and no other method ever sees it.
"""

from dataclasses import dataclass

import numpy as np

from bench.kit.interface import IRLMethod
from bench.kit.reward_models import RandomReward
from bench.registry import register_method


@dataclass
class NoConfig:
    """This baseline has no settings."""


@register_method("random")
class Random(IRLMethod):
    description = "null baseline: an i.i.d. random score per completion (expected ROC-AUC 0.5)"
    Config = NoConfig

    def fit(self, train, model, cfg, ctx):
        return RandomReward(ctx.seed)


class LengthReward:
    def __init__(self, sign: float):
        self.sign = sign

    def score(self, prompts, completions):
        return self.sign * np.array([len(c.split()) for c in completions], dtype=float)


@register_method("length")
class Length(IRLMethod):
    description = "length-only baseline: +/- the completion's word count, direction fitted on the training pairs"
    Config = NoConfig

    def fit(self, train, model, cfg, ctx):
        longer = np.mean([len(c.split()) - len(r.split()) for c, r in zip(train.chosen, train.rejected)])
        return LengthReward(1.0 if longer >= 0 else -1.0)


@register_method("oracle")
class Oracle(IRLMethod):
    description = "upper reference: the ground-truth reward R* itself (STARC distance 0)"
    Config = NoConfig
    needs_ground_truth = True

    def fit(self, train, model, cfg, ctx):
        return ctx.ground_truth
