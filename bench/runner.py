"""Trials: one (method, config, seed) fit on a task's demonstrations, executed as Ray Tune trials.

The runs directory is the source of truth; Ray is only the executor. A trial's id is a hash of everything that
determines its result (task data, method, config, seed, code version), its result is written atomically to
`<group>/trials/<id>.json` with a checksum, and a rerun skips every trial whose result is present and intact.
A trial that raises or returns non-finite rewards is recorded as failed, with its error; the others go on.
"""

from __future__ import annotations

import logging
import os
import random
import socket
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from ray import tune

from bench import CODE_VERSION
from bench.artifacts import ArtifactCache, atomic_write_json, content_hash
from bench.errors import BadInput
from bench.metrics import pair_accuracy

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrialSpec:
    method: str
    config: dict
    seed: int
    task_data: dict  # TaskData.to_json()

    @property
    def trial_id(self) -> str:
        return content_hash(
            {
                "demos": self.task_data["demos_key"],
                "method": self.method,
                "config": self.config,
                "seed": self.seed,
                "code_version": CODE_VERSION,
            },
            length=16,
        )

    def to_json(self) -> dict:
        return {"method": self.method, "config": self.config, "seed": self.seed, "task_data": self.task_data}


# ---------------------------------------------------------------- trial results: atomic, checksummed files


def write_result(path: Path, payload: dict) -> None:
    atomic_write_json(path, {"payload": payload, "sha256": content_hash(payload, length=64)}, indent=None)


def read_result(path: Path) -> dict | None:
    """The stored payload, or None (with a warning naming the file) if it is missing, truncated or altered."""
    import json

    if not path.exists():
        return None
    try:
        stored = json.loads(path.read_text())
        payload = stored["payload"]
        if content_hash(payload, length=64) != stored["sha256"]:
            raise ValueError("checksum mismatch")
    except (ValueError, KeyError, TypeError) as exc:
        log.warning("trial result %s is corrupted (%s); the trial will run again", path, exc)
        return None
    return payload


# ---------------------------------------------------------------- one trial


def seed_everything(seed: int) -> None:
    """Seed every generator before any model is built."""
    import torch

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def fit_reward(spec: TrialSpec, record=None):
    """Seed everything, then fit the trial's method on the training pairs: (recovered reward, task data, demos).
    A fit is deterministic given its spec, so re-alignment refits a trial's reward instead of storing models."""
    import torch

    from bench import registry
    from bench.data import TaskData
    from bench.reward_models import RewardModel, make_encoder, make_head
    from bench.training import FitContext

    seed_everything(spec.seed)
    method = registry.get_method(spec.method)
    cfg = method.Config(**spec.config)
    data = TaskData.from_json(spec.task_data)
    demos = data.demos()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    cache = ArtifactCache(data.cache_root)
    encoder = make_encoder({k: cache.locate(v) if k in ("model", "features_dir") else v
                            for k, v in demos.encoder.items()})
    model = RewardModel(encoder, make_head("linear", encoder.dim)).to(device)
    ctx = FitContext(seed=spec.seed, device=device, val=demos.splits["val"].preference_pairs,
                     report=record or (lambda **metrics: None))
    if method.needs_ground_truth:
        ctx.ground_truth = registry.get_task(data.task).ground_truth(data)
    if method.needs_policies:
        ctx.policies = registry.get_task(data.task).policies(data)
    return method.fit(demos.splits["train"].preference_pairs, model, cfg, ctx), data, demos


def run_trial(spec: TrialSpec, result_path: Path, report=None, splits=("val", "test")) -> dict:
    """Fit one method, score its recovered reward on the items of `splits`, write the result file.
    Sweeps pass splits=("val",): tuning never computes a test score."""
    import torch

    started = time.time()
    curve: list[dict] = []
    payload = {
        "trial_id": spec.trial_id, "method": spec.method, "config": spec.config, "seed": spec.seed,
        "task": spec.task_data["task"], "profile": spec.task_data["profile"], "demos_key": spec.task_data["demos_key"],
    }
    try:
        def record(**metrics):
            curve.append(metrics)
            if report is not None:
                report(metrics)

        reward, _, demos = fit_reward(spec, record)
        rewards = {}
        for split in splits:
            items = demos.splits[split].items
            scores = np.asarray(reward.score(items.prompts, items.texts), dtype=float)
            if scores.shape != (len(items),) or not np.all(np.isfinite(scores)):
                raise FloatingPointError(f"{spec.method} produced non-finite or misshaped rewards on {split} items")
            rewards[split] = [round(float(x), 7) for x in scores]
        val_pairs = np.array(demos.splits["val"].pairs)
        payload.update(
            status="ok",
            rewards=rewards,
            val_pair_accuracy=pair_accuracy(np.array(rewards["val"]), val_pairs),
            device="cuda" if torch.cuda.is_available() else "cpu",
        )
    except Exception as exc:  # a failing method must not take the other trials down
        payload.update(status="failed", error=f"{type(exc).__name__}: {exc}", traceback=traceback.format_exc())
    payload.update(seconds=round(time.time() - started, 3), curve=curve[-200:])
    write_result(result_path, payload)
    return payload


