"""Generation engines: what draws the completions of a policy. An engine only samples; every log-probability that
enters a metric is still computed by the reference model (bench/lm/policies.py `Policy.logprobs`).

    transformers       the reference: `Policy.generate`, batched left-padded `transformers.generate` in fp32
    transformers-bf16  the reference model with its linear layers in bfloat16 (residual stream, norms and KV cache
                       float32; variant `model` casts everything), sampled by bench/lm/bf16.py's decoding loop
                       (preallocated KV cache, shared casts, packed weights). On a CPU with AMX, 2.36x transformers
                       at batch 64 (1.23x the engine as first committed, side by side; `model` 3.1x); reference
                       log-probs of its samples match (Mann-Whitney p = 0.73 as first committed), greedy completions
                       differ only after near-ties (< 0.15 nats). Variant `compiled` (bench/lm/compiled.py) compiles
                       `linear`'s decoding step with torch.compile: 3.73x transformers at batch 64 where `linear` was
                       3.17x (same run, quiet host), p = 0.64; a one-off compilation of 20-60 s per process and shape
    ctranslate2        the same HF directory converted once by CTranslate2 (cached artifact `ct2_model`, keyed by
                       the directory's content hash and the quantisation), float32, sampled by `ctranslate2.Generator`:
                       1.16x transformers at batch 16, 0.85x at 64
    ctranslate2-int8   the same with int8 weights and activations: 2-3x transformers' speed, but a different model:
                       on SmolLM2 no greedy completion matches the reference's and its samples' reference log-probs
                       differ (Mann-Whitney p = 0.006 and 0.018 in two runs)
    auto               the fastest engine that samples the reference's distribution: transformers-bf16 on a CPU that
                       reports AMX or AVX512-BF16 (`fast_bf16_hardware`), transformers elsewhere and on CUDA, where
                       nothing else was measured

All figures: SmolLM2-135M on 2 shared CPU cores, benchmarks/results/generation.md (benchmarks/generation.py).

All sample the same distribution: the prompt ids are the same (`prompt_ids`), sampling is plain temperature
sampling over the whole vocabulary (top-k off) with optional nucleus top-p, generation stops at the model's EOS ids,
and the completion is the decoded new tokens (special tokens skipped). tests/test_engines.py checks greedy
agreement and, under sampling, the reference log-probs of the engines' samples. Random streams differ between
engines, so the same seed gives different (equally distributed) samples; each engine is deterministic by itself.

`Engine.load(model_dir)` gives a sampler with `Policy.generate`'s signature; `Engine.sample` is load + generate.
`identity()` is what a cached artifact must record of the engine; callers put it into keys only when the engine
is not `transformers`, so the keys of everything sampled before engines existed stay valid.
"""

from __future__ import annotations

import functools
import importlib.util
import json
import logging
from pathlib import Path

import torch
import transformers
from transformers import AutoTokenizer, GenerationConfig

from bench.errors import BadInput, RuntimeFailure
from bench.lm.bf16 import UNMATCHED_DEFAULTS, VARIANTS, LoopSampler, fast_bf16_hardware, to_bf16
from bench.lm.compiled import CompiledSampler
from bench.lm.policies import Policy, prompt_ids
from bench.storage.artifacts import MANIFEST, ArtifactCache, content_hash, file_sha256

log = logging.getLogger(__name__)

ENGINES = ("transformers", "transformers-bf16", "ctranslate2", "ctranslate2-int8", "auto")
BF16_VARIANTS = (*VARIANTS, "compiled")
DEFAULT = "transformers"


class Engine:
    """Samples completions of the model in an HF directory; subclasses define `load`."""

    name = ""

    def identity(self) -> dict:
        return {"engine": self.name}

    def load(self, model_dir: str, chat: bool = False):
        raise NotImplementedError

    def sample(self, model_dir: str, prompts: list[str], n: int = 1, max_new_tokens: int = 32,
               temperature: float = 1.0, top_p: float = 1.0, seed: int = 0, batch_size: int = 16,
               progress=None) -> list[str]:
        """n completions per prompt, prompt-major, as `Policy.generate` returns them."""
        return self.load(model_dir).generate(prompts, max_new_tokens=max_new_tokens, temperature=temperature,
                                             top_p=top_p, seed=seed, n=n, batch_size=batch_size, progress=progress)


class TransformersEngine(Engine):
    """The reference: the policy's own batched `transformers.generate`."""

    name = "transformers"

    def load(self, model_dir: str, chat: bool = False) -> Policy:
        return Policy.from_pretrained(model_dir, chat=chat)


