"""Reference points every IRL method is measured against.

`random` is the null: an i.i.d. random score per completion (fixed by seed and text), carrying no information.
`oracle` is the ground-truth reward itself, the best any method can do; it is the one registered method that
declares `needs_ground_truth`, so the runner hands it the task's ground truth and no other method ever sees it.
"""

from dataclasses import dataclass

from bench.registry import register_method
from bench.reward_models import RandomReward
from bench.training import IRLMethod


@dataclass
class NoConfig:
    """This baseline has no settings."""


@register_method("random")
class Random(IRLMethod):
    description = "null baseline: an i.i.d. random score per completion (expected ROC-AUC 0.5)"
    Config = NoConfig

    def fit(self, train, model, cfg, ctx):
        return RandomReward(ctx.seed)


@register_method("oracle")
class Oracle(IRLMethod):
    description = "upper reference: the ground-truth reward R* itself (STARC distance 0)"
    Config = NoConfig
    needs_ground_truth = True

    def fit(self, train, model, cfg, ctx):
        return ctx.ground_truth
