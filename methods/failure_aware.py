"""Failure-aware IRL (FA-IRL; Patel et al., arXiv 2510.06092) — a documented reconstruction.

What the paper states, and this module follows:
  * failures are the pairs the *current learned reward* gets wrong (Δ < 0) or scores as near-ties (small |Δ|);
    they are found without any ground truth or external classifier;
  * a dual-path reward: a base path plus a correction component trained on the failures;
  * failures get tighter margins / sharper temperatures than the other pairs;
  * a curriculum from clear errors to subtle near-ties.

What the paper does not publish, and is therefore OURS (every item a config field with a search range):
  * the near-tie threshold δ: adaptive, the `tie_quantile` quantile of |Δ| over the training pairs, recomputed at
    the start of every stage;
  * the correction path: a second head of the same architecture, r̂ = r̂_base + α·r̂_corr, initialised to output
    zero; the base path is frozen during correction unless `train_base`;
  * the failure loss: sharpened Bradley–Terry −log σ(Δ / (s·T)) with s = `sharpen` < 1 when the base objective is
    Bradley–Terry, or the tighter hinge max(0, γ + δ − Δ) when it is max-margin; weight λ = `failure_weight`;
  * the curriculum: failures sorted by Δ ascending (clearest errors first); stage k of K admits the first k/K of
    them, so the last stage includes the subtlest near-ties;
  * warm-up, stage lengths, learning rates: `warmup_epochs`, `stages`, `stage_epochs`, and the shared trainer's;
  * the max-margin base objective is the predecessor's asymmetric loss with the slopes `positive_weight` /
    `negative_weight` of this config (declared as in methods/max_margin.py).

The algorithm:
  1. warm start: fit the base path with the standard objective L_std;
  2. for k = 1..K: Δ ← margins under r̂; δ ← quantile(|Δ|, q); F ← {i : Δ_i < δ} sorted by Δ; F_k ← first k/K of F;
     minimise mean_i [ L_std(Δ_i) + λ·1[i ∈ F_k]·L_fail(Δ_i) ] over the correction path;
  3. return r̂ = r̂_base + α·r̂_corr, with the weights of the best of the warm start and the K stages by validation
     pair accuracy (the shared trainer's criterion; a later stage wins a tie), so a curriculum that does not help
     falls back to the warm-started reward.

Each stage trains for at most `stage_epochs` and keeps its own best epoch (`train_pairwise`); stage k+1 starts from
stage k's result. `failure_aware_ablation` (methods/failure_aware_ablation.py) is the same fit with λ = 0.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from bench.config import param
from bench.kit.interface import IRLMethod
from bench.kit.losses import (
    asymmetric_margin_loss,
    bradley_terry_loss,
    negative_slope,
    positive_slope,
    project_onto_ball,
)
from bench.kit.reward_models import SumOfRewards, make_head
from bench.kit.training import BestStage, OptimiserConfig, encode_pairs, margins, train_pairwise
from bench.registry import register_method


@dataclass
class StagedConfig(OptimiserConfig):
    """The warm start and the staged correction, without the failure loss (the ablation's whole config)."""

    base_objective: str = param("bradley_terry", choices=["bradley_terry", "max_margin"], help="L_std")
    temperature: float = param(0.1, low=0.01, high=10.0, log=True, help="T of the Bradley-Terry objective")
    positive_weight: float = positive_slope()
    negative_weight: float = negative_slope()
    norm_bound: float = param(10.0, low=0.01, high=1000.0, log=True, help="L2 bound per path (max-margin base)")
    warmup_epochs: int = param(40, low=1, high=10000, log=True, search=(5, 100),
                               help="epochs of the warm start (base path only)")
    stages: int = param(3, low=1, high=10, help="curriculum stages K, clear errors first, near-ties last")
    stage_epochs: int = param(15, low=1, high=10000, log=True, search=(3, 50), help="epochs per curriculum stage")
    correction_scale: float = param(1.0, low=0.01, high=10.0, log=True, help="α in r̂_base + α·r̂_corr")
    train_base: bool = param(False, choices=[False, True], help="also update the base path during correction")


@dataclass
class FailureAwareConfig(StagedConfig):
    tie_quantile: float = param(0.2, low=0.0, high=0.9, help="δ = this quantile of |Δ| (adaptive near-tie band)")
    failure_weight: float = param(1.0, low=0.0, high=20.0, help="λ, weight of the failure loss")
    sharpen: float = param(0.5, low=0.05, high=1.0, help="failure temperature = sharpen × T (Bradley-Terry base)")
    failure_margin: float = param(0.1, low=0.0, high=10.0, help="γ of the tighter hinge (max-margin base)")


def curriculum(d: torch.Tensor, tie_quantile: float, stage: int, stages: int) -> tuple[torch.Tensor, float]:
    """Mask of the failures admitted at `stage` (1-based) and the adaptive near-tie threshold δ."""
    delta = float(torch.quantile(d.abs(), tie_quantile)) if tie_quantile > 0 else 0.0
    failures = torch.nonzero(d < delta).squeeze(-1)
    ordered = failures[torch.argsort(d[failures])]  # most negative Δ (clearest error) first
    admitted = ordered[: math.ceil(len(ordered) * stage / stages)]
    mask = torch.zeros_like(d, dtype=torch.bool)
    mask[admitted] = True
    return mask, delta


def standard_objective(cfg: StagedConfig):
    """L_std per pair, from the config: Bradley–Terry at temperature T, or the asymmetric margin loss (w₊, w₋)."""
    if cfg.base_objective == "bradley_terry":
        return lambda d: bradley_terry_loss(d, cfg.temperature)
    return lambda d: asymmetric_margin_loss(d, cfg.positive_weight, cfg.negative_weight)


@register_method("failure_aware")
class FailureAware(IRLMethod):
    description = "failure-aware IRL (reconstruction): warm start, then a correction path trained on failures"
    Config = FailureAwareConfig

    def fit(self, train, model, cfg, ctx):
        dim = model.encoder.dim
        base = make_head(cfg.head, dim, cfg.hidden).to(ctx.device)
        correction = make_head(cfg.head, dim, cfg.hidden).to(ctx.device)
        with torch.no_grad():  # the correction path starts at zero: r̂ equals the warm-started base at first
            list(correction.parameters())[-1].zero_()
        model.head = SumOfRewards(base, correction, cfg.correction_scale)
        train_pairs = encode_pairs(model, train, ctx.device)
        val_pairs = encode_pairs(model, ctx.val, ctx.device)
        standard_loss = standard_objective(cfg)

        def bound_paths():
            if cfg.base_objective == "max_margin":
                project_onto_ball(base.parameters(), cfg.norm_bound)
                project_onto_ball(correction.parameters(), cfg.norm_bound)

        # 1. warm start: the base path alone, standard objective
        best = BestStage()
        accuracy = train_pairwise(
            model, lambda d, _idx: standard_loss(d).mean(), train_pairs, val_pairs, cfg, ctx,
            parameters=base.parameters(), project=bound_paths, stage="warmup", epochs=cfg.warmup_epochs,
        )
        best.offer(0, accuracy, model)
        # 2. curriculum over failures found by the current reward
        trainable = list(correction.parameters()) + (list(base.parameters()) if cfg.train_base else [])
        with torch.no_grad():
            warm = margins(model, train_pairs)
        for stage in range(1, cfg.stages + 1):
            with torch.no_grad():
                d_all = margins(model, train_pairs)
            loss, found = self.stage_loss(d_all, stage, cfg, standard_loss)
            accuracy = train_pairwise(
                model, loss, train_pairs, val_pairs, cfg, ctx,
                parameters=trainable, project=bound_paths, stage=f"curriculum-{stage}", epochs=cfg.stage_epochs,
            )
            best.offer(stage, accuracy, model)
            # what the stage found at its start, and the validation accuracy it reached (see the leaderboard)
            ctx.report(diagnostic=f"stage {stage}", training_errors=int((d_all < 0).sum()), **found,
                       correction_scale=cfg.correction_scale, stage_val_pair_accuracy=accuracy)
        # 3. the best of the warm start and the stages
        best.restore(model)
        with torch.no_grad():
            final = margins(model, train_pairs)
        ctx.report(diagnostic="after the curriculum", best_stage=best.stage, warmup_kept=int(best.stage == 0),
                   **moved_from(warm, final))
        return model

    def stage_loss(self, d_all: torch.Tensor, stage: int, cfg, standard_loss):
        """The loss of curriculum `stage` given the training margins Δ at its start, and what it found there."""
        in_stage, delta = curriculum(d_all, cfg.tie_quantile, stage, cfg.stages)

        def failure_loss(d):
            if cfg.base_objective == "bradley_terry":
                return bradley_terry_loss(d, cfg.sharpen * cfg.temperature)
            return F.relu(cfg.failure_margin + delta - d)

        def loss(d, idx):
            weight = cfg.failure_weight * in_stage[idx].to(d.dtype)
            return (standard_loss(d) + weight * failure_loss(d)).mean()

        with torch.no_grad():
            weighted = cfg.failure_weight * in_stage.to(d_all.dtype) * failure_loss(d_all)
            # |L_std|: the max-margin loss is negative on correctly ordered pairs
            share = float(weighted.sum() / (standard_loss(d_all).abs().sum() + weighted.sum()))
        return loss, {"failures": int(in_stage.sum()), "misclassified": int((in_stage & (d_all < 0)).sum()),
                      "near_ties": int((in_stage & (d_all >= 0)).sum()), "near_tie_threshold": delta,
                      "failure_loss_share": share}


def moved_from(warm: torch.Tensor, final: torch.Tensor) -> dict:
    """How far the curriculum moved r̂ from the warm start, on the training pairs' margins: 1 − their Pearson
    correlation (0: only rescaled) and the relative L2 change; and how many pairs it flipped each way."""
    w, f = warm - warm.mean(), final - final.mean()
    corr = float((w * f).sum() / (w.norm() * f.norm())) if w.norm() > 0 and f.norm() > 0 else 1.0
    return {"margin_decorrelation": 1.0 - corr,
            "margin_relative_change": float((final - warm).norm() / warm.norm()) if warm.norm() > 0 else 0.0,
            "fixed_pairs": int(((warm < 0) & (final > 0)).sum()), "broken_pairs": int(((warm > 0) & (final < 0)).sum())}