class BF16Engine(Engine):
    """The reference model with its matrix products in bfloat16 (`variant`, bench/lm/bf16.py), sampled by
    `LoopSampler`: the reference's prompts, batching, seeds and warpers, a cheaper draw. Variant `compiled` is
    `linear` with its decoding step compiled by torch.compile (bench/lm/compiled.py)."""

    name = "transformers-bf16"

    def __init__(self, variant: str = "linear"):
        if variant not in BF16_VARIANTS:
            raise BadInput(f"bfloat16 variant {variant!r}; choose from: {', '.join(BF16_VARIANTS)}.")
        self.variant = variant

    def identity(self) -> dict:
        return {"engine": self.name, "dtype": "bfloat16", "variant": self.variant, "decoder": "loop"}

    def load(self, model_dir: str, chat: bool = False) -> LoopSampler:
        policy = Policy.from_pretrained(model_dir, chat=chat)
        compiled = self.variant == "compiled"
        to_bf16(policy.model, "linear" if compiled else self.variant)  # compiled: `linear`'s network
        return (CompiledSampler if compiled else LoopSampler)(policy, model_dir)


class CTranslate2Engine(Engine):
    """CTranslate2 on the CPU. `compute_type` "float32" computes the reference's network; "int8" quantises weights
    and activations (fastest, approximate)."""

    name = "ctranslate2"

    def __init__(self, cache: ArtifactCache, compute_type: str = "float32"):
        if compute_type not in ("int8", "float32"):
            raise BadInput(f"ctranslate2 compute type {compute_type!r}; choose 'int8' or 'float32'.")
        self.cache = cache
        self.compute_type = compute_type

    def identity(self) -> dict:
        return {"engine": self.name, "compute_type": self.compute_type, "ctranslate2": _ct2_version()}

    def load(self, model_dir: str, chat: bool = False) -> CT2Sampler:
        return CT2Sampler(model_dir, convert(model_dir, self.compute_type, self.cache), self.compute_type, chat)


def ct2_installed() -> bool:
    return importlib.util.find_spec("ctranslate2") is not None


def resolve(name: str) -> str:
    """The engine `name` stands for: `auto` becomes the fastest engine installed here."""
    if name not in ENGINES:
        raise BadInput(f"unknown generation engine {name!r}; choose from: {', '.join(ENGINES)}.")
    if name != "auto":
        return name
    # benchmarks/results/generation.md: on a CPU with native bfloat16 (AMX / AVX512-BF16) transformers-bf16 is the
    # fastest engine that samples the reference's distribution; ctranslate2 float32 is not reliably faster than
    # transformers, and int8 samples another distribution. On a GPU nothing else was measured: transformers.
    if not torch.cuda.is_available() and fast_bf16_hardware():
        return "transformers-bf16"
    return "transformers"


def make_engine(name: str, cache: ArtifactCache | None = None, compute_type: str | None = None) -> Engine:
    """The engine `name` stands for; `compute_type` overrides the one a ctranslate2 name implies (for
    transformers-bf16 it is the variant, bench/lm/bf16.py)."""
    name = resolve(name)
    if name == "transformers":
        return TransformersEngine()
    if name == "transformers-bf16":
        return BF16Engine(compute_type or "linear")
    if not ct2_installed():
        raise BadInput("the ctranslate2 generation engine is not installed; `pip install -e '.[fast]'` "
                       "(ctranslate2==4.8.5), or choose the engine 'transformers' or 'auto'.")
    if cache is None:
        raise BadInput("the ctranslate2 engine needs an artifact cache to hold its converted model.")
    return CTranslate2Engine(cache, compute_type or ("int8" if name == "ctranslate2-int8" else "float32"))


def key_part(engine: Engine) -> dict:
    """What an artifact key gets for the engine: nothing for the reference `transformers` (so every key made before
    engines existed still names the same samples), the engine's identity otherwise."""
    return {} if engine.name == DEFAULT else {"engine": engine.identity()}


# ------------------------------------------------------------------------------------------------ ctranslate2


def _ct2_version() -> str:
    import ctranslate2  # optional dependency (the `fast` extra)

    return ctranslate2.__version__


@functools.cache
def _files_hash(directory: str, stamp: tuple) -> str:
    files = [Path(directory) / name for name, _, _ in stamp]
    return content_hash([[f.name, file_sha256(f)] for f in files], 64)


def model_dir_hash(directory: str) -> str:
    """Content hash of an HF model directory (every file's name and SHA-256, the cache's manifest excluded), computed
    once per process while the files' sizes and times stay the same."""
    path = Path(directory)
    if not path.is_dir():
        raise BadInput(f"the ctranslate2 engine converts a local HF model directory; {directory!r} is not one. "
                       f"Use the engine 'transformers' for a hub id.")
    stamp = tuple((f.name, f.stat().st_size, f.stat().st_mtime_ns) for f in sorted(path.iterdir())
                  if f.is_file() and f.name != MANIFEST)
    return _files_hash(str(path.resolve()), stamp)


