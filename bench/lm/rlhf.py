"""Expert RLHF: π₀ → π_E with TRL's `RLOOTrainer` (or `GRPOTrainer`) against a ground-truth judge R*.

    reward(x, y) = −P_toxic(y)          the judge scores the completion alone, as RealToxicityPrompts does
    objective    = E[reward] − β·KL(π‖π₀)   (TRL adds the KL to the reward for RLOO when β > 0)

The trained expert is an artifact (kind `expert`) keyed by the base model's identity, the judge spec, the recipe
and the training prompts; it holds the merged model (`model/`, a plain HF directory), the training curve
(`curve.json`: mean reward and mean P_toxic of every step's samples, plus TRL's logged KL / entropy / lengths)
and the recipe. LoRA adapters are merged before saving, so the expert loads like any causal LM.

CPU settings (verified for TRL 1.16 on these machines): `use_cpu`, `bf16=False`, `report_to="none"`,
`save_strategy="no"`, and
the base model is passed by *path* because TRL reloads the reference model from `_name_or_path` when β > 0.
With β = 0 TRL logs no KL; measure it on held-out prompts instead (the detox task does). With LoRA, TRL computes the
reference log-probs with the adapters disabled, so no second model is loaded.

Opt-in speed settings (benchmarks/rl_step.py measures them): `precision="bf16"` runs the rollouts and every
forward/backward under bf16 autocast (AMX on these CPUs) and, with LoRA, holds the frozen linear weights in bf16 while
training (so π₀'s log-probs are those of its bf16 copy); adapters, optimiser state and the saved model (the adapters
merged into π₀'s fp32 weights) stay fp32; and
`gradient_checkpointing=False` keeps activations instead of recomputing them in the backward pass (TRL defaults to
recomputing). A third, `rollouts="merged-bf16"`, samples the rollouts from a bfloat16 copy of the policy with its
adapters merged, re-merged every step (bench/lm/rollouts.py); TRL still computes every log-prob. A fourth,
`one_policy_pass=True`, lets RLOO's loss reuse the policy pass made for the KL-penalised reward instead of repeating
it (bench/lm/policy_pass.py; the same numbers). Each joins an artifact key only when set (`recipe_key`), so keys
made before they existed stay valid.
"""

from __future__ import annotations

import dataclasses
import logging
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from bench.errors import BadInput, RuntimeFailure
from bench.lm.policy_pass import one_policy_pass
from bench.lm.rollouts import ROLLOUTS, merged_rollouts
from bench.storage.artifacts import Artifact, ArtifactCache, atomic_write_json
from bench.task import hash_texts

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Recipe:
    """One RLHF run. Defaults: a recipe measured to detoxify SmolLM2-135M in about 10 minutes on 2 CPUs while
    staying close to π₀ (lr 1e-3, β 0.02, LoRA r 16 / α 32 on all linear layers, 4 prompts × 4 samples of 20
    tokens; see tasks/detox.py for the numbers)."""

    algorithm: str = "rloo"  # "rloo" or "grpo"
    steps: int = 24
    learning_rate: float = 1e-3
    beta: float = 0.02  # KL coefficient to π₀; 0 = no reference model (KL is then measured separately)
    prompts_per_step: int = 4
    generations: int = 4  # samples per prompt (the RLOO group)
    max_completion_length: int = 20
    temperature: float = 1.0
    lora_r: int = 16  # 0 = train all weights (tiny models)
    lora_alpha: int = 32
    lr_scheduler: str = "constant"
    seed: int = 0
    precision: str = "fp32"  # "bf16": bf16 autocast of rollouts and forward/backward; weights stay fp32
    gradient_checkpointing: bool = True  # TRL's default; False keeps activations (faster, more memory)
    rollouts: str = "trl"  # "merged-bf16": sampled from a bf16 copy with the adapters merged (bench/lm/rollouts.py)
    one_policy_pass: bool = False  # RLOO: the loss reuses the reward's policy pass (bench/lm/policy_pass.py)

    def validate(self) -> None:
        if self.algorithm not in ("rloo", "grpo"):
            raise BadInput(f"expert algorithm {self.algorithm!r} is not supported; use 'rloo' or 'grpo'.")
        if self.precision not in PRECISIONS:
            raise BadInput(f"RLHF precision {self.precision!r} is not supported; use one of {', '.join(PRECISIONS)}.")
        if self.rollouts not in ROLLOUTS:
            raise BadInput(f"RLHF rollouts {self.rollouts!r} are not supported; use one of {', '.join(ROLLOUTS)}.")
        if self.one_policy_pass and self.algorithm != "rloo":
            raise BadInput("one_policy_pass applies to RLOO only (GRPO makes one policy pass already); unset it.")
        if self.steps < 1 or self.prompts_per_step < 1 or self.generations < 2:
            raise BadInput("an RLHF recipe needs steps >= 1, prompts_per_step >= 1 and generations >= 2.")
        if self.beta < 0 or self.learning_rate <= 0:
            raise BadInput("an RLHF recipe needs beta >= 0 and a positive learning rate.")


