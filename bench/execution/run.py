"""`bench run`: validate everything, build the task's shared stages once, run the missing trials, write the
leaderboard. Input is checked before anything is written; a rerun reuses every finished trial."""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, field, replace
from pathlib import Path

from bench import config as configs
from bench import provenance, registry
from bench.errors import BadInput, RuntimeFailure
from bench.execution import plan as preview
from bench.execution.fit_trial import run_fit_trial
from bench.execution.plan import check_resources, check_tracker
from bench.progress import Stages
from bench.reporting import document as leaderboard
from bench.storage.artifacts import atomic_write_json, cache_for, content_hash, file_lock
from bench.storage.frozen import MAIN_HEAD, class_group, load_frozen
from bench.storage.results import read_result, unfinished
from bench.storage.selection import MethodSelection, Selection

DEFAULT_BOOTSTRAP = 1000


@dataclass
class RunRequest:
    task: str
    methods: str = "all"
    profile: str = "default"
    seeds: int = 5
    runs_dir: Path = Path("runs")
    leaderboards_dir: Path | None = None  # None: <runs_dir>/leaderboards (see reporting/document.py output_of)
    assignments: list[str] = field(default_factory=list)
    address: str | None = None
    gpus_per_trial: float | None = None  # None: bench/execution/plan.py `gpu_share`
    bootstrap: int = DEFAULT_BOOTSTRAP
    tuned_dir: Path = Path("tuned")
    rerlhf: str | None = None  # None: the task's default (its `realignment.resolve_mode`)
    rerlhf_seeds: int = 1
    rerlhf_methods: str = "all"  # which of the selected methods are re-aligned (each costs an RLHF run)
    rerlhf_normalisation: str = "batch"  # how r̂ is scaled for the RL trainer (the task's realignment hook)
    head: str = MAIN_HEAD  # the reward-model class of every method that has one: one class per table
    tracker: str | None = None  # also log trials to tensorboard, mlflow or wandb (Ray Tune's logger callbacks)


@dataclass
class RunPlan:
    task: object
    profile: str
    task_config: object
    method_configs: dict[str, object]
    seeds: list[int]
    request: RunRequest
    tuning: dict[str, dict]  # per method: where its configuration came from (defaults or a frozen sweep)
    rerlhf: str = "off"  # resolved re-alignment mode: rloo, grpo, bon or off
    rerlhf_methods: list[str] = field(default_factory=list)

    @property
    def group(self) -> str:
        """The run group: the profile, plus a hash when task settings were overridden, plus the reward-model class
        when it is not the main one (bench/storage/frozen.py `class_group`)."""
        defaults = configs.to_dict(self.task.config(self.profile))
        current = configs.to_dict(self.task_config)
        group = self.profile if current == defaults else f"{self.profile}-{content_hash(current, 8)}"
        return class_group(group, self.request.head)


def split_assignments(assignments, task, method_names) -> tuple[dict, dict[str, dict]]:
    """`task.KEY=V` sets a task setting, `METHOD.KEY=V` one method's, a bare `KEY=V` every selected method that has
    KEY. Unknown targets are bad input."""
    task_overrides, method_overrides = {}, {m: {} for m in method_names}
    for key, value in configs.parse_assignments(assignments):
        target, dot, name = key.rpartition(".")
        if dot and target == "task":
            task_overrides[name] = value
        elif dot:
            if target not in method_overrides:
                raise BadInput(
                    f"--set {key}: {target!r} is neither 'task' nor a selected method; "
                    f"write task.{name}=… or one of {', '.join(f'{m}.{name}' for m in method_names)}."
                )
            method_overrides[target][name] = value
        else:
            owners = [m for m in method_names if name in {f.name for f in configs.fields(registry.methods()[m].Config)}]
            if not owners:
                raise BadInput(
                    f"--set {key}: no selected method has a setting {name!r}; "
                    f"prefix it with a method or with 'task.' (see `bench ls methods`)."
                )
            for m in owners:
                method_overrides[m][name] = value
    return task_overrides, method_overrides


