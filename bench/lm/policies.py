"""Causal-LM policies: load (HF hub id, local HF directory, or a GGUF file such as the SmolLM2 shipped on PyPI),
sample completions fast, and score given completions by log-probability.

Specs, as tasks write them in config:
    {"type": "hf", "model": "EleutherAI/pythia-70m"}               hub id or local HF-format directory
    {"type": "gguf", "asset": "smollm2-135m-instruct-gguf"}        a pinned asset from bench.lm.assets
    {"type": "gguf", "file": "/path/to/model.gguf"}                any GGUF file transformers can read
Optional keys: "chat" (wrap each prompt in the tokenizer's chat template), "device" ("auto", "cpu", "cuda").

A GGUF model is dequantised once to fp32 and cached as an ordinary safetensors HF directory (artifact kind
`gguf_model`), because the GGUF load takes ~30 s while the cached directory loads in ~1 s, and a model loaded
from GGUF refuses `save_pretrained` (as policies must, to be trained and reloaded as a reference model).
"""

from __future__ import annotations

import logging
import pickle
from pathlib import Path

import numpy as np
import torch
import transformers
from safetensors import safe_open
from transformers import AutoModelForCausalLM, AutoTokenizer

from bench.errors import BadInput, RuntimeFailure
from bench.lm.assets import fetch_asset
from bench.storage.artifacts import Artifact, ArtifactCache, file_sha256

log = logging.getLogger(__name__)


def pick_device(device: str | None = None) -> torch.device:
    """`None`/"auto" → CUDA when there is a GPU, else CPU; never a GPU that is not there."""
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if str(device).startswith("cuda") and not torch.cuda.is_available():
        raise BadInput(f"device {device!r} was asked for but no CUDA GPU is visible; use device 'auto' or 'cpu'.")
    return torch.device(device)


# ----------------------------------------------------------------------------------------------------- loading


def load_problem(source: str, exc: Exception) -> str:
    """Why a `from_pretrained(source)` failed, naming the weights file when a local one is at fault. Models load
    weights only: safetensors, or a pickled `.bin` through `torch.load(weights_only=True)`, which refuses a pickle
    that would run code; remote code is never trusted (`trust_remote_code=False` on every load)."""
    directory = Path(source)
    if directory.is_dir():
        weights = sorted(directory.glob("*.safetensors"))
        for path in weights:  # transformers reads these when present, and ignores any .bin beside them
            try:
                with safe_open(path, framework="pt"):
                    pass
            except Exception as error:
                return f"{path} is truncated or corrupt: {error}"
        for path in [] if weights else sorted(directory.glob("*.bin")):
            try:
                torch.load(path, map_location="meta", weights_only=True)
            except pickle.UnpicklingError:
                return (f"{path} is a pickle that would run code when loaded, so weights-only loading refused it; "
                        f"use safetensors weights (model.safetensors) saved from a copy you trust")
            except Exception as error:
                return f"{path} is truncated or corrupt: {type(error).__name__}: {str(error).splitlines()[0][:200]}"
    return f"{type(exc).__name__}: {str(exc).splitlines()[0][:300]}"


def gguf_to_hf(gguf_file: Path, cache: ArtifactCache, gguf_sha256: str | None = None) -> Artifact:
    """The cached fp32 safetensors HF directory of a GGUF model (model + tokenizer), converting it once.

    The key is the GGUF file's hash and the transformers version (its dequantiser and name mapping make the
    weights), not the file's path, so a copy of the same file elsewhere reuses the conversion."""
    gguf_file = Path(gguf_file)
    inputs = {
        "gguf_sha256": gguf_sha256 or file_sha256(gguf_file),
        "transformers": transformers.__version__,
        "dtype": "float32",
    }

    def build(out: Path) -> None:
        log.info("converting %s to an fp32 safetensors model (once per cache; ~30-60 s for SmolLM2 on CPU)", gguf_file)
        try:
            tok = AutoTokenizer.from_pretrained(gguf_file.parent, gguf_file=gguf_file.name, trust_remote_code=False)
            model = AutoModelForCausalLM.from_pretrained(gguf_file.parent, gguf_file=gguf_file.name,
                                                         dtype=torch.float32, trust_remote_code=False)
        except Exception as exc:
            raise RuntimeFailure(
                f"transformers cannot read the GGUF file {gguf_file} ({type(exc).__name__}: {exc}); make sure "
                f"`gguf` and `accelerate` are installed and the file is a GGUF model of an architecture transformers "
                f"supports."
            ) from exc
        # The GGUF loader marks the model as quantized, and a quantized model refuses save_pretrained. The weights
        # are already dequantised fp32, so drop the marker and copy them into a plain model of the same class.
        config = model.config
        if hasattr(config, "quantization_config"):
            delattr(config, "quantization_config")
        clean = type(model)(config)
        clean.load_state_dict(model.state_dict())
        clean.save_pretrained(out)
        tok.save_pretrained(out)

    return cache.get_or_build("gguf_model", inputs, build)