PRECISIONS = ("fp32", "bf16")
# Recipe fields added after experts and re-alignments were keyed by the whole recipe: each joins a key only when it
# differs from its default, so every artifact keyed before it existed keeps its key.
OPT_IN = ("precision", "gradient_checkpointing", "rollouts", "one_policy_pass")


def recipe_key(recipe: Recipe) -> dict:
    """The recipe as it enters artifact keys (and recipe.json): every field, except an opt-in one at its default."""
    defaults = Recipe()
    return {k: v for k, v in asdict(recipe).items() if k not in OPT_IN or v != getattr(defaults, k)}


def recipe_from(settings: dict) -> Recipe:
    unknown = set(settings) - set(Recipe.__dataclass_fields__)
    if unknown:
        raise BadInput(f"unknown expert recipe settings {sorted(unknown)}; "
                       f"known: {sorted(Recipe.__dataclass_fields__)}.")
    recipe = Recipe(**settings)
    recipe.validate()
    return recipe


def train_expert(base_dir: str, base_identity: dict, judge_spec: dict, judge, prompts: list[str], recipe: Recipe,
                 cache: ArtifactCache, progress=None) -> Artifact:
    """The cached expert trained from the model at `base_dir` (whose identity, e.g. an artifact key or hub id,
    is `base_identity`) with reward −judge.p_toxic. `progress(done, total)` is called after every step."""
    inputs = {
        "base": base_identity,
        "reward": {"judge": judge_spec, "form": "-p_toxic(completion)"},
        "recipe": recipe_key(recipe),
        "prompts_sha256": hash_texts(prompts, length=64),
        "n_prompts": len(prompts),
    }
    return cache.get_or_build("expert", inputs, lambda out: _train_expert(out, base_dir, judge, prompts, recipe,
                                                                          progress))


def _train_expert(out: Path, base_dir: str, judge, prompts: list[str], recipe: Recipe, progress) -> None:
    per_step: list[dict] = []

    def toxicity_reward(prompts, completions):
        p = np.asarray(judge.p_toxic(completions), dtype=float)
        per_step.append({"mean_reward": float(-p.mean()), "mean_p_toxic": float(p.mean()),
                         "toxic_rate": float((p >= 0.5).mean()), "n": int(len(p))})
        return -p

    logged = train_policy(out, base_dir, toxicity_reward, prompts, recipe, progress)
    atomic_write_json(out / "curve.json", merge_curve(per_step, logged))


