"""What a `bench run` will do, before it does it: the task data (cached, or which stages to build and their recorded
cost), the trials and re-alignments to run or reuse, an estimate of the time, and a cheaper alternative when that
estimate is long. `bench run --dry-run` prints only this. Nothing here builds, writes or starts Ray: it reads the
run group's last selection (`selection.json`), artifact manifests (their recorded build "seconds") and trial
result files."""

from __future__ import annotations

import importlib.util
import json
import os
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

from bench import CODE_VERSION
from bench import config as configs
from bench.data import TaskData
from bench.errors import BadInput
from bench.execution.fit_trial import TrialSpec
from bench.storage.artifacts import MANIFEST, ArtifactCache, cache_for
from bench.storage.results import read_result, unfinished
from bench.storage.selection import FILE as SELECTION
from bench.storage.selection import Selection

LONG_S = 30 * 60  # a plan estimated longer than this suggests a cheaper run
RECENT = 200  # trial results read per run group to estimate a trial's cost


@dataclass
class Stage:
    kind: str  # the artifact kind a stage of the task build writes
    cached: bool | None  # None: unknown until the build computes its key
    seconds: float | None  # recorded build time of an artifact of this kind (None: never recorded)


@dataclass
class Trials:
    what: str
    total: int
    reused: int | None  # None: unknown until the task data is built (trial ids hash its artifact keys)
    seconds_each: float | None  # mean recorded time of finished trials like these

    @property
    def to_run(self) -> int | None:
        return None if self.reused is None else self.total - self.reused


@dataclass
class Preview:
    task: str
    profile: str
    data_cached: bool
    source: str  # where the stage list and its costs came from
    stages: list[Stage] = field(default_factory=list)
    trials: list[Trials] = field(default_factory=list)
    cpus: int | None = None  # trials at once on a local run (CPUs, or fewer when the GPUs bound it); None on a cluster
    hints: list[str] = field(default_factory=list)

    @property
    def seconds(self) -> float | None:
        """Estimated wall time: stages to build, then trials spread over the CPUs; None if any part is unknown."""
        build = [s.seconds for s in self.stages if s.cached is not True]
        work = [(t.to_run if t.to_run is not None else t.total, t.seconds_each) for t in self.trials]
        if any(s is None for s in build) or any(n and each is None for n, each in work):
            return None
        trials = sum(n * each for n, each in work if n)
        return sum(build) + trials / (self.cpus or 1)


@dataclass(frozen=True)
class TrialBatch:
    """Trials of one kind (`what`: fits, or a task's re-alignments): specs (each with `trial_id` and `to_json`) run
    through one trial function, each writing `<results_dir>/<trial_id>.json`; `progress` is called as each ends."""

    what: str
    specs: list
    trial_fn: Callable[[dict, Path], dict]
    results_dir: Path
    progress: Callable[[], None] | None = None


def gpu_share(requested: float | None, address: str | None) -> float:
    """GPUs per trial: as asked, or, when not asked, this machine's GPUs shared by as many trials as it runs at once
    (Ray hides the GPUs from a trial that asks for none, so a default of 0 would leave a GPU machine's GPUs idle);
    0 on a machine without one and on a cluster (`--address`), whose GPUs only the user knows."""
    if requested is not None:
        return requested
    gpus = 0 if address else torch.cuda.device_count()
    return min(1.0, gpus / local_cpus()) if gpus else 0.0


def local_cpus() -> int:
    """The CPUs a local run uses: IRL_BENCH_CPUS when set (to leave cores to other work), else all of them."""
    return int(os.environ.get("IRL_BENCH_CPUS") or os.cpu_count() or 1)


def trial_slots(req) -> int | None:
    """How many trials a local run runs at once: one per CPU, and no more than the GPUs hold when trials take a GPU
    share (on one H200 at 0.25 per trial, 4 of 16 CPUs' worth); None on a cluster."""
    if req.address:
        return None
    slots = local_cpus()
    share = gpu_share(req.gpus_per_trial, req.address)
    # (+1e-9: a share of 1/93 GPU must give 93 slots, not int(92.999...))
    return max(1, min(slots, int(torch.cuda.device_count() / share + 1e-9))) if share > 0 else slots


def check_resources(address: str | None, gpus_per_trial: float | None) -> None:
    """Refuse, before anything is written, a cluster that cannot be reached or GPUs this machine does not have."""
    if gpus_per_trial is not None and gpus_per_trial < 0:
        raise BadInput(f"--gpus-per-trial {gpus_per_trial:g} is negative; use 0 (CPU) or a positive share.")
    gpus_per_trial = gpu_share(gpus_per_trial, address)
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