def convert(model_dir: str, quantization: str, cache: ArtifactCache) -> Path:
    """The CTranslate2 conversion of `model_dir` (artifact kind `ct2_model`), made once per content and
    quantisation."""
    from ctranslate2.converters import TransformersConverter  # optional dependency (the `fast` extra)

    inputs = {"model_sha256": model_dir_hash(model_dir), "quantization": quantization,
              "ctranslate2": _ct2_version(), "transformers": transformers.__version__}

    def build(out: Path) -> None:
        log.info("converting %s for CTranslate2 (%s)", model_dir, quantization)
        try:
            TransformersConverter(model_dir).convert(str(out), quantization=quantization, force=True)
        except Exception as exc:
            raise RuntimeFailure(f"CTranslate2 cannot convert {model_dir} ({type(exc).__name__}: {exc}); use the "
                                 f"generation engine 'transformers' for this model.") from exc
        # The converter writes `unk_token: null` for tokenizers without one (e.g. byte-level BPEs trained here),
        # which the Generator refuses to load; the token is never used in generation, so EOS stands in.
        config = json.loads((out / "config.json").read_text())
        if config.get("unk_token") is None:
            config["unk_token"] = config.get("eos_token")
            (out / "config.json").write_text(json.dumps(config, indent=2))

    return cache.get_or_build("ct2_model", inputs, build).path


class CT2Sampler:
    """A converted model and the HF tokenizer, with `Policy.generate`'s signature and batching."""

    def __init__(self, model_dir: str, converted: Path, compute_type: str, chat: bool = False):
        import ctranslate2  # optional dependency (the `fast` extra)

        self.tokenizer = AutoTokenizer.from_pretrained(model_dir, trust_remote_code=False)
        self.chat = chat
        generation = GenerationConfig.from_pretrained(model_dir) if (Path(model_dir) /
                                                                     "generation_config.json").is_file() else None
        unmatched = {k: getattr(generation, k, None) for k, default in UNMATCHED_DEFAULTS.items()
                     if generation is not None and getattr(generation, k, default) not in (default, None)}
        if unmatched:
            raise RuntimeFailure(f"{model_dir}'s generation_config sets {unmatched}, which transformers applies and "
                                 f"CTranslate2 would not; use the generation engine 'transformers'.")
        eos = generation.eos_token_id if generation is not None and generation.eos_token_id is not None \
            else self.tokenizer.eos_token_id
        self.end_ids = [eos] if isinstance(eos, int) else list(eos)
        self.ctranslate2 = ctranslate2
        self.converted, self.compute_type = str(converted), compute_type

    def _generator(self, seed: int):
        """A Generator whose sampling stream starts at `seed`. CTranslate2 samples from a per-thread generator that
        its worker thread seeds from the global seed at first use, so only fresh workers can be reseeded: each
        `generate` call loads the model anew (~0.3 s for SmolLM2 in int8, ~1.5 s in float32)."""
        self.ctranslate2.set_random_seed(seed % 2**32)
        # The device is chosen at run time: PyPI's CTranslate2 wheels run on CUDA where a GPU is visible.
        device = "cuda" if self.ctranslate2.get_cuda_device_count() > 0 else "cpu"
        return self.ctranslate2.Generator(self.converted, device=device, compute_type=self.compute_type,
                                          intra_threads=torch.get_num_threads(), inter_threads=1)

    def generate(self, prompts: list[str], max_new_tokens: int = 32, temperature: float = 1.0, top_p: float = 1.0,
                 seed: int = 0, n: int = 1, batch_size: int = 16, progress=None) -> list[str]:
        """As `Policy.generate`: prompts sorted by length, `batch_size` sequences per batch; one random stream per
        call, seeded from `seed`, so the same call gives the same completions."""
        if not prompts:
            return []
        ids = prompt_ids(self.tokenizer, list(prompts), self.chat)
        if any(not row for row in ids):
            raise BadInput("an empty prompt gives the model nothing to condition on; give non-empty prompts.")
        order = sorted(range(len(prompts)), key=lambda i: len(ids[i]))
        # The Generator runs all but the last token of the batch's shortest prompt at once and the rest of each
        # prompt as forced steps. When that shortest prompt has one token, the forced steps would count towards
        # max_length and come back in the result, so one-token prompts are batched apart from longer ones: then every
        # result holds exactly the new tokens, at most max_new_tokens of them.
        groups = [[i for i in order if len(ids[i]) == 1], [i for i in order if len(ids[i]) > 1]]
        per_batch = max(1, batch_size // n)
        sampling = temperature > 0
        out: list[list[str]] = [[] for _ in prompts]
        generator = self._generator(seed)
        for group in groups:
            for start in range(0, len(group), per_batch):
                rows = [i for i in group[start : start + per_batch] for _ in range(n)]
                results = generator.generate_batch(
                    [self.tokenizer.convert_ids_to_tokens(ids[i]) for i in rows], max_length=max_new_tokens,
                    include_prompt_in_result=False, end_token=self.end_ids,
                    sampling_topk=0 if sampling else 1, sampling_topp=top_p if sampling else 1.0,
                    sampling_temperature=temperature if sampling else 1.0)
                texts = self.tokenizer.batch_decode([r.sequences_ids[0] for r in results], skip_special_tokens=True)
                for j, i in enumerate(rows[::n]):
                    out[i] = texts[j * n : (j + 1) * n]
                if progress is not None:
                    progress(len(rows) // n)
        return [text for samples in out for text in samples]