def resolve_model_dir(spec: dict | str, cache: ArtifactCache | None) -> str:
    """The hub id or local directory that `from_pretrained` should load for `spec` (converting GGUF if needed)."""
    if isinstance(spec, str):
        spec = {"type": "hf", "model": spec}
    kind = spec.get("type")
    if kind == "hf":
        return str(spec["model"])
    if kind == "gguf":
        if cache is None:
            raise BadInput("a GGUF policy needs an artifact cache to hold its converted weights.")
        if "asset" in spec:
            art = fetch_asset(spec["asset"], cache)
            ggufs = [name for name in art.manifest["files"] if name.endswith(".gguf")]
            if len(ggufs) != 1:
                raise RuntimeFailure(f"asset {spec['asset']!r} holds {len(ggufs)} GGUF files, not one.")
            return str(gguf_to_hf(art.file(ggufs[0]), cache, art.manifest["files"][ggufs[0]]).path)
        if "file" in spec:
            if not Path(spec["file"]).is_file():
                raise BadInput(f"GGUF file {spec['file']} does not exist; give the path of a .gguf file.")
            return str(gguf_to_hf(Path(spec["file"]), cache).path)
        raise BadInput("a GGUF policy spec needs an 'asset' (see bench/assets.py) or a 'file'.")
    raise BadInput(f"unknown policy type {kind!r}; choose 'hf' or 'gguf'.")


def load_policy(spec: dict | str, cache: ArtifactCache | None = None, device: str | None = None) -> "Policy":
    if isinstance(spec, str):
        spec = {"type": "hf", "model": spec}
    source = resolve_model_dir(spec, cache)
    return Policy.from_pretrained(source, device=device or spec.get("device"), chat=bool(spec.get("chat", False)))


# ------------------------------------------------------------------------------------------------------ policy


def format_prompt(tokenizer, prompt: str, chat: bool) -> str:
    if not chat:
        return prompt
    return tokenizer.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                         add_generation_prompt=True)


def prompt_ids(tokenizer, prompts: list[str], chat: bool) -> list[list[int]]:
    """The token ids a policy conditions on, for sampling and scoring alike (and for every engine of
    bench/lm/engines.py). Chat templates already contain the special tokens, so the tokenizer adds none then."""
    return tokenizer([format_prompt(tokenizer, p, chat) for p in prompts], add_special_tokens=not chat)["input_ids"]


