"""A fit trial: one (method, config, seed) fitted on a task's training pairs and scored on held-out items.

A trial's id is a hash of everything that determines its result (task data, method, config, seed, code version,
and the bootstrap resample of the training demonstrations when there is one: `bench ambiguity`);
its result is a checksummed file `<group>/trials/<id>.json` (bench/storage/results.py). A trial that raises or
returns non-finite rewards is recorded as failed, with its error; the others go on.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from bench import CODE_VERSION, registry
from bench.data import Completions, PreferencePairs, TaskRef
from bench.kit.interface import FitContext
from bench.kit.reward_models import RewardModel, make_encoder, make_head
from bench.scoring.metrics import pair_accuracy
from bench.storage.artifacts import content_hash
from bench.storage.results import failures_recorded, write_result

# An item set of held-out completions that the runner (never a method) scores by default when the task has one
# (`extra_items`; the detox task's judged evaluation samples, tasks/detox/pool.py).
POOL = "pool"


@dataclass(frozen=True)
class TrialSpec:
    method: str
    config: dict
    seed: int
    task: TaskRef
    resample: int = 0  # 0: the training demonstrations as given; r > 0: bootstrap resample r of their prompts

    @property
    def fit_id(self) -> str:
        """What the fitted reward depends on (demonstrations, method, config, seed, code): re-alignment and sweeps
        key on it."""
        inputs = {"demos": self.task.demos_key, "method": self.method, "config": self.config, "seed": self.seed,
                  "code_version": CODE_VERSION}
        if self.resample:  # only when set, so that every fit on the demonstrations as given keeps its id
            inputs["resample"] = self.resample
        return content_hash(inputs, length=16)

    @property
    def trial_id(self) -> str:
        """What the result file holds: the fit's scores on val/test items, and on the held-out pool when the task
        has one (a result scored on a pool must not be mistaken for one without it)."""
        pool = self.task.artifacts.get(POOL)
        return self.fit_id if pool is None else content_hash({"fit": self.fit_id, "pool": pool}, length=16)

    def to_json(self) -> dict:
        resample = {"resample": self.resample} if self.resample else {}
        return {"method": self.method, "config": self.config, "seed": self.seed, "task": self.task.to_json()} | resample

    @classmethod
    def from_json(cls, obj: dict) -> "TrialSpec":
        return cls(obj["method"], obj["config"], obj["seed"], TaskRef.from_json(obj["task"]), obj.get("resample", 0))


def bootstrap_prompts(pairs: PreferencePairs, resample: int) -> PreferencePairs:
    """Bootstrap resample `resample` of the training demonstrations: their prompts drawn with replacement, each
    carrying all its pairs (pairs of one prompt are not independent; the scorer resamples prompts too). The draw
    depends on `resample` alone, so every seed and configuration of one resample fits the same data."""
    prompts = list(dict.fromkeys(pairs.prompts))
    by_prompt = {p: [] for p in prompts}
    for i, p in enumerate(pairs.prompts):
        by_prompt[p].append(i)
    drawn = np.random.default_rng([resample, 0x5EED]).integers(0, len(prompts), len(prompts))
    rows = [i for d in drawn for i in by_prompt[prompts[d]]]
    return PreferencePairs([pairs.prompts[i] for i in rows], [pairs.chosen[i] for i in rows],
                           [pairs.rejected[i] for i in rows])


def seed_everything(seed: int) -> None:
    """Seed every generator before any model is built."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def fit_reward(spec: TrialSpec, record=None):
    """Seed everything, then fit the trial's method on the training pairs: (recovered reward, demonstrations).
    A fit is deterministic given its spec, so re-alignment refits a trial's reward instead of storing models."""
    seed_everything(spec.seed)
    method = registry.get_method(spec.method)
    cfg = method.Config(**spec.config)
    demos = spec.task.demos()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    cache = spec.task.cache()
    encoder_spec = {k: cache.locate(v) if k in ("model", "features_dir") else v for k, v in demos.encoder.items()}
    if "pool_features" in spec.task.artifacts:  # the pool's texts are looked up, not re-encoded, when scored
        pool_features = cache.load("pool_features", spec.task.artifacts["pool_features"])
        encoder_spec["extra_features_dirs"] = [str(pool_features.path)]
    encoder = make_encoder(encoder_spec)
    model = RewardModel(encoder, make_head("linear", encoder.dim)).to(device)
    ctx = FitContext(seed=spec.seed, device=device, val=demos.splits["val"].preference_pairs,
                     report=record or (lambda **metrics: None))
    if method.needs_ground_truth:
        ctx.ground_truth = registry.get_task(spec.task.task).ground_truth(spec.task)
    if method.needs_policies:
        ctx.policies = registry.get_task(spec.task.task).policies(spec.task)
    train = demos.splits["train"].preference_pairs
    if spec.resample:
        train = bootstrap_prompts(train, spec.resample)
    return method.fit(train, model, cfg, ctx), demos


