"""RL rollouts from a merged bfloat16 copy of the policy (bench/lm/rlhf.py, Recipe `rollouts="merged-bf16"`).

TRL samples its rollouts with the trained model's own `generate`: with LoRA, every one of its adapted layers runs the
frozen product plus the two adapter products, token by token (6.5 of a 21 CPU-second RLOO step on SmolLM2-135M,
benchmarks/results/rl_step.md). Here the rollouts come from a second copy of the network whose linear layers hold

    W_merged = W_frozen + (α/r)·B·A          (peft's own `get_delta_weight`, in float32, then cast to bfloat16)

re-merged before every generation (only the adapters change between steps), decoded by bench/lm/bf16.py's loop
(`to_bf16` variant `linear`: bfloat16 products, float32 residual stream, norms and KV cache; preallocated cache,
packed weights, inverse-CDF draw). The sampler only samples: TRL recomputes every log-prob of the completions with
the trained model (the policy's, the reference's, the loss's), exactly as it does after its own `generate`.

What changes: the completions come from the bfloat16-product network, not the float32 one, so they follow a
distribution a little off the policy whose log-probs TRL computes (as vLLM rollouts do in TRL; greedy completions
agree but for near-ties, tests/test_rollouts.py). The random stream is the sampler's own (`torch.Generator` seeded
from the recipe's seed and the step), so a recipe's rollouts are reproducible but not those TRL's path would draw.
Completions come back as TRL's `_generate_single_turn` returns them: the new token ids of each row, cut after the
first EOS (EOS included), prompt-major in the order of the prompts given.
"""

from __future__ import annotations

import copy

import torch
from transformers import AutoModelForCausalLM
from transformers.pytorch_utils import Conv1D

from bench.errors import BadInput
from bench.lm.bf16 import BF16Linear, LoopSampler, pack, to_bf16
from bench.lm.policies import Policy

ROLLOUTS = ("trl", "merged-bf16")
# TRL generation settings a plain temperature/top-p sampler honours only at these values.
PLAIN = {"top_k": (0, None), "min_p": (None, 0.0), "repetition_penalty": (1.0, None)}


def effective_weight(module: torch.nn.Module) -> torch.Tensor:
    """The float32 weight that `module` (a linear layer, GPT-2's Conv1D, or a peft LoRA layer around either)
    applies, as nn.Linear's (out, in): for a LoRA layer, the frozen weight plus the active adapters' deltas (none
    while its adapters are disabled or already merged into the frozen weight)."""
    base = getattr(module, "base_layer", module)
    weight = base.weight.detach().float()
    if base is not module and not getattr(module, "disable_adapters", False) and not getattr(module, "merged", False):
        for adapter in module.active_adapters:
            if adapter in module.lora_A:
                weight = weight + module.get_delta_weight(adapter).float()
    return weight.t() if isinstance(base, Conv1D) else weight


