"""The bfloat16 generation engine's pieces (bench/lm/engines.py `transformers-bf16`): the reference model with its
matrix products in bfloat16, and a decoding loop that samples like `Policy.generate` at less cost.

Variants of the network:
    linear   every linear layer (attention and MLP projections, the LM head) multiplies in bfloat16 and returns
             float32: the residual stream, the norms, attention's softmax and the KV cache stay float32
    model    the whole model cast to bfloat16 (residual stream, norms and KV cache included); logits cast to
             float32 for sampling

`LoopSampler` decodes with `Policy.generate`'s prompt ids, batching (prompts sorted by length, `batch_size`
sequences per batch) and per-batch seeds, and transformers' own temperature and top-p warpers, so the distribution
of a completion given the logits is the reference's. It differs in three ways that change no distribution: each
prompt is run once and its KV cache repeated for its `n` samples (transformers runs n copies); a token is drawn by
inverting the CDF with one uniform per row (`torch.multinomial` draws an exponential per vocabulary entry, ~0.1 s
per step for 64 rows of SmolLM2's 49k tokens on one core), from a private `torch.Generator`; and it stops when
every row has ended. Greedy decoding is the argmax, as in transformers.

Three mechanisms change no number, only the time (each tested to give the same values): the KV cache lives in
buffers allocated once per batch (`PreallocatedLayer`) instead of being re-concatenated every step; sibling
projections of one input (q, k, v; gate, up) share its bfloat16 copy (`CastMemo`); and each weight is reordered
once into oneDNN's blocked layout (`pack`) instead of on every product.
"""

from __future__ import annotations

import inspect

import torch
import torch.nn.functional as F
from transformers import GenerationConfig
from transformers.cache_utils import DynamicLayer
from transformers.generation import TemperatureLogitsWarper, TopPLogitsWarper
from transformers.pytorch_utils import Conv1D

from bench.errors import BadInput, RuntimeFailure
from bench.lm.policies import Policy

VARIANTS = ("linear", "model")
# generation_config options that transformers.generate applies by default and a plain sampler would not reproduce.
UNMATCHED_DEFAULTS = {"repetition_penalty": 1.0, "no_repeat_ngram_size": 0, "min_new_tokens": None,
                      "min_length": 0, "bad_words_ids": None, "suppress_tokens": None, "begin_suppress_tokens": None}


def fast_bf16_hardware() -> bool:
    """Whether this CPU multiplies bfloat16 natively: AMX or AVX512-BF16 (there a bfloat16 matrix product is ~4x
    float32's on one core; elsewhere oneDNN emulates it, slower than float32)."""
    try:
        flags = torch._C._cpu._get_cpu_capability()  # private, but the only place torch reports these flags
    except (AttributeError, RuntimeError):
        return False
    return bool(flags.get("amx_bf16") or flags.get("avx512_bf16"))


class CastMemo:
    """The bfloat16 copy of the last input cast, shared by a model's `BF16Linear`s: sibling projections of one input
    (attention's q, k, v; the MLP's gate and up) cast it once. Reused only for the very tensor object, unmodified
    since (same version counter)."""

    def __init__(self):
        self.source: torch.Tensor | None = None
        self.version = -1
        self.cast: torch.Tensor | None = None

    def bf16(self, x: torch.Tensor) -> torch.Tensor:
        if x.is_inference():  # inference tensors keep no version counter: no reuse
            return x.to(torch.bfloat16)
        if x is not self.source or x._version != self.version:
            self.source, self.version, self.cast = x, x._version, x.to(torch.bfloat16)
        return self.cast


class BF16Linear(torch.nn.Module):
    """y = x W^T (+ b): the product in bfloat16 (accumulated in float32 by oneDNN/cuBLAS), returned in x's dtype;
    the bias is added in that dtype. The input's bfloat16 copy comes from `memo`, shared with sibling layers. On
    the CPU the weight is also kept in oneDNN's blocked layout (`pack`), so the product does not reorder it on
    every call: the same numbers (the test checks it), 1.3x (MLP) to 1.7x (SmolLM2's LM head) faster at 64 rows."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, memo: CastMemo | None = None):
        super().__init__()
        self.register_buffer("weight", weight.detach().to(torch.bfloat16).contiguous())
        self.register_buffer("bias", None if bias is None else bias.detach().clone())
        self.memo = memo if memo is not None else CastMemo()
        self.packed = pack(self.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xb = self.memo.bf16(x)
        if self.packed is not None and xb.device.type == "cpu":
            y = torch.ops.mkldnn._linear_pointwise(xb.contiguous(), self.packed, None, "none", [], "")
        else:
            y = F.linear(xb, self.weight)
        y = y.to(x.dtype)
        return y if self.bias is None else y + self.bias


def pack(weight: torch.Tensor, rows: int = 64) -> torch.Tensor | None:
    """`weight` (bfloat16, on the CPU) reordered once for oneDNN's matmul (tuned for `rows` input rows; any number
    works), or None where oneDNN is unavailable. Private torch ops, the ones torch.compile's freezing uses."""
    if weight.device.type != "cpu" or not torch.backends.mkldnn.is_available():
        return None
    try:
        return torch.ops.mkldnn._reorder_linear_weight(weight, rows)
    except (AttributeError, RuntimeError):
        return None