def plan(request: RunRequest) -> RunPlan:
    """Validate the whole request; raises BadInput before anything is written."""
    task = registry.get_task(request.task)
    method_names = registry.resolve_methods(request.methods)
    if request.seeds < 1:
        raise BadInput(f"--seeds {request.seeds} is not a number of seeds; use --seeds 1 or more.")
    if request.bootstrap < 100:
        raise BadInput(f"--bootstrap {request.bootstrap} is too few resamples for a 95% CI; use at least 100.")
    check_resources(request.address, request.gpus_per_trial)
    check_tracker(request.tracker)
    task_overrides, method_overrides = split_assignments(request.assignments, task, method_names)
    task_config = task.config(request.profile, task_overrides)
    method_configs, tuning = {}, {}
    for m in method_names:
        frozen = load_frozen(request.tuned_dir, task.name, m, request.profile, request.head)
        tuned = frozen["config"] if frozen else {}
        method_configs[m] = configs.build(registry.methods()[m].Config,
                                          {**tuned, **method_overrides[m], **_reward_class(m, tuned, request)},
                                          owner=m)
        tuning[m] = {"source": "defaults"} if frozen is None else {
            "source": frozen["path"], "budget": frozen["budget"], "objective": frozen["objective"],
            "tuning_seeds": frozen["tuning_seeds"], "overridden": sorted(method_overrides[m]),
            "searched": sorted(set(frozen.get("search", {}).get("space", []))
                               - set(frozen.get("search", {}).get("fixed", {}))),
        }
    mode = resolve_realign_mode(request.rerlhf, task, task_config)
    if mode != "off" and not 1 <= request.rerlhf_seeds <= request.seeds:
        raise BadInput(f"--rerlhf-seeds {request.rerlhf_seeds} must lie between 1 and --seeds {request.seeds}.")
    if mode != "off":
        task.realignment.check_normalisation(request.rerlhf_normalisation)
    realigned = method_names if request.rerlhf_methods.strip() == "all" else registry.resolve_methods(
        request.rerlhf_methods)
    if mode != "off" and not set(realigned) <= set(method_names):
        raise BadInput(f"--rerlhf-methods names {', '.join(sorted(set(realigned) - set(method_names)))}, which "
                       f"--methods does not select; re-align only methods that run.")
    check_writable(request.runs_dir, "--runs-dir")
    check_writable(request.leaderboards_dir or request.runs_dir / "leaderboards", "--leaderboards-dir")
    return RunPlan(task, request.profile, task_config, method_configs, list(range(request.seeds)), request, tuning,
                   mode, realigned)


def _reward_class(method: str, tuned: dict, request: RunRequest) -> dict:
    """{"head": --head} for a method with a reward head: every method in a table shares one reward-model class. A
    frozen configuration tuned in another class, or a --set head=…, is refused rather than silently mixed."""
    if "head" not in {f.name for f in configs.fields(registry.methods()[method].Config)}:
        return {}
    if tuned.get("head", request.head) != request.head:
        raise BadInput(f"the frozen configuration of {method} was tuned with the {tuned['head']} head; tune it in "
                       f"this class (bench sweep --method {method} --task {request.task} --head {request.head}) or "
                       f"run with --head {tuned['head']}.")
    if any(k in ("head", f"{method}.head") for k, _ in configs.parse_assignments(request.assignments)):
        raise BadInput("--set head=… would mix reward-model classes in one table; use --head instead.")
    return {"head": request.head}


def resolve_realign_mode(requested: str | None, task, task_config) -> str:
    """`--rerlhf` resolved by the task's re-alignment hook; `off` for tasks without one (asking for more is bad
    input)."""
    if task.realignment is None:
        if requested not in (None, "off"):
            raise BadInput(f"task {task.name!r} has no language-model policies to re-align; drop --rerlhf "
                           f"(or use --rerlhf off).")
        return "off"
    return task.realignment.resolve_mode(requested or "auto", task_config)


def check_writable(directory: Path, flag: str) -> None:
    try:
        directory.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=directory, prefix=".write-check-"):
            pass
    except OSError:
        raise BadInput(f"{flag} {directory} is not a writable directory; pass {flag} DIR with a directory you "
                       f"can write.") from None


