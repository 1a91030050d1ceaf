"""The Python face of irl-bench, for notebooks and scripts: `bench.run(...)` is `bench run` without the terminal,
returning the leaderboard document; `bench.load_leaderboard(path)` reads one back.

    import bench
    board = bench.run("synthetic", methods="random,oracle", profile="tiny", seeds=2)
    {row["method"]: row["metrics"]["roc_auc"]["mean"] for row in board["rows"]}

`import bench` stays light: these two names load their modules (and Ray, for `run`) on first use (see
bench/__init__.py).
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

from rich.console import Console

from bench.errors import BadInput
from bench.execution import run as pipeline
from bench.reporting.compare import load_leaderboard

__all__ = ["run", "load_leaderboard"]

# RunRequest fields `run` passes as keywords of its own; every other field is an option (see `bench run --help`)
_OWN = ("task", "methods", "profile", "seeds", "runs_dir", "leaderboards_dir", "assignments")
OPTIONS = tuple(f.name for f in dataclasses.fields(pipeline.RunRequest) if f.name not in _OWN)


def run(task: str, methods: str | list[str] = "all", profile: str = "default", seeds: int = 5,
        runs_dir: Path | str = "runs", leaderboards_dir: Path | str | None = None, *,
        settings: dict | None = None, quiet: bool = True, **options) -> dict:
    """Run `methods` on `task` over seeds 0..seeds-1 and return the leaderboard document (a dict: "rows" per method
    with "metrics", "per_seed", "failures", ...), exactly as `bench run` does: finished trials in `runs_dir` are
    reused, the leaderboard files are written to `leaderboards_dir` (default `<runs_dir>/leaderboards`).

    `settings` are `--set` overrides, e.g. {"bradley_terry.lr": 0.01, "task.n_prompts": 100}; `options` are the
    other `bench run` flags by their Python names: address, gpus_per_trial, bootstrap, tuned_dir, rerlhf,
    rerlhf_seeds, rerlhf_methods. A trial that fails does not raise: its row lists it under "failures".
    Raises `bench.errors.BadInput` on bad input, before anything is written."""
    unknown = sorted(set(options) - set(OPTIONS))
    if unknown:
        raise BadInput(f"bench.run() got an unknown option {unknown[0]!r}; use one of {', '.join(OPTIONS)}, or "
                       f"settings={{'METHOD.KEY': value}} for a method's or the task's setting.")
    if "tuned_dir" in options:
        options["tuned_dir"] = Path(options["tuned_dir"])
    request = pipeline.RunRequest(
        task=task, methods=methods if isinstance(methods, str) else ",".join(methods), profile=profile, seeds=seeds,
        runs_dir=Path(runs_dir), leaderboards_dir=None if leaderboards_dir is None else Path(leaderboards_dir),
        assignments=[f"{key}={value}" for key, value in (settings or {}).items()], **options,
    )
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # as the CLI: local Ray without auth tokens,
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # and Tune silent (the progress display is ours)
    return pipeline.execute_plan(pipeline.plan(request), Console(quiet=quiet))