def run_trial(spec: TrialSpec, result_path: Path, report=None, splits=None) -> dict:
    """Fit one method, score its recovered reward on the items of `splits` (default: val, test and the held-out
    pool when the task has one), write the result file. Sweeps pass splits=("val",): tuning never computes a test
    score."""
    splits = splits or ("val", "test") + ((POOL,) if POOL in spec.task.artifacts else ())
    started = time.time()
    curve: list[dict] = []
    payload = {"trial_id": spec.trial_id if POOL in splits else spec.fit_id, "method": spec.method,
               "config": spec.config, "seed": spec.seed, "task": spec.task.task, "profile": spec.task.profile,
               "demos_key": spec.task.demos_key} | ({"resample": spec.resample} if spec.resample else {})

    def record(**metrics):
        curve.append(metrics)
        if report is not None:
            report(metrics)

    with failures_recorded(payload):
        reward, demos = fit_reward(spec, record)
        rewards = {}
        for split in splits:
            items = demos.splits[split].items if split in demos.splits else extra_items(spec.task, split)
            scores = np.asarray(reward.score(items.prompts, items.texts), dtype=float)
            if scores.shape != (len(items),) or not np.all(np.isfinite(scores)):
                raise FloatingPointError(f"{spec.method} produced non-finite or misshaped rewards on {split} items")
            rewards[split] = [round(float(x), 7) for x in scores]
        payload.update(
            status="ok",
            rewards=rewards,
            val_pair_accuracy=pair_accuracy(np.array(rewards["val"]), np.array(demos.splits["val"].pairs)),
            device="cuda" if torch.cuda.is_available() else "cpu",
        )
    # A method's diagnostics (reports with a "diagnostic" label, e.g. failure_aware's per-stage failures) are kept
    # whole; the epoch-by-epoch curve only in its last 200 entries.
    payload.update(seconds=round(time.time() - started, 3), curve=curve[-200:])
    if any("diagnostic" in m for m in curve):
        payload["diagnostics"] = [m for m in curve if "diagnostic" in m]
    write_result(result_path, payload)
    return payload


def extra_items(task: TaskRef, name: str) -> Completions:
    """An item set beyond the demonstrations' splits that the task publishes as an artifact `name` with
    `<name>.json` ({"prompt_ids", "prompts", "texts", "sources"}), e.g. the synthetic worlds' broad pool."""
    if name not in task.artifacts:
        raise KeyError(f"task data of {task.task}/{task.profile} has no item set {name!r}")
    return Completions(**task.cache().load(name, task.artifacts[name]).read_json(f"{name}.json"))


def run_fit_trial(spec: dict, result_path: Path) -> dict:
    """The executor's entry point for fit trials (bench/execution/executor.py)."""
    return run_trial(TrialSpec.from_json(spec), result_path)
