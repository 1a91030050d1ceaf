"""The RLHF recipe's opt-in speed settings (bench/lm/rlhf.py `precision`, `gradient_checkpointing`): they reach TRL,
a bf16 run still trains and saves an fp32 model, and at their defaults every artifact key stays what it was."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
import torch

from bench import registry
from bench.errors import BadInput
from bench.lm import realign, rlhf
from bench.storage.artifacts import content_hash
from tasks.detox.config import recipe_settings

# The default profile's recipe as every published expert and re-alignment was keyed (asdict of the Recipe before the
# speed settings existed).
LEGACY_DEFAULT = {"algorithm": "rloo", "steps": 24, "learning_rate": 1e-3, "beta": 0.02, "prompts_per_step": 4,
                  "generations": 4, "max_completion_length": 20, "temperature": 1.0, "lora_r": 16, "lora_alpha": 32,
                  "lr_scheduler": "constant", "seed": 0}


class CapturingCache:
    """Records the inputs an artifact would be keyed by, and builds nothing."""

    def __init__(self):
        self.inputs = {}

    def get_or_build(self, kind, inputs, build):
        self.inputs[kind] = json.loads(json.dumps(inputs))
        raise StopIteration


class LengthReward:
    def score(self, prompts, completions):
        return [float(len(c)) for c in completions]


def keyed_recipes(recipe) -> dict:
    cache = CapturingCache()
    with pytest.raises(StopIteration):
        rlhf.train_expert("base", {"hub": "base"}, {"type": "profanity_check"}, None, ["p"], recipe, cache)
    with pytest.raises(StopIteration):
        realign.realign("base", {"hub": "base"}, LengthReward(), {"method": "m"}, ["p"], recipe, cache)
    return {kind: inputs["recipe"] for kind, inputs in cache.inputs.items()}


def test_the_default_recipe_keys_experts_and_realignments_as_before():
    settings = recipe_settings(registry.get_task("detox").config("default"))
    assert "precision" not in settings and "gradient_checkpointing" not in settings  # the rerlhf_setup key
    recipe = rlhf.recipe_from(settings)
    assert rlhf.recipe_key(recipe) == LEGACY_DEFAULT
    assert keyed_recipes(recipe) == {"expert": LEGACY_DEFAULT, "realigned": LEGACY_DEFAULT}
    assert content_hash(rlhf.recipe_key(recipe)) == content_hash(LEGACY_DEFAULT)


def test_a_speed_setting_joins_the_keys_only_when_set():
    base = rlhf.recipe_from(recipe_settings(registry.get_task("detox").config("default")))
    fast = replace(base, precision="bf16", gradient_checkpointing=False)
    keyed = keyed_recipes(fast)
    assert keyed["expert"] == keyed["realigned"] == {**LEGACY_DEFAULT, "precision": "bf16",
                                                     "gradient_checkpointing": False}
    assert rlhf.recipe_key(replace(base, gradient_checkpointing=False)) == {**LEGACY_DEFAULT,
                                                                           "gradient_checkpointing": False}


def test_the_detox_settings_reach_the_recipe():
    cfg = registry.get_task("detox").config("default")
    cfg.rl_precision, cfg.rl_gradient_checkpointing = "bf16", False
    recipe = rlhf.recipe_from(recipe_settings(cfg))
    assert (recipe.precision, recipe.gradient_checkpointing) == ("bf16", False)


def test_an_unknown_precision_is_refused():
    with pytest.raises(BadInput, match="precision 'fp16'"):
        rlhf.recipe_from({"precision": "fp16"})


@pytest.mark.parametrize("precision,checkpointing", [("fp32", True), ("bf16", False)])
def test_the_settings_reach_trl_and_a_bf16_run_saves_an_fp32_model(tiny_lm_dir, tmp_path, monkeypatch, precision,
                                                                   checkpointing):
    from transformers import AutoModelForCausalLM
    from trl import RLOOTrainer

    seen = {"generation_autocast": [], "loss": []}
    generate, compute_loss = RLOOTrainer._generate_single_turn, RLOOTrainer.compute_loss

    def spy_generate(self, *args, **kwargs):
        seen["generation_autocast"].append(torch.is_autocast_enabled("cpu") and
                                           torch.get_autocast_dtype("cpu") == torch.bfloat16)
        return generate(self, *args, **kwargs)

    def spy_loss(self, model, inputs, *args, **kwargs):
        unwrapped = self.accelerator.unwrap_model(model)
        frozen = {p.dtype for name, p in unwrapped.named_parameters() if name.endswith("base_layer.weight")}
        adapters = {p.dtype for p in unwrapped.parameters() if p.requires_grad}
        checkpointing = getattr(unwrapped, "is_activation_checkpointing", None)  # transformers < 5.2x: the old name
        if checkpointing is None:
            checkpointing = unwrapped.is_gradient_checkpointing
        seen["loss"].append((self.args.bf16, self.accelerator.mixed_precision, checkpointing, frozen, adapters))
        return compute_loss(self, model, inputs, *args, **kwargs)

    monkeypatch.setattr(RLOOTrainer, "_generate_single_turn", spy_generate)
    monkeypatch.setattr(RLOOTrainer, "compute_loss", spy_loss)
    recipe = rlhf.Recipe(steps=2, learning_rate=1e-2, beta=0.1, prompts_per_step=2, generations=2,
                         max_completion_length=4, lora_r=4, lora_alpha=8, precision=precision,
                         gradient_checkpointing=checkpointing)

    def reward(prompts, completions):
        return [float(len(c)) for c in completions]

    logged = rlhf.train_policy(tmp_path, str(tiny_lm_dir), reward, ["the cat", "a quick", "we walked", "please"],
                               recipe)
    bf16 = precision == "bf16"
    assert seen["generation_autocast"] == [bf16, bf16]
    frozen = {torch.bfloat16 if bf16 else torch.float32}  # LoRA's frozen layers: bf16 copies under bf16
    assert seen["loss"] == [(bf16, "bf16" if bf16 else "no", checkpointing, frozen, {torch.float32})] * 2
    assert len(logged) == 2 and all(np.isfinite(row["loss"]) and np.isfinite(row["kl"]) for row in logged)
    trained = AutoModelForCausalLM.from_pretrained(tmp_path / "model")
    base = AutoModelForCausalLM.from_pretrained(tiny_lm_dir)
    params = dict(trained.named_parameters())
    assert all(p.dtype == torch.float32 and torch.isfinite(p).all() for p in params.values())
    moved = [name for name, p in base.named_parameters() if not torch.equal(p, params[name])]
    assert moved and all(".attn." in name or ".mlp." in name for name in moved)  # the merged adapters, only there
    # the adapters were merged into π₀'s own fp32 weights: each update is the rank-4 product of the LoRA factors (a
    # merge into bf16 copies would add a full-rank rounding error)
    ranks = {int(torch.linalg.matrix_rank(params[name] - p, rtol=1e-3)) for name, p in base.named_parameters()
             if name in moved and p.dim() == 2}
    assert ranks and max(ranks) <= 4
    written = json.loads((tmp_path / "recipe.json").read_text())
    assert ("precision" in written) == bf16 and ("gradient_checkpointing" in written) == (not checkpointing)
