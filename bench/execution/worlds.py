"""`bench worlds`: every method on every stress world of a task, each trained method tuned with the same budget per
world, then the matrix board (bench/reporting/worlds.py).

A world is a task profile named `world-<name>` (tasks/synthetic.py declares nine). Per world:
  1. tuning: every trained method (one with a search space) gets the same sweep (bench/execution/sweep.py): the same
     number of configurations drawn from its declared space with the reward head held fixed (one reward-model class
     per table), FIFO, so every configuration completes on the same tuning seeds, scored on validation pair accuracy
     only; the best is frozen to `tuned/<task>/world-<name>/<method>.json`;
  2. confirmation: each method on seeds 0..N-1 with its frozen configuration (baselines with their defaults), as
     Ray Tune trials that also score the world's broad pool when the task publishes one;
  3. the run's record (`selection.json`, as `bench run` writes it) in `<runs>/worlds/<task>/<world>/`.
Reruns reuse finished sweeps and trials; `rebuild` rewrites the board from stored runs only.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from bench import config as configs
from bench import provenance, registry
from bench.errors import BadInput
from bench.execution.executor import check_resources
from bench.execution.fit_trial import TrialSpec, run_trial
from bench.execution.run import _run_pending, check_writable
from bench.execution.sweep import SweepRequest, sweep
from bench.reporting import worlds as board
from bench.storage.artifacts import atomic_write_json, cache_for
from bench.storage.selection import MethodSelection, Selection

PREFIX = "world-"
DEFAULT_METHODS = "bradley_terry,max_margin,failure_aware,random,oracle,implicit"
ITEM_SETS = ("val", "test", "pool")


@dataclass
class WorldsRequest:
    task: str = "synthetic"
    worlds: str = "all"
    methods: str = DEFAULT_METHODS
    seeds: int = 5
    tune_trials: int = 8
    tune_seeds: int = 1
    head: str = "linear"
    runs_dir: Path = Path("runs")
    tuned_dir: Path = Path("tuned")
    leaderboards_dir: Path | None = None  # None: <runs_dir>/leaderboards
    bootstrap: int = 1000
    address: str | None = None  # local Ray (the executor's settings; bench/execution/run.py _run_pending)
    gpus_per_trial: float | None = None  # None: bench/execution/plan.py `gpu_share`


def world_names(task) -> list[str]:
    return [p[len(PREFIX):] for p in task.profiles if p.startswith(PREFIX)]


def resolve_worlds(task, spec: str) -> list[str]:
    """`all` or comma-separated world names (with or without the `world-` prefix) -> profile names."""
    known = world_names(task)
    if not known:
        raise BadInput(f"task {task.name!r} declares no worlds (profiles named {PREFIX}*); use --task synthetic.")
    if spec.strip() == "all":
        return [PREFIX + w for w in known]
    chosen = [w.strip().removeprefix(PREFIX) for w in spec.split(",") if w.strip()]
    unknown = [w for w in chosen if w not in known]
    if unknown or not chosen:
        raise BadInput(f"unknown world {(unknown or [spec])[0]!r}; choose all or from: {', '.join(known)}.")
    return [PREFIX + w for w in dict.fromkeys(chosen)]


def validate(req: WorldsRequest):
    task = registry.get_task(req.task)
    worlds = resolve_worlds(task, req.worlds)
    methods = registry.resolve_methods(req.methods)
    if req.seeds < 2:
        raise BadInput(f"--seeds {req.seeds} leaves no seed ambiguity to measure; use --seeds 2 or more (5 is usual).")
    if req.tune_trials < 1 or req.tune_seeds < 1:
        raise BadInput("--tune-trials and --tune-seeds must be at least 1.")
    if req.bootstrap < 100:
        raise BadInput(f"--bootstrap {req.bootstrap} is too few resamples for a 95% CI; use at least 100.")
    heads = [m for m in methods if "head" in {f.name for f in configs.fields(registry.methods()[m].Config)}]
    for m in heads:
        configs.build(registry.methods()[m].Config, {"head": req.head}, owner=m)  # an unknown head is bad input
    check_resources(None, 0.0)
    check_writable(req.runs_dir, "--runs-dir")
    check_writable(req.tuned_dir, "--tuned-dir")
    check_writable(req.leaderboards_dir or req.runs_dir / "leaderboards", "--leaderboards-dir")
    return task, worlds, methods


def trained(methods: list[str]) -> list[str]:
    return [m for m in methods if configs.search_space(registry.methods()[m].Config)]


def run_worlds(req: WorldsRequest, console) -> tuple[dict, float]:
    """Tune, run and score every (world, method); returns the board document and the wall-clock seconds."""
    task, worlds, methods = validate(req)
    started = time.time()
    group_dirs = []
    for world in worlds:
        group_dirs.append(_run_world(task, world, methods, req, console))
    doc = rebuild(req, group_dirs, console)
    return doc, time.time() - started


def _run_world(task, world: str, methods: list[str], req: WorldsRequest, console) -> Path:
    task_config = task.config(world)
    data = task.build(world, task_config, cache_for(req.runs_dir))
    method_configs, tuning = {}, {}
    for m in methods:
        if m in trained(methods):
            frozen = sweep(SweepRequest(
                task=task.name, methods=m, profile=world, trials=req.tune_trials, seeds_per_trial=req.tune_seeds,
                scheduler="fifo", runs_dir=req.runs_dir, tuned_dir=req.tuned_dir, resume=True,
                head=req.head), console)[m]
            b = frozen["budget"]
            console.print(f"{world} {m}: {b['completed']}/{b['configurations']} configurations completed on tuning "
                          f"seeds {frozen['tuning_seeds']}, best val pair accuracy {frozen['objective']['value']:.4f}, "
                          f"{b['cpu_hours']:.4f} CPU-h -> {frozen['path']}", highlight=False)
            method_configs[m] = frozen["config"]
            tuning[m] = {"source": frozen["path"], "budget": b, "objective": frozen["objective"],
                         "tuning_seeds": frozen["tuning_seeds"], "overridden": []}
        else:
            method_configs[m] = configs.to_dict(registry.methods()[m].Config())
            tuning[m] = {"source": "defaults"}
    seeds = list(range(req.seeds))
    specs = {m: [TrialSpec(m, method_configs[m], s, data.ref) for s in seeds] for m in methods}
    group_dir = req.runs_dir / "worlds" / task.name / world
    (group_dir / "trials").mkdir(parents=True, exist_ok=True)
    atomic_write_json(group_dir / board.WORLD_FILE, {"stresses": task.profiles[world].description})
    _run_pending(f"{world} trials", [s for group in specs.values() for s in group], group_dir / "trials",
                 run_world_trial, req, console)
    Selection(
        task_data=data, task_config=configs.to_dict(task_config), seeds=seeds,
        methods={m: MethodSelection(method_configs[m], [s.trial_id for s in specs[m]], tuning[m]) for m in methods},
        bootstrap={"resamples": req.bootstrap, "seed": 0}, provenance=provenance.collect(),
    ).write(group_dir)
    return group_dir


def run_world_trial(spec: dict, result_path: Path) -> dict:
    """A fit trial that also scores the world's broad pool (bench/execution/fit_trial.py `extra_items`)."""
    trial = TrialSpec.from_json(spec)
    item_sets = [s for s in ITEM_SETS if s != "pool" or "pool" in trial.task.artifacts]
    return run_trial(trial, result_path, splits=tuple(item_sets))


def rebuild(req: WorldsRequest, group_dirs: list[Path] | None = None, console=None) -> dict:
    """The board from stored runs only: the worlds of the request that have a stored run."""
    if group_dirs is None:
        task = registry.get_task(req.task)
        group_dirs = [req.runs_dir / "worlds" / task.name / w for w in resolve_worlds(task, req.worlds)]
        missing = [g.name for g in group_dirs if not (g / "selection.json").exists()]
        if missing:
            raise BadInput(f"no stored run of {', '.join(missing)} under {req.runs_dir}; run `bench worlds` first.")
    doc = board.build(group_dirs)
    paths = board.write(doc, req.leaderboards_dir or req.runs_dir / "leaderboards", f"{req.task}-worlds")
    if console is not None:
        console.print("wrote " + ", ".join(str(p) for p in paths), highlight=False)
    atomic_write_json(req.runs_dir / "worlds" / req.task / "latest.json", {"worlds": [g.name for g in group_dirs]})
    return doc
