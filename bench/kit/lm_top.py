"""The trainable-layer reward-model class, head "lm_top<k>": a frozen LM backbone whose last k transformer blocks
and final norm train together with a bias-free linear head on the mean-pooled output.

The lower blocks stay frozen, so their output — the hidden state entering block L−k of an L-block backbone, one
row per real token of prompt + completion, tokenized as `lm_features` does — is computed once per text and cached
on disk as an artifact (`lm_top_states`, under the artifact cache that holds the features table, keyed by that
table, the layer and the set of texts), then memory-mapped. Training runs only the top k blocks, on mini-batches of
those cached states. Pooling (mean over real tokens) and standardisation (the features table's training-set mean
and std, held fixed) are `FrozenLMFeatures`'s, so before any step the model scores exactly as the linear head over
frozen features does; with k = 0 it is that model.

The top blocks are a copy of the backbone's base model built with k layers, fed the cached states as
`inputs_embeds` (absolute position embeddings zeroed, dropout off); a check on the first texts encoded compares
its output with the full backbone's and refuses an architecture where the two differ.
"""

from __future__ import annotations

import copy
import functools
import json
import re
import tempfile
from pathlib import Path

import numpy as np
import torch
from torch import nn

from bench.errors import BadInput
from bench.kit.reward_models import FrozenLMFeatures, lm_batches, text_key
from bench.storage.artifacts import ArtifactCache, atomic_write_json, content_hash

LR_SCALE = 0.01  # the top blocks' learning rate is this times the head's (cfg.lr): pre-trained weights move slowly
CHUNK = 256  # texts per forward pass when no gradient is needed (scoring, validation)
_LAYER = re.compile(r"(^|\.)(h|layers)\.(\d+)\.")


