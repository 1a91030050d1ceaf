"""Summed log-probs of a policy, memoised in the artifact cache and shared by every trial and worker.

The implicit reward (methods/implicit.py) scores the same (prompt, completion) items with the same two models in
every seed, so each seed after the first would recompute the first's numbers. `memoised(policy, cache, source)`
wraps a policy loaded from an artifact of the cache in a `LogprobMemo`: its `sum_logprobs` looks the numbers up in a
store kept per model (`<cache>/logprob_memo/<key>/`), computes only the missing ones in one call and stores them.
Everything else (`logprobs`, `generate`, `model`, `tokenizer`) is the wrapped policy's. The memo is an acceleration,
part of no artifact key or trial id.

Exactly the policy's numbers. `Policy.sum_logprobs` sorts the items by token length and scores them in left-padded
batches, and a row's value depends on its batch in the last bits (the padded width changes the kernels' summation
order). So the store holds whole scoring batches, keyed by their items in order: a call reuses a batch only where it
would score exactly that batch itself, and computes its missing batches in one call that forms the same batches. A
trial gives bit-identical rewards with the memo and without it (tests/test_logprob_memo.py).

Identity. A store's key is the model artifact's kind and key (and the directory inside it), the chat flag, device,
dtype, torch threads and the torch and transformers versions, salted with the code version like every artifact key:
one model never reads another's numbers. A policy loaded from elsewhere (a hub id, a directory outside the cache)
has no stable key and is returned unwrapped.

Concurrency. A store is a directory of immutable shards (JSON; floats round-trip exactly) and a manifest listing them
with their hashes, as every artifact has, so `bench cache verify` checks it and `bench cache gc` removes it when old
(no stored run names it). Readers take no lock: a shard is written atomically before the manifest that lists it is
atomically replaced. Writers hold the artifact's lock `<cache>/logprob_memo/.<key>.lock` while they compute the
missing batches, so two workers scoring the same items at once compute them once: the second waits, then reads. A
shard that does not match its hash is ignored, and removed by the next writer.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import torch
import transformers

from bench import CODE_VERSION
from bench.lm.policies import Policy, prompt_ids
from bench.storage.artifacts import (
    MANIFEST,
    ArtifactCache,
    atomic_write_bytes,
    atomic_write_json,
    content_hash,
    file_lock,
)

log = logging.getLogger(__name__)

KIND = "logprob_memo"


def scoring_batches(policy: Policy, prompts: list[str], completions: list[str], batch_size: int) -> list[list[int]]:
    """The batches `Policy.logprobs` scores, as indices into the inputs: rows stably sorted by token count (prompt
    and completion tokenized apart, as it does), then cut into runs of `batch_size`."""
    completion_ids = policy.tokenizer(list(completions), add_special_tokens=False)["input_ids"]
    lengths = [len(p) + len(c) for p, c in zip(prompt_ids(policy.tokenizer, list(prompts), policy.chat),
                                              completion_ids)]
    order = sorted(range(len(lengths)), key=lengths.__getitem__)
    return [order[start : start + batch_size] for start in range(0, len(order), batch_size)]


def batch_key(prompts: list[str], completions: list[str], batch: list[int]) -> str:
    return content_hash([[prompts[i], completions[i]] for i in batch], length=32)


def model_identity(cache: ArtifactCache, source: str) -> dict | None:
    """{"kind", "key", "file"} of the cache artifact whose directory holds the model directory `source`; None when
    `source` is not inside a complete artifact of `cache` (a hub id, a directory elsewhere)."""
    if not Path(source).is_dir():
        return None
    try:
        parts = Path(source).resolve().relative_to(cache.root.resolve()).parts
    except ValueError:
        return None
    if len(parts) < 2 or any(part.startswith(".") for part in parts[:2]):
        return None
    kind, key = parts[:2]
    try:
        manifest = json.loads((cache.path(kind, key) / MANIFEST).read_text())
    except (OSError, ValueError):
        return None
    if manifest.get("kind") != kind or manifest.get("key") != key:
        return None
    return {"kind": kind, "key": key, "file": "/".join(parts[2:])}


def memoised(policy: Policy, cache: ArtifactCache, source: str) -> Policy | LogprobMemo:
    """`policy` (loaded from `source`) with its summed log-probs memoised, if `source` is an artifact of `cache`."""
    identity = model_identity(cache, source)
    if identity is None:
        log.info("no log-prob memo for %s: it is not an artifact of the cache %s", source, cache.root)
        return policy
    return LogprobMemo(policy, cache, identity)


class LogprobMemo:
    """A policy whose `sum_logprobs` reads and fills the store of its model; all else is the wrapped policy's."""

    def __init__(self, policy: Policy, cache: ArtifactCache, model: dict):
        self.policy, self.cache = policy, cache
        self.inputs = {"model": model, "chat": policy.chat, "device": policy.device.type,
                       "dtype": str(next(policy.model.parameters()).dtype), "threads": torch.get_num_threads(),
                       "torch": torch.__version__, "transformers": transformers.__version__}
        self.key = cache.key(KIND, self.inputs)
        self.directory = cache.path(KIND, self.key)
        self.computed = 0  # rows this process has scored with the model (the rest came from the store)

    def __getattr__(self, name: str):
        if name == "policy":  # not set yet (e.g. while unpickling): never recurse
            raise AttributeError(name)
        return getattr(self.policy, name)

    def sum_logprobs(self, prompts: list[str], completions: list[str], batch_size: int = 16) -> np.ndarray:
        prompts, completions = list(prompts), list(completions)
        if len(prompts) != len(completions):
            raise ValueError(f"{len(prompts)} prompts but {len(completions)} completions")
        if not prompts:
            return np.zeros(0)
        batches = scoring_batches(self.policy, prompts, completions, batch_size)
        keys = [batch_key(prompts, completions, batch) for batch in batches]
        stored, _ = self._read()
        if any(key not in stored for key in keys):
            with file_lock(self.cache.root / KIND / f".{self.key}.lock"):
                stored, good = self._read()  # another worker may have stored them while this one waited
                missing = {key: batch for key, batch in zip(keys, batches) if key not in stored}
                if missing:
                    stored.update(self._compute(prompts, completions, missing, batch_size))
                    self._write(good, {key: stored[key] for key in missing})
        out = np.empty(len(prompts))
        for key, batch in zip(keys, batches):
            out[batch] = stored[key]
        return out

    def _compute(self, prompts, completions, missing: dict[str, list[int]], batch_size: int) -> dict:
        """The missing batches' sums, in one call. Their rows, concatenated in order, are already sorted by length,
        so the policy's stable sort keeps them in place and cuts them into these very batches (only the last batch
        of a call can be short, and it comes last)."""
        rows = [i for batch in missing.values() for i in batch]
        values = self.policy.sum_logprobs([prompts[i] for i in rows], [completions[i] for i in rows], batch_size)
        self.computed += len(rows)
        found, start = {}, 0
        for key, batch in missing.items():
            found[key] = [float(v) for v in values[start : start + len(batch)]]
            start += len(batch)
        return found

    def _read(self) -> tuple[dict[str, list[float]], dict[str, str]]:
        """(batch key -> sums, shard name -> sha256) of the shards the manifest lists that match their hashes."""
        try:
            listed = json.loads((self.directory / MANIFEST).read_text()).get("files", {})
        except (OSError, ValueError):  # no store yet, or `bench cache gc` is removing it
            return {}, {}
        stored, good = {}, {}
        for name, digest in listed.items():
            try:
                data = (self.directory / name).read_bytes()
                if hashlib.sha256(data).hexdigest() != digest:
                    raise ValueError("it does not match its recorded hash")
                stored.update(json.loads(data))
            except (OSError, ValueError) as exc:
                log.warning("log-prob memo %s: ignoring shard %s (%s)", self.directory, name, exc)
                continue
            good[name] = digest
        return stored, good

    def _write(self, good: dict[str, str], new: dict[str, list[float]]) -> None:
        """Add a shard and list it in a new manifest (with the lock held). A new store is assembled beside its place
        and renamed into it, as artifacts are; shards no longer listed (unmatched, or left by a writer that died
        before its manifest) are removed."""
        data = (json.dumps(new, sort_keys=True) + "\n").encode()
        digest = hashlib.sha256(data).hexdigest()
        name = f"batches-{digest[:20]}.json"
        files = {**good, name: digest}
        manifest = {"kind": KIND, "key": self.key, "inputs": self.inputs, "code_version": CODE_VERSION, "files": files}
        if self.directory.is_dir():
            atomic_write_bytes(self.directory / name, data)
            atomic_write_json(self.directory / MANIFEST, manifest)
            for path in self.directory.glob("batches-*.json"):
                if path.name not in files:
                    path.unlink(missing_ok=True)
            return
        self.directory.parent.mkdir(parents=True, exist_ok=True)
        for stale in self.directory.parent.glob(f".{self.key}.building.*"):  # a creator died; we hold the lock
            shutil.rmtree(stale, ignore_errors=True)
        building = Path(tempfile.mkdtemp(dir=self.directory.parent, prefix=f".{self.key}.building."))
        try:
            atomic_write_bytes(building / name, data)
            atomic_write_json(building / MANIFEST, manifest)
            os.replace(building, self.directory)
        except BaseException:
            shutil.rmtree(building, ignore_errors=True)
            raise
