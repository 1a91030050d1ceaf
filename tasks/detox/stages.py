"""The detox build, stage by stage. Each stage reads what earlier ones left in the `Build` and adds its own
artifacts (content-addressed, so a rerun reuses them); tasks/detox/task.py lists the stages in order."""

from __future__ import annotations

import functools
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from bench.data import Completions, Demonstrations, Split
from bench.kit.reward_models import lm_features, text_key
from bench.lm import rlhf
from bench.lm.assets import ASSETS
from bench.lm.engines import DEFAULT as DEFAULT_ENGINE
from bench.lm.engines import Engine, key_part, make_engine
from bench.lm.judges import make_judge
from bench.lm.outcomes import cached_judged_samples
from bench.lm.policies import Policy, resolve_model_dir
from bench.lm.realign_trial import SETUP_FILE, RealignSetup
from bench.progress import Stages
from bench.storage.artifacts import Artifact, ArtifactCache, atomic_write_json, content_hash
from bench.task import hash_texts, split_fingerprints
from tasks.detox.config import TINY, DetoxConfig, non_default, parse_judge, recipe_settings
from tasks.detox.prompts import dir_hash, heldout_prompts, load_prompts, split_prompts
from tasks.detox.summary import spearman
from tasks.detox.tiny_lm import train_tiny_lm


@dataclass
class Build:
    """One detox build: its settings, cache and progress display, and what each stage produced so far."""

    cfg: DetoxConfig
    cache: ArtifactCache
    stages: Stages
    splits: dict[str, list[str]] = field(default_factory=dict)
    base: tuple[str, dict] = ("", {})  # (model directory, identity in artifact keys)
    expert: tuple[str, dict] = ("", {})
    expert_info: dict = field(default_factory=dict)
    artifacts: dict[str, Artifact] = field(default_factory=dict)
    backbone_dir: str = ""  # the frozen LM whose features the reward heads read
    backbone_identity: dict = field(default_factory=dict)
    eval_prompts: list[str] = field(default_factory=list)

    @functools.cached_property
    def reward_spec(self) -> dict:
        return parse_judge(self.cfg.reward_judge)

    @functools.cached_property
    def eval_spec(self) -> dict:
        return parse_judge(self.cfg.eval_judge)

    @functools.cached_property
    def reward_judge(self):
        return make_judge(self.reward_spec, self.cache)

    @functools.cached_property
    def eval_judge(self):
        return make_judge(self.eval_spec, self.cache)

    @functools.cached_property
    def policies(self) -> dict[str, Policy]:
        """π₀ and π_E, loaded once and only if a stage must be built."""
        return {"base": Policy.from_pretrained(self.base[0]), "expert": Policy.from_pretrained(self.expert[0])}

    @functools.cached_property
    def engine(self) -> Engine:
        return make_engine(self.cfg.gen_engine, self.cache)

    @property
    def samplers(self) -> dict:
        """What samples π₀ and π_E: the loaded policies themselves under the reference engine."""
        if self.engine.name == DEFAULT_ENGINE:
            return self.policies
        return {"base": self.engine.load(self.base[0]), "expert": self.engine.load(self.expert[0])}

    @property
    def judges(self) -> dict:
        """name -> (spec, loader): judges load only when an artifact must be built."""
        return {"R*": (self.reward_spec, lambda: self.reward_judge), "eval": (self.eval_spec, lambda: self.eval_judge)}


# ------------------------------------------------------------------------------------------------ stages


def prompts(b: Build) -> None:
    texts = load_prompts(b.cfg, b.cache)
    b.splits = split_prompts(texts, b.cfg.n_prompts, b.cfg.val_fraction, b.cfg.test_fraction, b.cfg.data_seed)


