"""The bfloat16 engine's compiled decoding step (bench/lm/engines.py `transformers-bf16`, variant `compiled`): the
network of variant `linear` (bench/lm/bf16.py: matrix products in bfloat16, residual stream, norms, attention and
KV cache float32), its one-token decoding step compiled by torch.compile (inductor, CPU) into one graph.

What the graph changes, and why it does not recompile:
    * the KV cache is a transformers `StaticCache` of fixed capacity (rows x `capacity` positions), allocated once
      per shape and reused by every batch of that shape; each step writes one column in place. Attention reads
      only the filled columns: the step gets a 4-D mask of the filled width, marked dynamic, so one graph serves
      every width and the graph is compiled once per (rows, capacity). The capacity is the longest prompt of the
      `generate` call plus `max_new_tokens`, rounded up to a multiple of `ROUND`; a last batch with fewer rows is
      padded with inert rows (their tokens are never drawn).
    * casts, RMSNorm, RoPE, SiLU and residual sums are fused into a few C++ loops per layer; the products use the
      layers' own oneDNN-packed weights (bench/lm/bf16.py `pack`) through one opaque operator,
      `packed_bf16_linear`.
    * attention of the one new query row is two batched products over the key/value heads (`decode_attention`):
      grouped-query heads share their keys without transformers' `repeat_kv` copies, and the CPU flash kernel's
      tiling (made for long queries) is skipped. Prompts (several query rows) keep transformers' SDPA attention.

The prompt is still run eagerly (bench/lm/bf16.py `LoopSampler`'s prefill), and draws use `LoopSampler._draw`,
one uniform per real row from the batch's generator, so the random stream is the one `linear` consumes. The
compiled graph computes the same function as `linear` up to float rounding order (fused reductions), which
tests/test_engines.py checks: on the float32 network the compiled loop gives the reference's greedy completions.

Compiling SmolLM2-135M's step takes 40-60 s on one core (benchmarks/results/generation.md), once per process and
shape; inductor caches its kernels on disk (torch's FX graph cache), which shortens later processes.
"""

from __future__ import annotations

import time
import weakref

import torch
import torch.nn.functional as F
from transformers import AttentionInterface
from transformers.cache_utils import StaticCache
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

from bench.errors import BadInput, RuntimeFailure
from bench.lm.bf16 import BF16Linear, LoopSampler, cache_argument, kv_cache
from bench.lm.policies import Policy

ATTENTION = "bench_decode"  # the name this module registers its attention under (transformers' AttentionInterface)
ROUND = 32  # KV-cache capacities are multiples of this, so that calls with similar prompts share one graph