def train_policy(out: Path, base_dir: str, reward_fn, prompts: list[str], recipe: Recipe, progress=None) -> list[dict]:
    """Train the model at `base_dir` with `recipe` against `reward_fn(prompts, completions) -> scores` (higher is
    better; one call per generation batch, prompts repeated once per completion). Writes the merged model to
    `out/model` and the recipe (with the training time) to `out/recipe.json`; returns TRL's per-step logs."""
    import torch  # TRL, transformers, datasets and peft load only to train
    import transformers
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback

    transformers.set_seed(recipe.seed)  # before any model (or LoRA adapter) is built
    tokenizer = AutoTokenizer.from_pretrained(base_dir, trust_remote_code=False)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    # Loaded from a path, so `_name_or_path` lets TRL reload the reference model when beta > 0.
    model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32, trust_remote_code=False)

    def trl_reward(prompts, completions, **kwargs):
        as_text = lambda xs: [x if isinstance(x, str) else x[-1]["content"] for x in xs]  # noqa: E731
        scores = np.asarray(reward_fn(as_text(prompts), as_text(completions)), dtype=float)
        if scores.shape != (len(completions),) or not np.all(np.isfinite(scores)):
            raise RuntimeFailure(f"the RLHF reward returned {scores.shape} scores (finite: "
                                 f"{bool(np.all(np.isfinite(scores)))}) for {len(completions)} completions")
        return scores.tolist()

    logged: list[dict] = []

    class Recorder(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and "reward" in logs:
                logged.append({k: float(v) for k, v in logs.items() if isinstance(v, (int, float))})

        def on_step_end(self, args, state, control, **kwargs):
            if progress is not None:
                progress(state.global_step, recipe.steps)

    common = dict(
        output_dir=str(out / ".trainer"),
        learning_rate=recipe.learning_rate,
        lr_scheduler_type=recipe.lr_scheduler,
        max_steps=recipe.steps,
        per_device_train_batch_size=recipe.prompts_per_step * recipe.generations,
        gradient_accumulation_steps=1,
        num_generations=recipe.generations,
        max_completion_length=recipe.max_completion_length,
        temperature=recipe.temperature,
        top_p=1.0,
        beta=recipe.beta,
        seed=recipe.seed,
        logging_steps=1,
        use_cpu=not torch.cuda.is_available(),
        bf16=recipe.precision == "bf16",  # accelerate's autocast around TRL's forward passes
        report_to="none",
        save_strategy="no",
        disable_tqdm=True,
    )
    if recipe.algorithm == "rloo":
        from trl import RLOOConfig as Config
        from trl import RLOOTrainer as Trainer
    else:
        from trl import GRPOConfig as Config
        from trl import GRPOTrainer as Trainer
    if recipe.rollouts == "merged-bf16":  # its own bf16 network: no autocast around it
        Trainer = merged_rollouts(Trainer, base_dir, recipe.seed)
    elif recipe.precision == "bf16":
        Trainer = _bf16_rollouts(Trainer)
    if recipe.one_policy_pass:
        Trainer = one_policy_pass(Trainer)
    # TRL 1.16 checkpoints activations by default; transformers 5.2x renamed the switch (the old name warns there)
    fields = {f.name for f in dataclasses.fields(Config)}
    checkpointing = "activation_checkpointing" if "activation_checkpointing" in fields else "gradient_checkpointing"
    args = Config(**common, **{checkpointing: recipe.gradient_checkpointing})
    peft_config = None
    if recipe.lora_r > 0:
        from peft import LoraConfig

        peft_config = LoraConfig(r=recipe.lora_r, lora_alpha=recipe.lora_alpha, lora_dropout=0.0,
                                 target_modules="all-linear", task_type="CAUSAL_LM")
    dataset = Dataset.from_list([{"prompt": p} for p in prompts])
    trainer = Trainer(model=model, reward_funcs=trl_reward, args=args, train_dataset=dataset,
                      processing_class=tokenizer, callbacks=[Recorder()], peft_config=peft_config)
    from transformers.trainer_callback import PrinterCallback

    trainer.remove_callback(PrinterCallback)  # our curve records the logs; keep stdout for the caller's progress
    frozen_bf16 = recipe.precision == "bf16" and peft_config is not None
    if frozen_bf16:  # autocast would cast every frozen weight again at every forward (it caches trainable ones only)
        for module in trainer.model.modules():
            weight = getattr(getattr(module, "base_layer", None), "weight", None)  # LoRA's wrapped layers
            if weight is not None and not weight.requires_grad:
                weight.data = weight.data.to(torch.bfloat16)
    started = time.time()
    trainer.train()
    seconds = time.time() - started

    trained = trainer.model
    if frozen_bf16:  # merge the adapters into π₀'s own fp32 weights, not into their bf16 copies
        fp32 = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32, trust_remote_code=False).state_dict()
        for name, param in trained.get_base_model().named_parameters():
            if param.dtype == torch.bfloat16:
                param.data = fp32[name.replace(".base_layer", "")]
    if peft_config is not None:
        trained = trained.merge_and_unload()
    trained.save_pretrained(out / "model")
    tokenizer.save_pretrained(out / "model")
    shutil.rmtree(out / ".trainer", ignore_errors=True)
    atomic_write_json(out / "recipe.json", {**recipe_key(recipe), "train_seconds": round(seconds, 2),
                                             "n_train_prompts": len(prompts),
                                             "kl_logged": recipe.beta > 0})
    return logged


def _bf16_rollouts(trainer_cls):
    """`trainer_cls` with its rollouts sampled under bf16 autocast: TRL autocasts its forward passes when `bf16` is
    set, but calls `generate` outside autocast, where generation would stay in fp32."""
    import torch  # only to train

    class Bf16Rollouts(trainer_cls):
        def _generate_single_turn(self, *args, **kwargs):
            with torch.autocast(self.accelerator.device.type, dtype=torch.bfloat16):
                return super()._generate_single_turn(*args, **kwargs)

    return Bf16Rollouts


def merge_curve(per_step: list[dict], logged: list[dict]) -> list[dict]:
    """One row per step: the caller's own statistics of that step's samples, plus TRL's KL / entropy / lengths."""
    curve = []
    for step, sample_stats in enumerate(per_step, start=1):
        row = {"step": step, **sample_stats}
        if step - 1 < len(logged):
            extra = logged[step - 1]
            for key in ("kl", "entropy", "completions/mean_length", "reward_std", "loss", "grad_norm"):
                if key in extra:
                    row[key.replace("completions/", "")] = extra[key]
        curve.append(row)
    return curve


def curve_summary(curve: list[dict], window: int = 5) -> dict:
    """Mean reward of the first and last `window` steps of a training curve."""
    rewards = [row["mean_reward"] for row in curve]
    w = max(1, min(window, len(rewards) // 2 or 1))
    return {"steps": len(rewards), "first_steps_mean_reward": float(np.mean(rewards[:w])),
            "last_steps_mean_reward": float(np.mean(rewards[-w:])), "window": w}
