"""`bench sweep`: fair, resumable hyperparameter search on Ray Tune, scored on validation pairs only.

Protocol (the tune → confirm split of the imitation library, enforced here):
  * the configurations are sampled up front from the method's declared search space with a fixed seed, so an
    interrupted sweep resumed later tries exactly the same configurations;
  * each configuration is fitted on K *tuning* seeds (1000, 1001, …), disjoint from the confirmation seeds
    (0, 1, …) that `bench run` reports; it is scored by validation pair accuracy — demonstrations only, never the
    ground truth and never the test split;
  * ASHA stops configurations early; its rungs are tuning seeds (a configuration whose mean validation accuracy
    after its first seeds falls in the bottom share stops). With K = 1 there is nothing to stop;
  * every method is tuned within one reward-model class (`head`, linear unless asked; the class is fixed, not
    searched), and with the default `fifo` scheduler every configuration completes, so methods given the same
    --trials get the same number of completed trials — ASHA stops some early, by a different count per method;
  * the best fully evaluated configuration is frozen to `tuned/<task>/<profile>/<method>.json` (`<profile>+<head>`
    for another class) with its budget.

Every (configuration, tuning seed) fit is written atomically like a run trial, so a sweep killed at any point
repeats nothing when resumed: finished fits are reused, finished configurations are skipped.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from ray import tune

from bench import config as configs
from bench import provenance, registry
from bench.data import TaskRef
from bench.errors import BadInput, RuntimeFailure
from bench.execution.executor import TrialDone, check_resources, gpu_share, init_ray
from bench.execution.fit_trial import TrialSpec, run_trial
from bench.execution.run import check_writable
from bench.progress import progress_bar
from bench.storage.artifacts import atomic_write_json, cache_for, content_hash
from bench.storage.frozen import MAIN_HEAD, class_group, write_frozen
from bench.storage.results import read_result

TUNING_SEED_BASE = 1000
METRICS = ("val_pair_accuracy",)  # validation-only objectives; the ground truth is never a tuning signal


@dataclass
class SweepRequest:
    task: str
    methods: str
    profile: str = "default"
    trials: int = 8
    seeds_per_trial: int = 1
    scheduler: str = "fifo"
    head: str = MAIN_HEAD  # the reward-model class every tuned method is fixed to
    metric: str = "val_pair_accuracy"
    runs_dir: Path = Path("runs")
    tuned_dir: Path = Path("tuned")
    address: str | None = None
    gpus_per_trial: float | None = None  # None: bench/execution/plan.py `gpu_share`
    resume: bool = False
    search_seed: int = 0
    fixed: dict = field(default_factory=dict)  # settings held fixed (e.g. {"head": "linear"}); drawn, then overridden


def sample_configs(method: str, n: int, seed: int, fixed: dict | None = None) -> list[dict]:
    """n configurations drawn from the method's declared search space; fields without a domain keep defaults.
    `fixed` settings override the draws (drawn first, so the other values do not depend on what is fixed)."""
    cls = registry.methods()[method].Config
    space = configs.search_space(cls)
    rng = np.random.default_rng(seed)
    defaults = configs.to_dict(cls())
    drawn = []
    for _ in range(n):
        values = {name: _plain(domain.sample(random_state=rng)) for name, domain in sorted(space.items())}
        drawn.append(configs.to_dict(configs.build(cls, {**defaults, **values, **(fixed or {})}, owner=method)))
    return drawn


def _plain(value):
    return value.item() if hasattr(value, "item") else value


def config_id(method: str, cfg: dict, demos_key: str, seeds: list[int]) -> str:
    return content_hash({"method": method, "config": cfg, "demos": demos_key, "seeds": seeds}, length=16)


def _sweep_trainable(config: dict) -> None:
    """One configuration over its tuning seeds; reports the running mean after each seed (ASHA's rungs)."""
    torch.set_num_threads(1)
    item = config["item"]
    accuracies = []
    for seed in item["seeds"]:
        spec = TrialSpec(item["method"], item["config"], seed, TaskRef.from_json(item["task"]))
        path = Path(item["fits_dir"]) / f"{spec.fit_id}.json"
        result = read_result(path)
        if result is None or result["status"] != "ok":
            result = run_trial(spec, path, splits=("val",))
        if result["status"] != "ok":
            tune.report({"val_pair_accuracy": float("nan"), "seeds_done": len(accuracies), "failed": True})
            return
        accuracies.append(result["val_pair_accuracy"])
        tune.report({"val_pair_accuracy": float(np.mean(accuracies)), "seeds_done": len(accuracies), "failed": False})


class _RecordConfigs(tune.Callback):
    """Writes a configuration's record when Tune finishes it (completed or stopped early by ASHA)."""

    def on_trial_complete(self, iteration, trials, trial, **info):
        item = trial.config["item"]
        last = trial.last_result or {}
        atomic_write_json(Path(item["record_path"]), {
            "config_id": item["config_id"], "config": item["config"], "seeds": item["seeds"],
            "seeds_done": int(last.get("seeds_done", 0)),
            "val_pair_accuracy": last.get("val_pair_accuracy"),
            "status": "failed" if last.get("failed") else (
                "completed" if last.get("seeds_done") == len(item["seeds"]) else "stopped"),
        })

    on_trial_error = on_trial_complete


def fixed_settings(method: str, req: SweepRequest) -> dict:
    """What the sweep holds fixed for `method`: the requested settings, and its reward-model class if it has one."""
    has_head = "head" in {f.name for f in configs.fields(registry.methods()[method].Config)}
    return {**req.fixed, **({"head": req.head} if has_head else {})}


def validate(req: SweepRequest) -> tuple[object, list[str]]:
    task = registry.get_task(req.task)
    methods = registry.resolve_methods(req.methods)
    trainable = [m for m in methods if configs.search_space(registry.methods()[m].Config)]
    if req.methods.strip() == "all":
        methods = trainable  # baselines have nothing to tune
    elif len(trainable) < len(methods):
        fixed = sorted(set(methods) - set(trainable))
        raise BadInput(f"{', '.join(fixed)} has no settings to tune; sweep a method with a search space instead.")
    if req.trials < 1 or req.seeds_per_trial < 1:
        raise BadInput("--trials and --seeds-per-trial must be at least 1.")
    if req.scheduler not in ("asha", "fifo"):
        raise BadInput(f"--scheduler {req.scheduler} is unknown; use asha or fifo.")
    if req.metric not in METRICS:
        raise BadInput(f"--metric {req.metric} is not a validation-only objective; use one of: {', '.join(METRICS)}.")
    task.config(req.profile)  # unknown profile -> BadInput
    check_resources(req.address, req.gpus_per_trial)
    return task, methods


def sweep(req: SweepRequest, console) -> dict[str, dict]:
    """Run (or resume) the sweep of every requested method; returns {method: frozen record}."""
    task, methods = validate(req)
    check_writable(req.runs_dir, "--runs-dir")
    check_writable(req.tuned_dir, "--tuned-dir")
    with console.status(f"building the {task.name} task data (profile {req.profile})"):
        data = task.build(req.profile, task.config(req.profile), cache_for(req.runs_dir))
    seeds = [TUNING_SEED_BASE + k for k in range(req.seeds_per_trial)]
    frozen = {}
    for method in methods:
        sweep_dir = (req.runs_dir / task.name / class_group(req.profile, req.head) / "sweeps" / method).resolve()
        fits_dir, records_dir = sweep_dir / "fits", sweep_dir / "configs"
        existing = list(records_dir.glob("*.json")) if records_dir.exists() else []
        if existing and not req.resume:
            raise BadInput(
                f"a sweep of {method} already has {len(existing)} finished configurations in {sweep_dir}; "
                f"pass --resume to continue it, or another --runs-dir to start anew."
            )
        fits_dir.mkdir(parents=True, exist_ok=True)
        records_dir.mkdir(parents=True, exist_ok=True)
        items = []
        for cfg in sample_configs(method, req.trials, req.search_seed, fixed_settings(method, req)):
            cid = config_id(method, cfg, data.demos_key, seeds)
            items.append({"method": method, "config": cfg, "config_id": cid, "seeds": seeds,
                          "task": data.ref.to_json(), "fits_dir": str(fits_dir),
                          "record_path": str(records_dir / f"{cid}.json")})
        pending = [it for it in items if not Path(it["record_path"]).exists()]
        console.print(f"{method}: {len(items)} configurations × {len(seeds)} tuning seeds; "
                      f"{len(items) - len(pending)} done, {len(pending)} to run")
        started = time.time()
        if pending:
            name = f"sweep-{content_hash([i['config_id'] for i in items], 10)}"
            _run_tune(pending, sweep_dir, req, console, name=name)
            unfinished = [it for it in pending if not Path(it["record_path"]).exists()]
            if unfinished:  # Tune stops gracefully on Ctrl-C; never freeze the best of a partial sweep
                raise RuntimeFailure(
                    f"the sweep of {method} stopped before {len(unfinished)} configurations finished (interrupted?); "
                    f"finished fits are kept: rerun with --resume to complete it."
                )
        frozen[method] = freeze(method, task.name, req, data, items, fits_dir, time.time() - started)
    return frozen


def _run_tune(items, sweep_dir: Path, req: SweepRequest, console, name: str) -> None:
    gpus = gpu_share(req.gpus_per_trial, req.address)
    init_ray(req.address, gpus)
    scheduler = None
    if req.scheduler == "asha" and req.seeds_per_trial > 1:
        scheduler = tune.schedulers.ASHAScheduler(
            time_attr="seeds_done", max_t=req.seeds_per_trial, grace_period=1, reduction_factor=2
        )
    with progress_bar("configurations", len(items), console) as advance:
        tuner = tune.Tuner(
            tune.with_resources(_sweep_trainable, {"cpu": 1, "gpu": gpus}),
            param_space={"item": tune.grid_search(items)},
            tune_config=tune.TuneConfig(metric=req.metric, mode="max", scheduler=scheduler, reuse_actors=True),
            run_config=tune.RunConfig(name=name, storage_path=str(sweep_dir / "ray"), verbose=0,
                                      callbacks=[TrialDone(lambda config: advance()), _RecordConfigs()]),
        )
        tuner.fit()


def freeze(method, task_name, req: SweepRequest, data, items, fits_dir: Path, wall_seconds: float) -> dict:
    """Pick the best fully evaluated configuration and write `tuned/<task>/<profile>/<method>.json`."""
    records = [json.loads(Path(it["record_path"]).read_text()) for it in items if Path(it["record_path"]).exists()]
    complete = [r for r in records if r["status"] == "completed" and r["val_pair_accuracy"] is not None]
    if not complete:
        raise BadInput(f"no configuration of {method} finished all its tuning seeds; rerun with --resume.")
    best = max(complete, key=lambda r: r["val_pair_accuracy"])  # first of equals, in sampling order
    swept = [it["config"] for it in items]
    fits = [f for f in (read_result(p) for p in sorted(fits_dir.glob("*.json"))) if f and f["config"] in swept]
    cpu_seconds = sum(f["seconds"] for f in fits)
    frozen = {
        "version": 1,
        "task": task_name,
        "profile": req.profile,
        "head": req.head,
        "method": method,
        "config": best["config"],
        "objective": {"metric": req.metric, "split": "val", "value": best["val_pair_accuracy"]},
        "tuning_seeds": best["seeds"],
        "search": {"space_seed": req.search_seed, "scheduler": req.scheduler,
                   "space": sorted(configs.search_space(registry.methods()[method].Config))}
        | ({"fixed": fixed_settings(method, req)} if fixed_settings(method, req) else {}),
        "budget": {
            "configurations": len(items),
            "completed": len(complete),
            "stopped_early": sum(r["status"] == "stopped" for r in records),
            "failed": sum(r["status"] == "failed" for r in records),
            "fits": len(fits),
            "cpu_hours": round(cpu_seconds / 3600, 5),
            "gpu_hours": round(cpu_seconds * gpu_share(req.gpus_per_trial, req.address) / 3600, 5),
        },
        "demos_key": data.demos_key,
        "git_commit": provenance.git_commit(),
    }
    path = write_frozen(req.tuned_dir, frozen)
    return frozen | {"path": str(path), "wall_seconds": round(wall_seconds, 1)}