def decode_attention(module, query, key, value, attention_mask, dropout: float = 0.0, scaling=None,
                     is_causal=None, **kwargs):
    """Attention for transformers' attention interface. One query row under a boolean mask (a decoding step over
    a static cache): softmax(q k^T * scaling) v per key/value head, its query heads as one product's rows.
    Anything else (a prompt, another mask) goes to transformers' SDPA attention unchanged."""
    if query.shape[2] != 1 or attention_mask is None or attention_mask.dtype != torch.bool or dropout:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      is_causal=is_causal, **kwargs)
    rows, heads, _, dim = query.shape
    kv_heads, width = key.shape[1], attention_mask.shape[-1]
    key, value = key[:, :, :width], value[:, :, :width]  # the filled columns of a static cache
    grouped = query.reshape(rows, kv_heads, heads // kv_heads, dim)
    scores = torch.matmul(grouped, key.transpose(-1, -2)) * (dim**-0.5 if scaling is None else scaling)
    scores = scores.masked_fill(~attention_mask.reshape(rows, 1, 1, -1), float("-inf"))
    out = torch.matmul(torch.softmax(scores.float(), -1).to(value.dtype), value)
    return out.reshape(rows, heads, 1, dim).transpose(1, 2), None


AttentionInterface.register(ATTENTION, decode_attention)
AttentionMaskInterface.register(ATTENTION, sdpa_mask)  # boolean masks, as for SDPA


_LAYERS: dict[int, weakref.ref] = {}  # slot -> TracedBF16Linear, for `packed_bf16_linear`


def _packed_bf16_linear(x: torch.Tensor, slot: int) -> torch.Tensor:
    """x (bfloat16) times the oneDNN-packed weight of the layer in `slot`, in bfloat16: `BF16Linear`'s product, as
    one opaque operator of the compiled graph (torch.compile cannot trace the packed weight, an MKLDNN tensor)."""
    return torch.ops.mkldnn._linear_pointwise(x.contiguous(), _LAYERS[slot]().packed, None, "none", [], "")


def _packed_bf16_linear_shape(x: torch.Tensor, slot: int) -> torch.Tensor:
    return x.new_empty((*x.shape[:-1], _LAYERS[slot]().weight.shape[0]))


# Registered through the plain operator library: `torch.library.custom_op`'s Python wrapper cost ~50 us per call,
# 12 ms of a 110 ms decoding step of SmolLM2 at 64 rows.
_LIBRARY = torch.library.Library("bench", "DEF")
_LIBRARY.define("packed_bf16_linear(Tensor x, int slot) -> Tensor")
_LIBRARY.impl("packed_bf16_linear", _packed_bf16_linear, "CPU")
torch.library.register_fake("bench::packed_bf16_linear", _packed_bf16_linear_shape, lib=_LIBRARY)
packed_bf16_linear = torch.ops.bench.packed_bf16_linear


class TracedBF16Linear(BF16Linear):
    """`BF16Linear` as torch.compile traces it: the product by `packed_bf16_linear` on the layer's own packed
    weight (inductor's own packing, `freezing`, was 1.2-1.5x slower per product here), or the plain bfloat16
    `F.linear` where there is none; the casts around it are left to inductor to fuse. Eagerly, `BF16Linear`."""

    slot = -1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not torch.compiler.is_compiling():
            return super().forward(x)
        if self.packed is not None:
            y = packed_bf16_linear(x.to(torch.bfloat16), self.slot).to(x.dtype)
        else:
            y = F.linear(x.to(torch.bfloat16), self.weight).to(x.dtype)
        return y if self.bias is None else y + self.bias


def trace_linears(model: torch.nn.Module) -> None:
    """Make every `BF16Linear` of `model` a `TracedBF16Linear` with a slot of its own."""
    for module in model.modules():
        if type(module) is BF16Linear:
            module.__class__ = TracedBF16Linear  # a subclass adding no state but its slot
            module.slot = len(_LAYERS)
            _LAYERS[module.slot] = weakref.ref(module)


def require_compiler() -> None:
    """torch.compile's CPU backend writes C++ and builds it with the system's compiler: refuse early without one."""
    from torch._inductor.cpp_builder import get_cpp_compiler  # private; the lookup inductor itself makes

    try:
        get_cpp_compiler()
    except Exception as exc:
        raise BadInput(f"the compiled bfloat16 engine needs a C++ compiler for torch.compile and none was found "
                       f"({type(exc).__name__}); install g++ (or set CXX), or use the transformers-bf16 variant "
                       f"'linear'.") from exc


class CompiledSampler(LoopSampler):
    """`LoopSampler` whose decoding steps run a compiled graph over a fixed-capacity KV cache (module docstring).
    `compile_seconds[(rows, capacity)]`: the time of the first step of each shape (the compilation, mostly)."""

    def __init__(self, policy: Policy, model_dir: str):
        super().__init__(policy, model_dir, preallocate=False)
        if policy.device.type != "cpu":
            raise BadInput("the compiled bfloat16 engine is built for the CPU; use the transformers-bf16 variant "
                           "'linear' on a GPU.")
        require_compiler()
        model = policy.model
        trace_linears(model)
        model.set_attn_implementation(ATTENTION)
        self.step = torch.compile(model, fullgraph=True, dynamic=False)
        self.caches: dict[tuple[int, int], StaticCache] = {}
        self.compile_seconds: dict[tuple[int, int], float] = {}
        self.rows = self.capacity = 0

    def generate(self, prompts: list[str], max_new_tokens: int = 32, temperature: float = 1.0, top_p: float = 1.0,
                 seed: int = 0, n: int = 1, batch_size: int = 16, progress=None) -> list[str]:
        """As `Policy.generate`; sizes the static cache for this call's batches first."""
        longest = max((len(ids) for ids in self.policy._prompt_ids(list(prompts))), default=0)
        self.capacity = -(-(longest + max_new_tokens) // ROUND) * ROUND
        self.rows = min(len(prompts), max(1, batch_size // n)) * n
        return super().generate(prompts, max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p,
                                seed=seed, n=n, batch_size=batch_size, progress=progress)

    def _cache(self, rows: int, prefill) -> StaticCache:
        """The static cache for `rows` x `self.capacity`, holding `prefill`'s keys and values in its first columns."""
        shape = (rows, self.capacity)
        cache = self.caches.get(shape)
        if cache is None:
            cache = self.caches[shape] = StaticCache(config=self.policy.model.config, max_cache_len=self.capacity)
        for layer, filled in zip(cache.layers, prefill.layers, strict=True):
            keys, values = filled.keys, filled.values
            if not layer.is_initialized:
                layer.lazy_initialization(keys.new_zeros((rows, *keys.shape[1:])),
                                          values.new_zeros((rows, *values.shape[1:])))
            length = keys.shape[-2]
            layer.keys[: len(keys), :, :length] = keys
            layer.values[: len(values), :, :length] = values
            layer.cumulative_length.fill_(length)
        return cache

    def _step(self, token: torch.Tensor, mask: torch.Tensor, width: int, cache: StaticCache) -> torch.Tensor:
        """The compiled step's logits, attending to the first `width` columns of the cache under `mask`; the first
        call of a shape compiles (timed in `compile_seconds`)."""
        # Freezing (weights as constants, packed for oneDNN) is read when the graph compiles; torch.compile's
        # per-call `options` do not reach it (torch 2.13: the graph then multiplies with aten::mm), this patch does.
        import torch._inductor.config as inductor_config  # loads inductor only where the variant is used

        clock = time.perf_counter()
        window = mask[:, None, None, :width].bool()  # transformers passes a 4-D mask through as it is
        # One graph for every width; widths stop short of the capacity (which holds prompt + max_new_tokens).
        torch._dynamo.mark_dynamic(window, 3, min=2, max=mask.shape[1] - 1)
        with inductor_config.patch(freezing=True):
            positions = mask.sum(-1, keepdim=True) - 1
            out = self.step(input_ids=token[:, None], attention_mask=window, position_ids=positions, use_cache=True,
                            **cache_argument(self.policy.model, cache))
        self.compile_seconds.setdefault(tuple(mask.shape), time.perf_counter() - clock)
        return out.logits

    @torch.no_grad()
    def _batch(self, rows: list[list[int]], n: int, max_new_tokens: int, temperature: float, top_p: float,
               generator: torch.Generator) -> list[list[int]]:
        model, pad = self.policy.model, self.tokenizer.pad_token_id
        ids, mask = self.policy._left_pad(rows)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        out = model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True, logits_to_keep=1)
        prefill = kv_cache(out)
        if n > 1:
            prefill.batch_repeat_interleave(n)
            mask = mask.repeat_interleave(n, 0)
        real, length = len(mask), mask.shape[1]
        if length + max_new_tokens > self.capacity or real > self.rows:
            raise RuntimeFailure(f"a batch of {real} rows needs {length + max_new_tokens} KV-cache positions and the "
                                 f"compiled cache holds {self.rows} x {self.capacity}; call generate, which sizes it.")
        width = self.rows
        cache = self._cache(width, prefill)
        full = torch.zeros((width, self.capacity), dtype=mask.dtype, device=mask.device)
        full[:real, :length] = mask
        full[real:, 0] = 1  # inert padding rows attend to one column, so their softmax stays finite
        logits = out.logits[:, -1].float().repeat_interleave(n, 0)
        done = torch.zeros(real, dtype=torch.bool, device=logits.device)
        token = torch.full((width,), pad, dtype=torch.long, device=logits.device)
        tokens = []
        for step in range(max_new_tokens):
            token[:real] = torch.where(done, pad, self._draw(logits, temperature, top_p, generator))
            tokens.append(token[:real].clone())
            done |= torch.isin(tokens[-1], self.end)
            if step == max_new_tokens - 1 or bool(done.all()):
                break
            full[:, length + step] = 1
            logits = self._step(token, full, length + step + 1, cache)[:real, -1].float()
        return torch.stack(tokens, 1).tolist()