def to_bf16(model: torch.nn.Module, variant: str) -> torch.nn.Module:
    """`model` (modified in place) with its matrix products in bfloat16, as `variant` says."""
    if variant not in VARIANTS:
        raise BadInput(f"bfloat16 variant {variant!r}; choose from: {', '.join(VARIANTS)}.")
    if variant == "model":
        model.to(torch.bfloat16)  # and its linear layers as BF16Linear below, for the packed weights
    memo = CastMemo()
    for module in list(model.modules()):
        for name, child in list(module.named_children()):
            if isinstance(child, torch.nn.Linear):
                setattr(module, name, BF16Linear(child.weight, child.bias, memo))
            elif isinstance(child, Conv1D):  # GPT-2's linear layers store W^T
                setattr(module, name, BF16Linear(child.weight.t(), child.bias, memo))
    return model


class PreallocatedLayer(DynamicLayer):
    """A `DynamicLayer` whose keys and values live in buffers sized for the whole generation: `update` writes the
    new positions in place and returns views of the filled part, the same values the concatenating layer returns
    (it re-copies the whole cache every step: ~18% of a bfloat16 decoding step on SmolLM2 at batch 64)."""

    def __init__(self, layer: DynamicLayer, capacity: int):
        super().__init__()
        keys, values = layer.keys, layer.values
        self.length = keys.shape[-2]
        self.key_buffer = keys.new_empty((*keys.shape[:-2], capacity, keys.shape[-1]))
        self.value_buffer = values.new_empty((*values.shape[:-2], capacity, values.shape[-1]))
        self.key_buffer[..., : self.length, :] = keys
        self.value_buffer[..., : self.length, :] = values
        self.keys, self.values = keys, values
        self.device, self.is_initialized = keys.device, True

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        end = self.length + key_states.shape[-2]
        if end > self.key_buffer.shape[-2]:
            raise RuntimeFailure(f"the preallocated KV cache holds {self.key_buffer.shape[-2]} positions; "
                                 f"{end} were asked for.")
        self.key_buffer[..., self.length : end, :] = key_states
        self.value_buffer[..., self.length : end, :] = value_states
        self.length = end
        self.keys, self.values = self.key_buffer[..., :end, :], self.value_buffer[..., :end, :]
        return self.keys, self.values

    def get_seq_length(self) -> int:
        return self.length


def cache_argument(model: torch.nn.Module, cache) -> dict:
    """The KV cache as `model`'s forward takes it: transformers 5.2x renamed `past_key_values` to `cache` (the
    project allows any 5.x, and a GPU image may ship an older one)."""
    name = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
    return {name: cache}


def kv_cache(output):
    """The KV cache a forward returned, under either name (see `cache_argument`)."""
    cache = getattr(output, "cache", None)
    return cache if cache is not None else output.past_key_values


def preallocate(cache, extra: int) -> None:
    """Swap each plain `DynamicLayer` of a filled cache for a `PreallocatedLayer` with room for `extra` more
    positions (sliding-window and other layer kinds stay as they are)."""
    for i, layer in enumerate(cache.layers):
        if type(layer) is DynamicLayer and layer.is_initialized and layer.keys.numel():
            cache.layers[i] = PreallocatedLayer(layer, layer.keys.shape[-2] + extra)


def end_ids(policy: Policy, model_dir: str) -> list[int]:
    """The ids transformers stops at, refusing a generation_config whose other settings it would apply."""
    generation = policy.model.generation_config if policy.model.generation_config is not None else GenerationConfig()
    unmatched = {k: getattr(generation, k, None) for k, default in UNMATCHED_DEFAULTS.items()
                 if getattr(generation, k, default) not in (default, None)}
    if unmatched:
        raise RuntimeFailure(f"{model_dir}'s generation_config sets {unmatched}, which transformers applies and the "
                             f"bfloat16 engine would not; use the generation engine 'transformers'.")
    eos = generation.eos_token_id if generation.eos_token_id is not None else policy.tokenizer.eos_token_id
    return [eos] if isinstance(eos, int) else list(eos)