TRACKERS = {"tensorboard": "tensorboardX", "mlflow": "mlflow", "wandb": "wandb"}  # --tracker: the package it needs


def check_tracker(tracker: str | None) -> None:
    if tracker is None:
        return
    if tracker not in TRACKERS:
        raise BadInput(f"--tracker {tracker!r} is not a tracker; choose one of {', '.join(TRACKERS)}.")
    if importlib.util.find_spec(TRACKERS[tracker]) is None:
        raise BadInput(f"--tracker {tracker} needs the {TRACKERS[tracker]} package, which is not installed; "
                       f"install it (pip install -e '.[tracking]' brings all three) or drop --tracker.")


def tracker_location(tracker: str | None, group_dir: Path) -> str | None:
    """Where `--tracker` wrote (bench/execution/executor.py tracker_callbacks), for the closing line of a run."""
    return {"tensorboard": f"tensorboard --logdir {group_dir / 'ray'}",
            "mlflow": f"mlflow ui --backend-store-uri {os.environ.get('MLFLOW_TRACKING_URI') or group_dir / 'mlruns'}",
            "wandb": f"wandb sync {group_dir / 'wandb'} (offline runs)"}.get(tracker)


def fit_specs(p, task_ref) -> dict[str, list[TrialSpec]]:
    """Every fit trial of the run plan `p` (bench/execution/run.py RunPlan), by method."""
    return {m: [TrialSpec(m, configs.to_dict(cfg), seed, task_ref) for seed in p.seeds]
            for m, cfg in p.method_configs.items()}


def realign_specs(p, specs: dict[str, list[TrialSpec]]) -> dict[str, list]:
    """The re-alignment trials of `p`: the first --rerlhf-seeds fits of each re-aligned method."""
    if p.rerlhf == "off":
        return {}
    hook, req = p.task.realignment, p.request
    return {m: [hook.spec(s, p.rerlhf, req.rerlhf_normalisation) for s in group[: req.rerlhf_seeds]]
            for m, group in specs.items() if m in p.rerlhf_methods}


def preview(p) -> Preview:
    req = p.request
    cache = cache_for(req.runs_dir)
    task_dir = req.runs_dir / p.task.name
    index = _artifact_index(cache)
    current = _selection(task_dir / p.group)
    reusable = current is not None and current.task_config == configs.to_dict(p.task_config) and _present(
        current.task_data, index)
    reference = current if reusable else _reference(task_dir, p.profile, index)
    stages = [Stage(kind, True if reusable else None, seconds)
              for kind, seconds in _costs(reference.task_data, index).items()] if reference else []
    source = ("the last run of this group" if reusable else
              f"costs recorded by the {reference.task_data.profile!r} build in the cache" if reference else
              f"no earlier run of {p.task.name} in {req.runs_dir}: stages and costs unknown")
    n_fits, n_realign = len(p.method_configs) * len(p.seeds), len(p.rerlhf_methods) * req.rerlhf_seeds
    trials = [Trials("trials", n_fits, None, _mean_seconds(task_dir, "trials", p.profile))]
    if p.rerlhf != "off":
        trials.append(Trials(p.task.realignment.describe(p.rerlhf), n_realign, None,
                             _mean_seconds(task_dir, "rerlhf", p.profile, mode=p.rerlhf)))
    if reusable:
        data = TaskData.from_json({**current.task_data.to_json(), "cache_root": str(cache.root)})
        specs = fit_specs(p, data.ref)
        fits = [s for group in specs.values() for s in group]
        trials[0].reused = n_fits - len(unfinished(fits, task_dir / p.group / "trials"))
        if p.rerlhf != "off":
            again = [s for group in realign_specs(p, specs).values() for s in group]
            trials[1].reused = n_realign - len(unfinished(again, task_dir / p.group / "rerlhf"))
    plan = Preview(p.task.name, p.profile, reusable, source, stages, trials, trial_slots(req))
    plan.hints = _hints(p, plan)
    return plan


def _hints(p, plan: Preview) -> list[str]:
    seconds, hints = plan.seconds, []
    long = seconds is not None and seconds > LONG_S
    rl_pending = p.rerlhf in ("rloo", "grpo") and plan.trials[-1].to_run != 0
    if long and rl_pending:
        hints.append("--rerlhf bon scores best-of-n with each reward and skips the RL re-alignments")
    smaller = [name for name in ("smoke", "tiny") if name in p.task.profiles and name != p.profile]
    if smaller and (long or (not plan.data_cached and not plan.stages)):
        hints.append(f"--profile {smaller[0]} is a quick first run of this task")
    return hints