def _tune_trainable(config: dict) -> None:
    """Entry point of a Ray Tune trial (runs in a Ray worker)."""
    import torch

    trial = config["trial"]  # one entry of the grid
    torch.set_num_threads(max(1, int(trial["threads"])))
    if trial.get("kind") == "realign":
        from bench.rerlhf import RealignSpec, run_realign_trial

        result = run_realign_trial(RealignSpec.from_json(trial["spec"]), Path(trial["result_path"]))
    else:
        result = run_trial(TrialSpec(**trial["spec"]), Path(trial["result_path"]))
    tune.report({"ok": result["status"] == "ok", "val_pair_accuracy": result.get("val_pair_accuracy", float("nan"))})


# ---------------------------------------------------------------- executing many trials


def check_resources(address: str | None, gpus_per_trial: float) -> None:
    """Refuse, before anything is written, a cluster that cannot be reached or GPUs this machine does not have."""
    import torch

    if address and address != "auto" and not address.startswith("ray://"):
        host, _, port = address.rpartition(":")
        try:
            socket.create_connection((host or "127.0.0.1", int(port)), timeout=5).close()
        except (OSError, ValueError):
            raise BadInput(
                f"cannot reach a Ray cluster at {address!r}; start one there with `ray start --head`, "
                f"or drop --address to run locally."
            ) from None
    if not address and gpus_per_trial > torch.cuda.device_count():
        raise BadInput(
            f"--gpus-per-trial {gpus_per_trial:g} asks for GPUs but this machine has "
            f"{torch.cuda.device_count()}; use --gpus-per-trial 0 here."
        )


def init_ray(address: str | None, gpus_per_trial: float) -> None:
    """Start local Ray (all cores, GPUs only if present) or join a cluster; check GPU requests can be met, so that
    no trial waits forever for a GPU that does not exist."""
    import ray

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    if ray.is_initialized():
        return
    kwargs = dict(include_dashboard=False, log_to_driver=False, logging_level=logging.ERROR)
    if address:
        try:
            ray.init(address=address, **kwargs)
        except Exception as exc:
            raise BadInput(
                f"cannot reach a Ray cluster at {address!r} ({type(exc).__name__}); start one with "
                f"`ray start --head`, or drop --address to run locally."
            ) from None
    else:
        import torch

        cpus = int(os.environ.get("IRL_BENCH_CPUS") or os.cpu_count())  # leave cores to other work when set
        ray.init(num_cpus=cpus, num_gpus=torch.cuda.device_count(), **kwargs)
    available = ray.cluster_resources().get("GPU", 0)
    if gpus_per_trial > available:
        ray.shutdown()
        raise BadInput(
            f"--gpus-per-trial {gpus_per_trial:g} asks for GPUs but this Ray cluster has {available:g}; "
            f"use --gpus-per-trial 0 or a cluster with GPUs."
        )


_on_trial_done = None  # set by execute(); kept outside the callback, which Tune pickles


class _ProgressCallback(tune.Callback):
    """Advances the driver's progress bar; a module-level class so Tune pickles it by reference."""

    def on_trial_complete(self, iteration, trials, trial, **info):
        if _on_trial_done is not None:
            _on_trial_done()

    on_trial_error = on_trial_complete


def execute(
    specs: list, trials_dir: Path, *, address=None, gpus_per_trial=0.0, cpus_per_trial=1, progress=None,
    kind: str = "fit",
) -> None:
    """Run the given trials as Ray Tune trials; each writes its own result file. `kind` "fit" runs TrialSpecs,
    "realign" bench.rerlhf's RealignSpecs."""

    if not specs:
        return
    init_ray(address, gpus_per_trial)
    cpus = cpus_per_trial
    trials_dir = trials_dir.resolve()  # Tune runs each trial in its own working directory
    space = [
        {"spec": s.to_json(), "result_path": str(trials_dir / f"{s.trial_id}.json"), "threads": cpus, "kind": kind}
        for s in specs
    ]

    global _on_trial_done
    _on_trial_done = progress
    tuner = tune.Tuner(
        tune.with_resources(_tune_trainable, {"cpu": cpus, "gpu": gpus_per_trial}),
        param_space={"trial": tune.grid_search(space)},
        tune_config=tune.TuneConfig(reuse_actors=True),
        run_config=tune.RunConfig(
            name=f"run-{content_hash([s.trial_id for s in specs], 12)}",
            storage_path=str((trials_dir.parent / "ray").resolve()),
            verbose=0,
            callbacks=[_ProgressCallback()],
        ),
    )
    tuner.fit()