def base_model(b: Build) -> None:
    name = b.cfg.base_model
    if name == TINY:
        corpus = load_prompts(b.cfg, b.cache)  # all distinct prompt texts: π₀'s "pre-training" data, not R*
        art = train_tiny_lm(corpus, b.cfg.tiny_steps, b.cfg.data_seed, b.cache, b.stages)
        b.base = (str(art.path), {"tiny_lm": art.key})
    elif name in ASSETS:
        b.base = (resolve_model_dir({"type": "gguf", "asset": name}, b.cache), {"gguf_asset": name})
    elif Path(name).is_dir():
        local = str(Path(name).resolve())
        b.base = (local, {"local": local, "revision": dir_hash(Path(name))})
    else:
        b.base = (name, {"hub": name})


def expert(b: Build) -> None:
    """π_E: audited (an existing RLHF'd model) or trained here with the recipe against R*."""
    if b.cfg.expert_model:
        # A local directory's content joins the key (a hub id names a published model); absent for hub ids, so the
        # keys of audits of hub models stay as they were.
        local = Path(b.cfg.expert_model)
        revision = {"revision": dir_hash(local)} if local.is_dir() else {}
        b.expert = (resolve_model_dir(b.cfg.expert_model, b.cache), {"audited": b.cfg.expert_model, **revision})
        b.expert_info = {"mode": "audited", "model": b.cfg.expert_model, "beta": None}
        return
    recipe = rlhf.recipe_from(recipe_settings(b.cfg))
    advance, done = None, 0

    def progress(step: int, total: int) -> None:
        nonlocal advance, done
        advance = advance or b.stages.stage(f"π_E: {recipe.algorithm.upper()} steps", total)
        advance(step - done)
        done = step

    class LazyJudge:  # the judge loads only if the expert must be trained
        def p_toxic(self, texts):
            return b.reward_judge.p_toxic(texts)

    art = rlhf.train_expert(b.base[0], b.base[1], b.reward_spec, LazyJudge(), b.splits["train"], recipe, b.cache,
                            progress)
    b.expert = (str(art.path / "model"), {"artifact": art.key})
    curve = art.read_json("curve.json")
    b.expert_info = {"mode": "trained", "artifact": art.key, "recipe": art.read_json("recipe.json"), "curve": curve,
                     "curve_summary": rlhf.curve_summary(curve), "beta": recipe.beta if recipe.beta > 0 else None,
                     "build_seconds": art.manifest.get("seconds")}


def samples(b: Build) -> None:
    """k completions per prompt of every split from π_E and π₀: the demonstrations' texts. The generation engine
    (`gen_engine`) joins the decoding settings, and so the key, only when it is not the reference transformers."""
    cfg = b.cfg
    # gen_batch_size chunks and seeds the prompts (write_generations), so it changes the samples; it was missing from
    # the key and joins it only when not the default, so samples drawn at the default keep their keys.
    decoding = {"completions_per_prompt": cfg.completions_per_prompt, "max_new_tokens": cfg.max_new_tokens,
                "temperature": cfg.temperature, "top_p": cfg.top_p, "top_k": 0, "seed": cfg.data_seed,
                "chat_template": False, "prompt_included_in_text": False, **key_part(b.engine),
                **non_default(cfg, "gen_batch_size")}
    inputs = {"prompts": {s: hash_texts(p) for s, p in b.splits.items()}, "base": b.base[1], "expert": b.expert[1],
              "decoding": decoding}
    b.artifacts["samples"] = b.cache.get_or_build(
        "detox_samples", inputs, lambda d: write_generations(d, b.splits, b.samplers, decoding, cfg, b.stages))


def features(b: Build) -> None:
    """Frozen-backbone features of every completion, so reward heads train in seconds."""
    cfg = b.cfg
    b.backbone_dir, b.backbone_identity = {"base": b.base, "expert": b.expert}.get(
        cfg.feature_backbone, (cfg.feature_backbone, {"model": cfg.feature_backbone}))
    loaded = cfg.feature_backbone in ("base", "expert")  # reuse the policy already in memory
    inputs = {"backbone": b.backbone_identity, "samples": b.artifacts["samples"].key,
              "max_length": cfg.feature_max_length,
              "pooling": "mean_last_hidden"}
    b.artifacts["features"] = b.cache.get_or_build("lm_features", inputs, lambda d: write_features(
        d, b.artifacts["samples"].read_json("samples.json"), b.backbone_dir, b.policies if loaded else None, cfg,
        b.stages))