def render(plan: Preview, console) -> None:
    """The plan, in lines that fit 80 columns."""
    console.print(f"[bold]plan[/bold]: {plan.task} ({plan.profile})", highlight=False)
    if plan.data_cached:
        console.print(f"  task data: cached ({len(plan.stages)} kinds of artifact, from the last run of this "
                      f"group)", highlight=False)
    else:
        console.print(f"  task data: to build, reusing what the cache holds ({plan.source})", highlight=False)
        for s in plan.stages:  # each stage reuses what the cache already holds for its inputs
            console.print(f"    {s.kind:<24} build or reuse, up to {_duration(s.seconds)}", highlight=False)
    for t in plan.trials:
        counts = (f"{t.reused} reused, {t.to_run} to run" if t.reused is not None
                  else "to run or reuse once the task data is built")
        each = f"; about {_duration(t.seconds_each)} each" if t.seconds_each is not None and t.to_run != 0 else ""
        console.print(f"  {t.total} {t.what}: {counts}{each}", highlight=False)
    seconds = plan.seconds
    where = f", {plan.cpus} trial(s) at a time" if plan.cpus else " (one trial at a time)"
    bound = "" if plan.data_cached else "up to "
    console.print(f"  estimated time: {bound + _duration(seconds) + where if seconds is not None else 'unknown'}",
                  highlight=False)
    for hint in plan.hints:
        console.print(f"  [yellow]hint[/yellow]: {hint}", highlight=False)


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "unknown"
    if seconds < 90:
        return f"{seconds:.0f} s"
    return f"{seconds / 60:.0f} min" if seconds < 5400 else f"{seconds / 3600:.1f} h"


def _selection(group_dir: Path) -> Selection | None:
    try:
        return Selection.read(group_dir)
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _artifact_index(cache: ArtifactCache) -> dict[str, Path]:
    """Artifact key -> its directory, for every artifact in the cache (keys are content hashes, unique)."""
    return {m.parent.name: m.parent for m in cache.root.glob(f"*/*/{MANIFEST}")} if cache.root.is_dir() else {}


def _manifest(path: Path) -> dict:
    try:
        return json.loads((path / MANIFEST).read_text())
    except (OSError, ValueError):
        return {}


def _keys(data: TaskData) -> list[str]:
    return [data.demos_key, data.truth_key, *data.artifacts.values()]


def _present(data: TaskData, index: dict[str, Path]) -> bool:
    return all(k in index and _manifest(index[k]).get("code_version") == CODE_VERSION for k in _keys(data))


def _costs(data: TaskData, index: dict[str, Path]) -> dict[str, float | None]:
    """Recorded build seconds per artifact kind, over the task data's artifacts and every artifact they refer to
    by key in their inputs (a stage's manifest names the artifacts it was built from)."""
    seen, todo, costs = set(), list(_keys(data)), {}
    while todo:
        key = todo.pop()
        if key in seen or key not in index:
            continue
        seen.add(key)
        manifest = _manifest(index[key])
        kind, seconds = index[key].parent.name, manifest.get("seconds")
        costs[kind] = costs.get(kind) if seconds is None else (costs.get(kind) or 0.0) + seconds
        todo += [k for k in _strings(manifest.get("inputs")) if k in index]
    return dict(sorted(costs.items()))


def _strings(obj):
    if isinstance(obj, str):
        yield obj
    elif isinstance(obj, dict):
        for v in obj.values():
            yield from _strings(v)
    elif isinstance(obj, (list, tuple)):
        for v in obj:
            yield from _strings(v)


def _reference(task_dir: Path, profile: str, index: dict[str, Path]) -> Selection | None:
    """The newest stored selection of this task whose artifacts are all still cached, one of `profile` first."""
    found = []
    for path in task_dir.glob(f"*/{SELECTION}"):
        s = _selection(path.parent)
        if s is not None and _present(s.task_data, index):
            found.append((s.task_data.profile == profile, path.stat().st_mtime, s))
    return max(found, key=lambda f: f[:2])[2] if found else None


def _mean_seconds(task_dir: Path, sub: str, profile: str, **match) -> float | None:
    """Mean recorded seconds of the newest finished results in `<task>/<group>/<sub>/` of groups of `profile`."""
    seconds = []
    for group in [d for d in task_dir.glob("*") if d.name == profile or d.name.startswith(f"{profile}-")]:
        paths = sorted((group / sub).glob("*.json"), key=lambda q: q.stat().st_mtime, reverse=True)[:RECENT]
        for path in paths:
            r = read_result(path)
            if r and r.get("status") == "ok" and "seconds" in r and all(r.get(k) == v for k, v in match.items()):
                seconds.append(float(r["seconds"]))
    return sum(seconds) / len(seconds) if seconds else None