class TopLayersEncoder(nn.Module):
    """`encode(prompts, completions)` gives row ids of cached lower-layer states; `forward(rows)` runs the top k
    blocks over them and returns standardised pooled features (n, dim). Only the top blocks' parameters train."""

    def __init__(self, frozen: FrozenLMFeatures, k: int):
        super().__init__()
        self.spec, self.k, self.dim, self.max_length = frozen.spec, k, frozen.dim, frozen.max_length
        self.register_buffer("mean", torch.from_numpy(np.asarray(frozen.mean, np.float32)), persistent=False)
        self.register_buffer("std", torch.from_numpy(np.asarray(frozen.std, np.float32)), persistent=False)
        self.lr_scale = LR_SCALE
        self.states: list[np.ndarray] = []  # per row: (tokens, dim) float32, a view into a memory-mapped table
        self.rows: dict[str, int] = {}
        self.table = frozen.rows  # keys of the task's own texts (features table): their states are worth storing
        self.checked = k == 0
        backbone, _ = self.backbone
        self.split = backbone.config.num_hidden_layers - k  # hidden_states[split] enters the first trainable block
        if not 0 <= k <= backbone.config.num_hidden_layers:
            raise BadInput(f"head lm_top{k} asks for more blocks than the backbone's "
                           f"{backbone.config.num_hidden_layers}; use a smaller k.")
        self.top = top_blocks(backbone, k) if k else None

    @functools.cached_property
    def backbone(self):
        """The whole frozen LM (fp32, eval mode): the weights of the top blocks and the states of new texts."""
        from transformers import AutoModelForCausalLM, AutoTokenizer  # heavy; loaded once per encoder

        tok = AutoTokenizer.from_pretrained(self.spec["model"], trust_remote_code=False)
        model = AutoModelForCausalLM.from_pretrained(self.spec["model"], dtype=torch.float32,
                                                     trust_remote_code=False)
        return model.eval().requires_grad_(False), tok

    def train(self, mode: bool = True):
        """Dropout stays off: the fit is deterministic and scores what it trained (gradients flow regardless)."""
        super().train(mode)
        if self.top is not None:
            self.top.eval()
        return self

    # ------------------------------------------------------------------ cached lower-layer states

    @torch.no_grad()
    def features_of(self, prompts: list[str], completions: list[str]) -> torch.Tensor:
        """Features of texts for scoring: the task's own texts through stored states; any other text (e.g. a
        policy's samples during re-alignment) through states computed here and dropped, so memory stays flat."""
        keys = [text_key(p, c) for p, c in zip(prompts, completions)]
        stored = [i for i, k in enumerate(keys) if k in self.rows or (self.table and k in self.table)]
        out = torch.zeros((len(keys), self.dim), device=self.mean.device)
        if stored:
            out[stored] = self(self.encode([prompts[i] for i in stored], [completions[i] for i in stored]).to(
                self.mean.device))
        transient = sorted(set(range(len(keys))) - set(stored))
        for start in range(0, len(transient), CHUNK):
            chunk = transient[start : start + CHUNK]
            states = self._states([prompts[i] for i in chunk], [completions[i] for i in chunk])
            out[chunk] = self._pooled(states)
        return out

    def encode(self, prompts: list[str], completions: list[str]) -> torch.Tensor:
        keys = [text_key(p, c) for p, c in zip(prompts, completions)]
        missing = list({k: i for i, k in enumerate(keys) if k not in self.rows}.values())
        if missing:
            self._add([prompts[i] for i in missing], [completions[i] for i in missing], [keys[i] for i in missing])
        return torch.tensor([self.rows[k] for k in keys], dtype=torch.long)

    def _add(self, prompts: list[str], completions: list[str], keys: list[str]) -> None:
        order = sorted(range(len(keys)), key=lambda i: keys[i])
        prompts, completions, keys = [prompts[i] for i in order], [completions[i] for i in order], sorted(keys)
        features_dir = self.spec.get("features_dir")
        if features_dir:  # on disk beside the features table: every trial of this task reuses it
            directory = Path(features_dir)
            inputs = {"features": directory.name, "layer": self.split, "max_length": self.max_length,
                      "texts": content_hash(keys, 24), "format": 1}
            art = ArtifactCache(directory.parent.parent).get_or_build(
                "lm_top_states", inputs, lambda d: self._write(d, prompts, completions, keys))
            path = art.path
        else:
            path = Path(self._tmp.name) / content_hash(keys, 24)
            path.mkdir(exist_ok=True)
            self._write(path, prompts, completions, keys)
        table = np.load(path / "states.npy", mmap_mode="r")
        offsets = np.load(path / "offsets.npy")
        for i, key in enumerate(json.loads((path / "keys.json").read_text())):
            self.rows[key] = len(self.states)
            self.states.append(table[offsets[i] : offsets[i + 1]])

    @functools.cached_property
    def _tmp(self):
        """Where an encoder without a features table (no artifact cache) keeps its states."""
        return tempfile.TemporaryDirectory(prefix="lm_top_states-")

    @torch.no_grad()
    def _states(self, prompts: list[str], completions: list[str]) -> list[np.ndarray]:
        """The hidden state entering the first trainable block, per text: (its tokens, dim) float32."""
        model, tok = self.backbone
        per_text: list[np.ndarray] = [np.zeros((0, self.dim), np.float32)] * len(prompts)
        for batch, hidden_states, mask in lm_batches(model, tok, prompts, completions, 16, self.max_length):
            lower = hidden_states[self.split].float()
            for j, i in enumerate(batch):
                per_text[i] = lower[j, mask[j].bool()].cpu().numpy()
            if not self.checked:
                self._check(lower, mask, hidden_states[-1].float())
        return per_text

    def _write(self, out: Path, prompts: list[str], completions: list[str], keys: list[str]) -> None:
        per_text = self._states(prompts, completions)
        offsets = np.cumsum([0] + [len(s) for s in per_text])
        np.save(out / "states.npy", np.concatenate(per_text) if per_text else np.zeros((0, self.dim), np.float32))
        np.save(out / "offsets.npy", offsets)
        atomic_write_json(out / "keys.json", keys, indent=None)

    def _check(self, lower: torch.Tensor, mask: torch.Tensor, last: torch.Tensor) -> None:
        """Freshly copied top blocks over the cached states must reproduce the full backbone's last hidden state."""
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        top = top_blocks(self.backbone[0], self.k).to(lower.device)
        ours = top(inputs_embeds=lower, attention_mask=mask, position_ids=positions).last_hidden_state
        gap = float(((ours - last) * mask[..., None]).abs().max())
        if gap > 1e-3 * max(1.0, float(last.abs().max())):
            raise RuntimeError(f"head lm_top{self.k}: the copied top blocks of {type(top).__name__} do not reproduce "
                               f"the backbone (max gap {gap:.3g}); this architecture cannot be split here.")
        self.checked = True

    # ------------------------------------------------------------------ the trainable part

    def forward(self, rows: torch.Tensor) -> torch.Tensor:
        states = [self.states[r] for r in rows.tolist()]
        if torch.is_grad_enabled():
            return self._pooled(states)
        return torch.cat([self._pooled(states[s : s + CHUNK]) for s in range(0, len(states), CHUNK)] or
                         [torch.zeros((0, self.dim), device=self.mean.device)])

    def _pooled(self, states: list[np.ndarray]) -> torch.Tensor:
        device = self.mean.device
        width = max(len(s) for s in states)
        x = torch.zeros((len(states), width, self.dim))
        mask = torch.zeros((len(states), width), dtype=torch.long)
        for j, s in enumerate(states):  # right-padded: causal attention never lets a real token see a pad
            x[j, : len(s)] = torch.from_numpy(np.array(s))  # a copy: the table is read-only
            mask[j, : len(s)] = 1
        x, mask = x.to(device), mask.to(device)
        if self.top is not None:
            positions = torch.arange(width, device=device).expand(len(states), width)
            x = self.top(inputs_embeds=x, attention_mask=mask, position_ids=positions).last_hidden_state
        pooled = (x * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)
        return (pooled - self.mean) / self.std