class MergedSampler:
    """A bfloat16 copy of `trained` (a causal LM, peft-wrapped or not) whose linear layers follow it on `refresh`,
    sampled by `LoopSampler`. `base_dir` is the directory `trained` was loaded from (its architecture and the
    weights no training changes: embeddings and norms under LoRA)."""

    def __init__(self, trained: torch.nn.Module, base_dir: str, tokenizer, end_ids: list[int]):
        copy_ = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32, trust_remote_code=False)
        tokenizer = copy.copy(tokenizer)  # Policy sets its padding side; the trainer's tokenizer keeps its own
        self.policy = Policy(to_bf16(copy_, "linear"), tokenizer, device=trained.device)
        self.loop = LoopSampler(self.policy, base_dir)
        self.loop.end = torch.tensor(sorted(set(end_ids)), device=trained.device)
        self.end_ids = set(end_ids)
        unwrapped = trained.get_base_model() if hasattr(trained, "get_base_model") else trained
        source = dict(unwrapped.named_modules())
        self.layers = []  # (BF16Linear, module of the trained model it mirrors)
        for name, layer in self.policy.model.named_modules():
            if isinstance(layer, BF16Linear):
                if name not in source:
                    raise BadInput(f"the merged-bf16 rollouts found no layer {name!r} in the trained model; "
                                   f"use rollouts='trl' for this model.")
                self.layers.append((layer, source[name]))
        self.others = []  # (parameter of the copy, trained parameter): only those training changes (lora_r = 0)
        trained_params = dict(unwrapped.named_parameters())
        linear_names = {n for n, m in self.policy.model.named_modules() if isinstance(m, BF16Linear)}
        for name, param in self.policy.model.named_parameters():
            if name.rsplit(".", 1)[0] not in linear_names and trained_params.get(name) is not None \
                    and trained_params[name].requires_grad:
                self.others.append((param, trained_params[name]))

    @torch.no_grad()
    def refresh(self) -> None:
        """Copy the trained model's current weights in: each linear layer's merged weight (re-packed), its bias,
        and any other trained parameter. Layers nothing trains are skipped."""
        for layer, module in self.layers:
            base = getattr(module, "base_layer", module)
            if base is module and not base.weight.requires_grad:
                continue  # neither adapted nor trained: as loaded
            layer.weight.copy_(effective_weight(module))
            layer.packed = pack(layer.weight)
            if layer.bias is not None and base.bias is not None:
                layer.bias.copy_(base.bias)
        for param, trained in self.others:
            param.copy_(trained)

    def sample(self, prompt_ids: list[list[int]], max_new_tokens: int, temperature: float, top_p: float,
               generator: torch.Generator) -> list[list[int]]:
        """The completion ids of each prompt row (one completion per row, as TRL asks): rows that repeat a prompt
        consecutively in groups of one size share its prefill (`LoopSampler`'s n). Each cut after its first EOS."""
        n = group_size(prompt_ids)
        new = self.loop._batch(prompt_ids[::n], n, max_new_tokens, temperature, top_p, generator)
        return [cut_at_end(row, self.end_ids) for row in new]


def group_size(rows: list[list[int]]) -> int:
    """The largest n such that `rows` is made of consecutive runs of n equal rows (1 when none)."""
    for n in range(len(rows), 1, -1):
        if len(rows) % n == 0 and all(rows[i] == rows[i - i % n] for i in range(len(rows))):
            return n
    return 1


def cut_at_end(tokens: list[int], end_ids: set[int]) -> list[int]:
    for i, token in enumerate(tokens):
        if token in end_ids:
            return tokens[: i + 1]
    return tokens


def check_generation(trainer) -> None:
    """Refuse a TRL generation setup the merged sampler would not reproduce."""
    args = trainer.args
    unmatched = {k: getattr(args, k, None) for k, allowed in PLAIN.items() if getattr(args, k, None) not in allowed}
    if args.generation_kwargs:
        unmatched["generation_kwargs"] = args.generation_kwargs
    if getattr(trainer, "use_vllm", False) or getattr(trainer, "use_transformers_continuous_batching", False):
        unmatched["generation backend"] = "vllm or continuous batching"
    if unmatched:
        raise BadInput(f"the merged-bf16 rollouts sample with temperature and top-p only, and this run sets "
                       f"{unmatched}; use rollouts='trl'.")


def merged_rollouts(trainer_cls, base_dir: str, seed: int):
    """`trainer_cls` (TRL's RLOOTrainer or GRPOTrainer) with its rollouts drawn by a `MergedSampler`, re-merged
    before each generation; the random stream is seeded by `seed` and the generation's ordinal."""

    class MergedRollouts(trainer_cls):
        def _generate_single_turn(self, prompt_ids, images, multimodal_fields):
            if images is not None or multimodal_fields:
                raise BadInput("the merged-bf16 rollouts sample text only; use rollouts='trl' for a multimodal model.")
            if getattr(self, "_merged_sampler", None) is None:
                check_generation(self)
                model = self.accelerator.unwrap_model(self.model)
                self._merged_sampler = MergedSampler(model, base_dir, self._tokenizer, self.eos_token_ids)
                self._merged_calls = 0
            self._merged_sampler.refresh()
            generator = torch.Generator(self.accelerator.device).manual_seed(seed * 1_000_003 + self._merged_calls)
            self._merged_calls += 1
            return self._merged_sampler.sample(list(prompt_ids), self.max_completion_length, self.temperature,
                                               self.top_p, generator)

    return MergedRollouts
