"""`bench ambiguity`: the extra fits that the three ambiguity spreads need (docs/ambiguity.md), run as Ray trials
beside a finished `bench run`, then `<group>/ambiguity.json` and the group's leaderboard with its Ambiguity table.

Per method, on top of the board's own fits (its seeds, at the frozen configuration):
  * data: seed 0 on bootstrap resamples 1..R of the training prompts (`TrialSpec.resample`);
  * identifiability: seeds 0..S-1 on the demonstrations as given and seed 0 on resamples 1..R, each at every
    strength of the method's regulariser: its least, frozen and greatest valid value.
The regulariser is `weight_decay` (AdamW's decoupled L2, bench/kit/training.py) for every method whose config has
it: bradley_terry, max_margin and failure_aware. One knob for all keeps their spreads comparable; max_margin's
`norm_bound` mostly sets the scale of its reward (its loss is linear in the margin), which the distance ignores.
Methods without it (random, oracle, implicit, length) get the seed and data sets only.

Fits are content-addressed: extra ones are stored in `<group>/ambiguity/<trial_id>.json`, the board's are read from
`<group>/trials/`, and a rerun runs only what is missing or failed.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from threadpoolctl import threadpool_limits

from bench import config as configs
from bench import registry
from bench.errors import BadInput, RuntimeFailure
from bench.execution.executor import check_resources, execute
from bench.execution.fit_trial import TrialSpec, run_fit_trial
from bench.progress import progress_bar
from bench.reporting import document as leaderboard
from bench.scoring.ambiguity import AmbiguityReport, evaluation, score_method
from bench.scoring.scorer import primary_split
from bench.storage.artifacts import file_lock
from bench.storage.results import read_result

REGULARISER = "weight_decay"
EXTRA = "ambiguity"  # the group's folder of extra fits


@dataclass
class AmbiguityRequest:
    task: str
    profile: str = "default"
    methods: str = "trained"  # trained: the run's methods that have REGULARISER; or NAME[,NAME...]
    resamples: int = 5
    seeds: int = 3
    runs_dir: Path = Path("runs")
    address: str | None = None
    gpus_per_trial: float | None = None  # None: bench/execution/plan.py `gpu_share`


@dataclass(frozen=True)
class MethodPlan:
    seeds: list[str]  # trial ids of the board's fits
    data: list[TrialSpec]
    grid: list[TrialSpec]  # the identifiability grid (includes the board's seeds and the data fits it repeats)
    regulariser: str | None


def regulariser_grid(method: str, config: dict) -> list[float]:
    """The strengths of REGULARISER a method is refitted at: its least, frozen and greatest valid value ([] when
    the method has no such setting)."""
    field = {f.name: f for f in configs.fields(registry.methods()[method].Config)}.get(REGULARISER)
    if field is None:
        return []
    return sorted({float(field.metadata["low"]), float(config[REGULARISER]), float(field.metadata["high"])})


def plan(request: AmbiguityRequest) -> tuple[Path, dict[str, MethodPlan]]:
    """Validate the request against the stored run; raises BadInput before anything is written."""
    registry.get_task(request.task)
    if request.resamples < 2:
        raise BadInput(f"--resamples {request.resamples} gives no spread; use --resamples 2 or more.")
    if request.seeds < 1:
        raise BadInput(f"--seeds {request.seeds} is not a number of seeds; use --seeds 1 or more.")
    check_resources(request.address, request.gpus_per_trial)
    group_dir = request.runs_dir / request.task / request.profile
    if not (group_dir / "selection.json").exists():
        raise BadInput(f"no stored run of {request.task} (profile {request.profile}) under {request.runs_dir}; "
                       f"run `bench run --task {request.task} --profile {request.profile}` first.")
    selection, data, _, _ = leaderboard.load_trials(group_dir)
    if request.methods.strip() == "trained":
        names = [m for m, e in selection.methods.items() if REGULARISER in e.config]
    else:
        names = registry.resolve_methods(request.methods)
        missing = sorted(set(names) - set(selection.methods))
        if missing:
            raise BadInput(f"--methods names {', '.join(missing)}, which the stored run of {request.task} "
                           f"({request.profile}) did not fit; choose from {', '.join(selection.methods)}.")
    if not names:
        raise BadInput(f"the stored run of {request.task} ({request.profile}) has no method with a {REGULARISER} "
                       f"setting; name methods with --methods.")
    plans = {}
    for m in names:
        config = selection.methods[m].config
        at = lambda cfg, seed, r=0: TrialSpec(m, cfg, seed, data.ref, r)  # noqa: E731
        grid = regulariser_grid(m, config)
        configs_ = [config | {REGULARISER: v} if v != config[REGULARISER] else config for v in grid] or [config]
        resamples = range(1, request.resamples + 1)
        plans[m] = MethodPlan(
            seeds=selection.methods[m].trial_ids,
            data=[at(config, 0, r) for r in resamples],
            grid=[at(c, s) for c in configs_ for s in range(request.seeds)] + [at(c, 0, r) for c in configs_
                                                                                for r in resamples],
            regulariser=REGULARISER if grid else None,
        )
    return group_dir, plans


def run_ambiguity(request: AmbiguityRequest, console) -> AmbiguityReport:
    """Run the missing fits, write `<group>/ambiguity.json` and rebuild the group's leaderboard."""
    group_dir, plans = plan(request)
    with file_lock(group_dir / ".lock", on_wait=lambda: console.print(f"waiting for another run on {group_dir}")):
        specs = list({s.trial_id: s for p in plans.values() for s in p.data + p.grid}.values())
        extra = group_dir / EXTRA
        extra.mkdir(exist_ok=True)
        pending = [s for s in specs if not _ok(_result(group_dir, s.trial_id))]
        console.print(f"{len(specs)} ambiguity fits: {len(specs) - len(pending)} reused, {len(pending)} to run")
        if pending:
            with progress_bar("ambiguity fits", len(pending), console) as advance:
                execute(pending, run_fit_trial, extra, address=request.address,
                        gpus_per_trial=request.gpus_per_trial, progress=advance)
        if any(_result(group_dir, s.trial_id) is None for s in pending):  # Tune stops gracefully on Ctrl-C
            raise RuntimeFailure("the run stopped before every ambiguity fit finished (interrupted?); finished ones "
                                 "are kept: rerun the same command to complete it.")
        report = score(group_dir, plans, request)
        report.write(group_dir)
        doc = leaderboard.build(group_dir)
        paths = leaderboard.write(doc, *leaderboard.output_of(request.runs_dir, group_dir))
    console.print("wrote " + ", ".join(str(p) for p in [group_dir / "ambiguity.json", *paths]), highlight=False)
    return report