def inverse_cdf(probs: torch.Tensor, generator: torch.Generator, block: int = 256) -> torch.Tensor:
    """One token per row of `probs`, token i with probability probs[i] (never one of probability 0), from one
    uniform per row: the block of `block` tokens by the CDF of the blocks' sums, then the token by the CDF inside
    the block (sums and CDFs in float64). A full-row cumsum costs 4x more on the CPU."""
    rows, size = probs.shape
    pad = -size % block
    blocks = F.pad(probs, (0, pad)).view(rows, -1, block) if pad else probs.view(rows, -1, block)
    cdf = blocks.sum(-1, dtype=torch.float64).cumsum(-1)
    u = torch.rand((rows, 1), generator=generator, dtype=torch.float64, device=probs.device) * cdf[:, -1:]
    k = torch.searchsorted(cdf, u, right=True).clamp(max=cdf.shape[1] - 1)  # cdf[k-1] <= u < cdf[k]
    before = torch.where(k > 0, cdf.gather(1, (k - 1).clamp(min=0)), torch.zeros_like(u))
    inner = blocks[torch.arange(rows, device=probs.device), k[:, 0]].double().cumsum(-1)
    j = torch.searchsorted(inner, u - before, right=True)
    # Rounding may put u - before at the block's total: then the block's last token of positive probability.
    last = (inner < inner[:, -1:]).sum(-1, keepdim=True)
    return (k * block + torch.minimum(j, last)).squeeze(1)


class LoopSampler:
    """A loaded policy (any dtype) with `Policy.generate`'s signature; see the module docstring."""

    def __init__(self, policy: Policy, model_dir: str, preallocate: bool = True):
        self.policy, self.tokenizer = policy, policy.tokenizer
        self.preallocate = preallocate
        self.end = torch.tensor(end_ids(policy, model_dir), device=policy.device)

    def _draw(self, logits: torch.Tensor, temperature: float, top_p: float, generator: torch.Generator):
        if temperature <= 0:
            return logits.argmax(-1)
        if temperature != 1.0:
            logits = TemperatureLogitsWarper(temperature)(None, logits)
        if top_p < 1.0:
            logits = TopPLogitsWarper(top_p)(None, logits)
        return inverse_cdf(torch.softmax(logits, -1), generator)

    @torch.no_grad()
    def _batch(self, rows: list[list[int]], n: int, max_new_tokens: int, temperature: float, top_p: float,
               generator: torch.Generator) -> list[list[int]]:
        model, pad = self.policy.model, self.tokenizer.pad_token_id
        ids, mask = self.policy._left_pad(rows)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        out = model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True, logits_to_keep=1)
        cache = kv_cache(out)
        if n > 1:
            cache.batch_repeat_interleave(n)
            mask = mask.repeat_interleave(n, 0)
        if self.preallocate:
            preallocate(cache, max_new_tokens)
        logits = out.logits[:, -1].float().repeat_interleave(n, 0)
        done = torch.zeros(len(logits), dtype=torch.bool, device=logits.device)
        tokens = []
        for step in range(max_new_tokens):
            token = torch.where(done, pad, self._draw(logits, temperature, top_p, generator))
            tokens.append(token)
            done |= torch.isin(token, self.end)
            if step == max_new_tokens - 1 or bool(done.all()):
                break
            mask = torch.cat([mask, torch.ones_like(mask[:, :1])], 1)
            out = model(input_ids=token[:, None], attention_mask=mask, position_ids=mask.sum(-1, keepdim=True) - 1,
                        use_cache=True, **cache_argument(model, cache))
            logits = out.logits[:, -1].float()
        return torch.stack(tokens, 1).tolist()

    def generate(self, prompts: list[str], max_new_tokens: int = 32, temperature: float = 1.0, top_p: float = 1.0,
                 seed: int = 0, n: int = 1, batch_size: int = 16, progress=None) -> list[str]:
        """As `Policy.generate`: n completions per prompt, prompt-major; the same call gives the same texts."""
        if not prompts:
            return []
        ids = self.policy._prompt_ids(list(prompts))
        if any(not row for row in ids):
            raise BadInput("an empty prompt gives the model nothing to condition on; give non-empty prompts.")
        order = sorted(range(len(prompts)), key=lambda i: len(ids[i]))
        per_batch = max(1, batch_size // n)
        out: list[list[str]] = [[] for _ in prompts]
        for b, start in enumerate(range(0, len(order), per_batch)):
            rows = order[start : start + per_batch]
            generator = torch.Generator(self.policy.device).manual_seed(seed * 1_000_003 + b)
            new = self._batch([ids[i] for i in rows], n, max_new_tokens, temperature, top_p, generator)
            texts = self.tokenizer.batch_decode(new, skip_special_tokens=True)
            for j, i in enumerate(rows):
                out[i] = texts[j * n : (j + 1) * n]
            if progress is not None:
                progress(len(rows))
        return [text for samples in out for text in samples]