def demos(b: Build) -> None:
    feats = b.artifacts["features"]
    encoder = {"type": "frozen_lm", "model": b.backbone_dir, "dim": feats.read_json("meta.json")["dim"],
               "max_length": b.cfg.feature_max_length, "features_dir": str(feats.path)}
    demo_obj = demonstrations(b.artifacts["samples"].read_json("samples.json"), encoder)
    inputs = {"samples": b.artifacts["samples"].key, "features": feats.key, "encoder_type": "frozen_lm"}
    b.artifacts["demos"] = b.cache.get_or_build(
        "demos", inputs, lambda d: atomic_write_json(d / "demos.json", demo_obj.to_json(), indent=None))


def truth(b: Build) -> None:
    """R* (quarantined: only the scorer reads it) and the evaluation judge's scores of every demonstration."""
    inputs = {"samples": b.artifacts["samples"].key, "reward_judge": b.reward_spec, "eval_judge": b.eval_spec,
              "format": 2}
    demo_obj = Demonstrations.from_artifact(b.artifacts["demos"])
    b.artifacts["truth"] = b.cache.get_or_build("truth", inputs, lambda d: write_truth(
        d, b.artifacts["samples"].read_json("samples.json"), demo_obj, b.reward_judge, b.eval_judge, b.reward_spec,
        b.eval_spec, b.stages))


def policy_record(b: Build) -> None:
    """Where π₀ and π_E are, for methods that declare `needs_policies` (the implicit reward)."""
    record = {"base": b.base[0], "expert": b.expert[0], "beta": b.expert_info.get("beta")}
    b.artifacts["policies"] = b.cache.get_or_build(
        "policies", {"base": b.base[1], "expert": b.expert[1]},
        lambda d: atomic_write_json(d / "policies.json", record))


def evaluations(b: Build) -> None:
    """π₀ and π_E judged on prompts no policy trained on and no method saw (see `eval_prompts`), by both judges;
    and the best-of-n pool of π₀ samples on the test split."""
    cfg = b.cfg
    b.eval_prompts = list(b.splits["test"])
    if cfg.eval_prompts == "test+heldout":
        room = max(0, cfg.eval_max_prompts - len(b.eval_prompts))
        b.eval_prompts += heldout_prompts(cfg, b.cache, b.splits)[:room]
    for role, (directory, identity) in (("base", b.base), ("expert", b.expert)):
        advance = b.stages.stage(f"evaluation: sampling {'π₀' if role == 'base' else 'π_E'}", len(b.eval_prompts))
        b.artifacts[f"eval_{role}"] = cached_judged_samples(
            b.cache, directory, identity, b.base[0], b.base[1], b.judges, b.eval_prompts, cfg.eval_samples,
            cfg.max_new_tokens, cfg.data_seed, cfg.eval_batch_size, progress=advance, engine=b.engine)
    advance = b.stages.stage("best-of-n pool: sampling π₀", len(b.splits["test"]))
    b.artifacts["bon_pool"] = cached_judged_samples(
        b.cache, b.base[0], b.base[1], None, None, b.judges, b.splits["test"], cfg.bon_samples, cfg.max_new_tokens,
        cfg.data_seed + 1, cfg.eval_batch_size, progress=advance, engine=b.engine)