def score(group_dir: Path, plans: dict[str, MethodPlan], request: AmbiguityRequest) -> AmbiguityReport:
    """The three spreads per method from the stored fits (failed fits are left out; a missing one is an error)."""
    selection, data, ok, _ = leaderboard.load_trials(group_dir)
    split = primary_split(ok, data)
    n_boot, seed = selection.bootstrap["resamples"], selection.bootstrap["seed"]
    methods = {}
    with threadpool_limits(limits=1):  # single-threaded BLAS: the same digits as the board's
        boot, val = evaluation(data, split, n_boot, seed)
        for m, p in plans.items():
            ids = p.seeds + [s.trial_id for s in p.data + p.grid]
            results = {i: _result(group_dir, i) for i in ids}
            missing = [i for i, r in results.items() if r is None]
            if missing:
                raise RuntimeFailure(f"{len(missing)} fits of {m} have no result (e.g. {missing[0]}); rerun the "
                                     f"same `bench ambiguity` command to complete them.")
            fits = lambda trial_ids: [results[i] for i in trial_ids if _ok(results[i])]  # noqa: E731
            if not fits([s.trial_id for s in p.grid]):
                raise RuntimeFailure(f"every ambiguity fit of {m} failed; their errors are in {group_dir / EXTRA}.")
            methods[m] = score_method(boot, val, split, fits(p.seeds), fits([s.trial_id for s in p.data]),
                                      fits([s.trial_id for s in p.grid]), p.regulariser)
            if p.regulariser:  # the planned strengths, also those whose every fit failed
                methods[m]["grid"] = sorted({s.config[p.regulariser] for s in p.grid})
            methods[m]["failed_fits"] = [{"trial_id": i, "error": results[i].get("error", "")}
                                         for i in dict.fromkeys(ids) if not _ok(results[i])]
    settings = {"resamples": request.resamples, "seeds": request.seeds, "board_seeds": selection.seeds,
                "bootstrap": selection.bootstrap, "epsilon": "standard error of the best fit's validation loss"}
    return AmbiguityReport(data.task, data.profile, split, settings, methods)


def _result(group_dir: Path, trial_id: str) -> dict | None:
    """A fit's stored result, from the board's trials or the extra fits (a successful one first); None when neither
    holds one."""
    paths = [group_dir / folder / f"{trial_id}.json" for folder in ("trials", EXTRA)]
    found = [r for path in paths if path.exists() and (r := read_result(path)) is not None]
    return next((r for r in found if _ok(r)), found[0] if found else None)


def _ok(result: dict | None) -> bool:
    return result is not None and result["status"] == "ok"