def execute_plan(p: RunPlan, console) -> dict:
    """Build shared stages, run missing trials, write selection + leaderboard. Returns the leaderboard document."""
    req = p.request
    preview.render(preview.preview(p), console)
    cache = cache_for(req.runs_dir)
    with console.status(f"building the {p.task.name} task data (profile {p.profile})"):
        data = p.task.build(p.profile, p.task_config, cache)
    group_dir = req.runs_dir / p.task.name / p.group
    (group_dir / "trials").mkdir(parents=True, exist_ok=True)
    # Two `bench run`s on one run group take turns: the second then reuses every trial the first finished.
    waiting = lambda: console.print(f"another bench run is using {group_dir}; waiting for it to finish")  # noqa
    with file_lock(group_dir / ".lock", on_wait=waiting):
        return _run_group(p, data, group_dir, console)


def _run_group(p: RunPlan, data, group_dir: Path, console) -> dict:
    req, task_ref = p.request, data.ref
    specs = preview.fit_specs(p, task_ref)
    kinds = [preview.TrialBatch("trials", [s for group in specs.values() for s in group], run_fit_trial,
                                group_dir / "trials")]
    realign_specs = preview.realign_specs(p, specs)
    if realign_specs:
        hook = p.task.realignment
        # Seed-major order: every method's seed-0 re-alignment finishes before any seed 1, so a run cut short
        # (each costs tens of CPU minutes) still leaves a complete table.
        seed_major = [group[i] for i in range(req.rerlhf_seeds) for group in realign_specs.values()]
        kinds.append(preview.TrialBatch(hook.describe(p.rerlhf), seed_major, hook.run_trial, group_dir / "rerlhf"))
    _run_pending(kinds, req, console)

    selection = Selection(
        task_data=data,
        task_config=configs.to_dict(p.task_config),
        seeds=p.seeds,
        methods={m: MethodSelection(configs.to_dict(p.method_configs[m]), [s.trial_id for s in group], p.tuning[m])
                 for m, group in specs.items()},
        bootstrap={"resamples": req.bootstrap, "seed": 0},
        provenance=provenance.collect(),
        realign_mode=p.rerlhf,
        realign_trial_ids={m: [s.trial_id for s in group] for m, group in realign_specs.items()},
    )
    selection.write(group_dir)
    atomic_write_json(req.runs_dir / p.task.name / "latest.json", {"group": p.group})
    with console.status("scoring and writing the leaderboard"):
        doc = leaderboard.build(group_dir)
        paths = leaderboard.write(doc, *leaderboard.output_of(req.runs_dir, group_dir, req.leaderboards_dir))
    console.print("wrote " + ", ".join(str(p) for p in paths), highlight=False)
    if req.tracker:
        console.print(f"{req.tracker}: {preview.tracker_location(req.tracker, group_dir)}", highlight=False)
    return doc


def _run_pending(kinds: list, req: RunRequest, console) -> None:
    """Run the specs whose result is missing or failed, of every kind (a `TrialBatch` each) in one Ray Tune run (fits
    first), so that a re-alignment takes the core a long fit leaves idle (a re-alignment refits its reward, needing no
    fit's result); raise if any is left unfinished."""
    from bench.execution.executor import execute_batches  # Ray loads only when trials run: a --dry-run never starts it

    pending = []
    for kind in kinds:
        kind.results_dir.mkdir(parents=True, exist_ok=True)
        pending.append(replace(kind, specs=unfinished(kind.specs, kind.results_dir)))
        console.print(f"{len(kind.specs)} {kind.what}: {len(kind.specs) - len(pending[-1].specs)} reused, "
                      f"{len(pending[-1].specs)} to run")
    pending = [batch for batch in pending if batch.specs]
    if not pending:
        return
    with Stages(console=console) as stages:
        execute_batches([replace(batch, progress=stages.stage(batch.what, len(batch.specs))) for batch in pending],
                        address=req.address, gpus_per_trial=req.gpus_per_trial, tracker=req.tracker)
    for batch in pending:
        missing = [s for s in batch.specs if read_result(batch.results_dir / f"{s.trial_id}.json") is None]
        if missing:  # Tune stops gracefully on Ctrl-C; leave no leaderboard built from a partial run
            raise RuntimeFailure(
                f"the run stopped before {len(missing)} of its {batch.what} finished (interrupted?); finished ones "
                f"are kept: rerun the same command to complete it."
            )