def realign_setup(b: Build) -> None:
    """Everything re-alignment trials need (bench/lm/realign_trial.py), as one artifact."""
    cfg, spread = b.cfg, b.artifacts["truth"].read_json("reward_spread.json")
    setup = RealignSetup(
        base_dir=b.base[0], base_identity=b.base[1], expert_identity=b.expert[1], recipe=recipe_settings(cfg),
        train_prompts=b.splits["train"], bon_prompts=b.splits["test"], reward_scale=spread["std"],
        reward_scale_source=spread["source"], judges={name: spec for name, (spec, _) in b.judges.items()},
        eval={"prompts": b.eval_prompts, "k": cfg.eval_samples, "max_new_tokens": cfg.max_new_tokens,
              "seed": cfg.data_seed, "batch_size": cfg.eval_batch_size,
              **({"engine": cfg.gen_engine} if cfg.gen_engine != DEFAULT_ENGINE else {})},  # keyed only when set
        evaluations={role: b.artifacts[f"eval_{role}"].key for role in ("base", "expert")},
        bon_pool=b.artifacts["bon_pool"].key).to_json()
    b.artifacts["rerlhf"] = b.cache.get_or_build("rerlhf_setup", setup,
                                                 lambda d: atomic_write_json(d / SETUP_FILE, setup))


# ---------------------------------------------------------------------------------------- stage outputs