def top_blocks(backbone, k: int) -> nn.Module:
    """The backbone's base model rebuilt with its last k blocks and final norm (copied weights, trainable), fed
    hidden states as `inputs_embeds`: a one-row token embedding (unused) and zero absolute position embeddings."""
    base = backbone.base_model
    config = copy.deepcopy(base.config)
    total = config.num_hidden_layers
    config.num_hidden_layers, config.vocab_size, config.pad_token_id = k, 1, None
    with torch.random.fork_rng(devices=[]):  # every weight is copied or zeroed: leave the seeded generator alone
        top = type(base)(config)
    source = {}
    for name, tensor in base.state_dict().items():
        match = _LAYER.search(name)
        if match:
            layer = int(match.group(3)) - (total - k)
            if layer < 0:
                continue
            name = f"{name[: match.start(3)]}{layer}{name[match.end(3):]}"
        source[name] = tensor
    own = top.state_dict()
    top.load_state_dict({n: source[n] if n in source and source[n].shape == t.shape else t for n, t in own.items()})
    frozen = [top.get_input_embeddings()]
    if getattr(top, "wpe", None) is not None:  # GPT-2's absolute positions were added below the split already
        nn.init.zeros_(top.wpe.weight)
        frozen.append(top.wpe)
    for module in frozen:
        module.requires_grad_(False)
    return top.eval()


def upgrade(encoder, k: int):
    """The encoder for head lm_top<k>: the top-k wrapper of a frozen-LM encoder (itself when it already is one)."""
    if isinstance(encoder, TopLayersEncoder) and encoder.k == k:
        return encoder
    if not isinstance(encoder, FrozenLMFeatures):
        raise BadInput(f"head lm_top{k} trains a language model's top blocks, but this task's reward models read "
                       f"{type(encoder).__name__}; use --head linear or --head mlp.")
    return TopLayersEncoder(encoder, k)