class Policy:
    """A causal LM and its tokenizer on one device, in eval mode.

    `chat=True` wraps each prompt in the tokenizer's chat template (user turn + generation prompt) for both
    sampling and scoring, so the two always see the same context."""

    def __init__(self, model, tokenizer, device: torch.device | str | None = None, chat: bool = False,
                 name: str = ""):
        self.device = pick_device(device) if not isinstance(device, torch.device) else device
        self.model = model.to(self.device).eval()
        self.tokenizer = tokenizer
        if tokenizer.pad_token is None:
            # Padded positions are masked out, so any token will do; EOS is the usual choice.
            tokenizer.pad_token = tokenizer.eos_token
        tokenizer.padding_side = "left"  # generation appends on the right, so every prompt must end there
        self.chat = chat
        self.name = name

    @classmethod
    def from_pretrained(cls, source: str, device: str | None = None, chat: bool = False) -> "Policy":
        try:
            tokenizer = AutoTokenizer.from_pretrained(source, trust_remote_code=False)
            model = AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32, trust_remote_code=False)
        except Exception as exc:
            raise RuntimeFailure(
                f"the policy model {source!r} cannot load ({load_problem(source, exc)}); "
                f"give a local HF-format directory, a GGUF asset, or a hub id when the Hub is reachable."
            ) from exc
        return cls(model, tokenizer, device=device, chat=chat, name=source)

    # --- text ↔ ids

    def format_prompt(self, prompt: str) -> str:
        return format_prompt(self.tokenizer, prompt, self.chat)

    def _prompt_ids(self, prompts: list[str]) -> list[list[int]]:
        return prompt_ids(self.tokenizer, prompts, self.chat)

    def _left_pad(self, rows: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        width = max(len(r) for r in rows)
        ids = torch.full((len(rows), width), self.tokenizer.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, r in enumerate(rows):
            if r:
                ids[i, width - len(r) :] = torch.tensor(r)
                mask[i, width - len(r) :] = 1
        return ids.to(self.device), mask.to(self.device)

    # --- sampling

    @torch.no_grad()
    def generate(self, prompts: list[str], max_new_tokens: int = 32, temperature: float = 1.0, top_p: float = 1.0,
                 seed: int = 0, n: int = 1, batch_size: int = 16, progress=None) -> list[str]:
        """`n` completions per prompt (prompt-major: prompt 0's n samples, then prompt 1's, …), without the
        prompt. temperature 0 is greedy. Prompts are sorted by length and batched so that little padding is
        computed; each batch is seeded from (seed, batch), so the same call gives the same completions.
        `progress(k)`, if given, is called with the number of prompts done after each batch."""
        if not prompts:
            return []
        prompt_ids = self._prompt_ids(list(prompts))
        order = sorted(range(len(prompts)), key=lambda i: len(prompt_ids[i]))
        out: list[list[str]] = [[] for _ in prompts]
        per_batch = max(1, batch_size // n)  # batch_size counts sequences, as memory does
        sampling = temperature > 0
        for b, start in enumerate(range(0, len(order), per_batch)):
            rows = order[start : start + per_batch]
            # n copies of each prompt, side by side (HF's num_return_sequences refuses greedy decoding).
            ids, mask = self._left_pad([prompt_ids[i] for i in rows for _ in range(n)])
            # HF generate draws from the global torch RNG; seed it per batch so results don't depend on
            # anything that ran before.
            torch.manual_seed(seed * 1_000_003 + b)
            generated = self.model.generate(
                input_ids=ids,
                attention_mask=mask,
                max_new_tokens=max_new_tokens,
                do_sample=sampling,
                temperature=temperature if sampling else None,
                top_p=top_p if sampling else None,
                top_k=0 if sampling else None,  # plain temperature sampling unless top_p says otherwise
                pad_token_id=self.tokenizer.pad_token_id,
                use_cache=True,
            )
            texts = self.tokenizer.batch_decode(generated[:, ids.shape[1] :], skip_special_tokens=True)
            for j, i in enumerate(rows):
                out[i] = texts[j * n : (j + 1) * n]
            if progress is not None:
                progress(len(rows))
        return [text for samples in out for text in samples]

    # --- scoring

    @torch.no_grad()
    def logprobs(self, prompts: list[str], completions: list[str], batch_size: int = 16) -> list[np.ndarray]:
        """log π(y_t | x, y_<t) for each completion token, one array per (prompt, completion) pair.

        Prompt and completion are tokenized separately and concatenated, the same split generation makes."""
        if len(prompts) != len(completions):
            raise ValueError(f"{len(prompts)} prompts but {len(completions)} completions")
        if not prompts:
            return []
        prompt_ids = self._prompt_ids(list(prompts))
        if any(len(p) == 0 for p in prompt_ids):
            raise ValueError("an empty prompt leaves the first completion token unconditioned; give a non-empty prompt")
        completion_ids = self.tokenizer(list(completions), add_special_tokens=False)["input_ids"]
        rows = [p + c for p, c in zip(prompt_ids, completion_ids)]
        order = sorted(range(len(rows)), key=lambda i: len(rows[i]))
        out: list[np.ndarray] = [np.zeros(0)] * len(rows)
        for start in range(0, len(order), batch_size):
            batch = order[start : start + batch_size]
            ids, mask = self._left_pad([rows[i] for i in batch])
            # With left padding, positions must count real tokens only, or each row would see a shifted prompt.
            positions = (mask.cumsum(-1) - 1).clamp(min=0)
            logits = self.model(input_ids=ids, attention_mask=mask, position_ids=positions).logits.float()
            logp = torch.log_softmax(logits[:, :-1], dim=-1).gather(-1, ids[:, 1:, None]).squeeze(-1)
            width = ids.shape[1]
            for j, i in enumerate(batch):
                k = len(completion_ids[i])
                # The token at position t is predicted by position t-1: the last k predictions are the completion.
                out[i] = logp[j, width - 1 - k :].double().cpu().numpy() if k else np.zeros(0)
        return out

    def sum_logprobs(self, prompts: list[str], completions: list[str], batch_size: int = 16) -> np.ndarray:
        return np.array([lp.sum() for lp in self.logprobs(prompts, completions, batch_size)])

    def save(self, directory: Path) -> None:
        """A plain HF directory (model + tokenizer), e.g. for TRL, which reloads reference models by path."""
        self.model.save_pretrained(directory)
        self.tokenizer.save_pretrained(directory)