def write_generations(out: Path, splits: dict, samplers: dict, decoding: dict, cfg: DetoxConfig,
                      stages: Stages) -> None:
    """samples.json: per split, the prompts and each policy's k completions per prompt (prompt-major).

    The reference engine is called once per batch of prompts, each seeded apart; another engine once per split and
    policy, because its samplers pay a model load per call (bench/lm/engines.py)."""
    k = decoding["completions_per_prompt"]
    per_call = max(1, cfg.gen_batch_size // k if "engine" not in decoding else max(map(len, splits.values())))
    result = {"decoding": decoding, "splits": {}}
    total = sum(len(p) for p in splits.values()) * 2
    advance = stages.stage("demos: sampling π_E and π₀", total)
    started = time.time()
    for split, prompts in splits.items():
        entry = {"prompts": prompts}
        for role in ("expert", "base"):
            texts = []
            for chunk_no, start in enumerate(range(0, len(prompts), per_call)):
                chunk = prompts[start : start + per_call]
                seed = int(content_hash([decoding["seed"], split, role, chunk_no], 8), 16) % (2**31)
                texts += samplers[role].generate(chunk, max_new_tokens=decoding["max_new_tokens"],
                                                   temperature=decoding["temperature"], top_p=decoding["top_p"],
                                                   seed=seed, n=k, batch_size=cfg.gen_batch_size)
                advance(len(chunk))
            entry[role] = texts
        result["splits"][split] = entry
    result["seconds"] = round(time.time() - started, 2)
    atomic_write_json(out / "samples.json", result, indent=None)


def _items(samples: dict, split: str) -> tuple[Completions, list[tuple[int, int]]]:
    entry = samples["splits"][split]
    k = samples["decoding"]["completions_per_prompt"]
    prompt_ids, prompts, texts, sources, pairs = [], [], [], [], []
    for local_id, prompt in enumerate(entry["prompts"]):
        first = len(texts)
        for role in ("expert", "base"):
            for y in entry[role][local_id * k : (local_id + 1) * k]:
                prompt_ids.append(local_id)
                prompts.append(prompt)
                texts.append(y)
                sources.append(role)
        pairs += [(first + i, first + k + i) for i in range(k)]
    return Completions(prompt_ids, prompts, texts, sources), pairs


def demonstrations(samples: dict, encoder: dict) -> Demonstrations:
    splits = {}
    for split in ("train", "val", "test"):
        items, pairs = _items(samples, split)
        splits[split] = Split(items, pairs)
    return Demonstrations(splits=splits, encoder=encoder)


def write_features(out: Path, samples: dict, backbone_dir: str, policies: dict | None, cfg: DetoxConfig,
                   stages: Stages) -> None:
    """features.npy for every distinct (prompt, completion) of every split; standardisation from train items."""
    pairs, keys, seen, train_rows = [], [], {}, []
    for split in ("train", "val", "test"):
        items, _ = _items(samples, split)
        for p, y in zip(items.prompts, items.texts):
            key = text_key(p, y)
            if key not in seen:
                seen[key] = len(keys)
                keys.append(key)
                pairs.append((p, y))
            if split == "train":
                train_rows.append(seen[key])
    if policies is not None:
        policy = policies["base" if cfg.feature_backbone == "base" else "expert"]
        model, tok = policy.model, policy.tokenizer
    else:
        tok = AutoTokenizer.from_pretrained(backbone_dir, trust_remote_code=False)
        model = AutoModelForCausalLM.from_pretrained(backbone_dir, dtype=torch.float32,
                                                     trust_remote_code=False).eval()
    advance = stages.stage("features: frozen backbone", len(pairs))
    feats = lm_features(model, tok, [p for p, _ in pairs], [y for _, y in pairs], batch_size=16,
                        max_length=cfg.feature_max_length, progress=advance)
    train = feats[sorted(set(train_rows))]
    mean, std = train.mean(0), train.std(0)
    std = np.where(std > 1e-6, std, 1.0)
    np.save(out / "features.npy", feats)
    atomic_write_json(out / "keys.json", keys, indent=None)
    atomic_write_json(out / "standardise.json", {"mean": mean.tolist(), "std": std.tolist(), "from": "train items"},
                      indent=None)
    atomic_write_json(out / "meta.json", {"dim": int(feats.shape[1]), "rows": len(keys), "backbone": backbone_dir,
                                          "pooling": "mean of the last hidden state over prompt+completion tokens"})


def write_truth(out: Path, samples, demos: Demonstrations, reward_judge, eval_judge, reward_spec, eval_spec,
                stages: Stages) -> None:
    advance = stages.stage("judges: R* and evaluation judge", 3)
    p_star, p_eval = {}, {}
    for split in ("train", "val", "test"):
        texts = demos.splits[split].items.texts
        p_star[split] = np.asarray(reward_judge.p_toxic(texts), dtype=float)
        p_eval[split] = np.asarray(eval_judge.p_toxic(texts), dtype=float)
        advance()
    truth = {s: {"reward": (-p_star[s]).round(7).tolist(), "label": (p_star[s] >= 0.5).astype(int).tolist()}
             for s in ("val", "test")}
    atomic_write_json(out / "truth.json", truth, indent=None)
    atomic_write_json(out / "reward_judge.json", reward_spec)
    atomic_write_json(out / "eval_scores.json", {s: p_eval[s].round(7).tolist() for s in p_eval}, indent=None)
    train = demos.splits["train"].items
    base_train = np.array([p for p, src in zip(p_star["train"], train.sources) if src == "base"])
    # The spread of R*'s reward on π₀'s own samples: what the expert's optimiser saw at its first steps. Re-alignment
    # scales every z-scored r̂ to it (bench/realign.py), so each keeps the expert's reward-to-KL ratio.
    atomic_write_json(out / "reward_spread.json", {"std": float(base_train.std()) or 1.0,
                                                   "source": "std of R* = -P_toxic over π₀'s train completions"})
    summary = {
        "splits": {s: {"prompts": len(set(demos.splits[s].items.prompts)), "items": len(demos.splits[s].items),
                       "pairs": len(demos.splits[s].pairs)} for s in ("train", "val", "test")},
        "split_hashes": split_fingerprints(demos),
        "decoding": samples["decoding"],
        "judges": {"reward": {"spec": reward_spec, "version": reward_judge.version},
                   "eval": {"spec": eval_spec, "version": eval_judge.version},
                   "toxic_threshold": 0.5, "scored_text": "completion only"},
        "judge_agreement_test_spearman": spearman(p_star["test"], p_eval["test"]),
        "expert_train_samples_mean_p_toxic": {
            role: float(np.mean([p for p, s in zip(p_star["train"], train.sources) if s == role]))
            for role in ("base", "expert")},
    }
    atomic_write_json(out / "summary.json", summary)
