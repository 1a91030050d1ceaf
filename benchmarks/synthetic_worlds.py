"""Wall-clock time of the whole worlds matrix (`bench worlds`): every world tuned and run from scratch in a fresh
runs directory, then the board; the frozen configurations go to --tuned-dir.

    OMP_NUM_THREADS=1 IRL_BENCH_CPUS=1 .venv/bin/python benchmarks/synthetic_worlds.py \
        --runs-dir runs/worlds-bench --out benchmarks/results/synthetic_worlds.json

Wall-clock numbers on a shared machine are noisy: the record names the host and the Ray CPUs used.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")


def main() -> None:
    from rich.console import Console

    from bench import provenance
    from bench.execution.worlds import WorldsRequest, run_worlds
    from bench.storage.results import read_result

    parser = argparse.ArgumentParser()
    parser.add_argument("--runs-dir", type=Path, required=True, help="a fresh directory (reused trials are not timed)")
    parser.add_argument("--tuned-dir", type=Path, default=Path("tuned"))
    parser.add_argument("--worlds", default="all")
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--tune-trials", type=int, default=10)
    parser.add_argument("--tune-seeds", type=int, default=2)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    if (args.runs_dir / "worlds").exists():
        raise SystemExit(f"{args.runs_dir} already holds worlds runs; pass a fresh --runs-dir to time from scratch.")

    request = WorldsRequest(worlds=args.worlds, seeds=args.seeds, tune_trials=args.tune_trials,
                            tune_seeds=args.tune_seeds, runs_dir=args.runs_dir, tuned_dir=args.tuned_dir)
    started = time.time()
    doc, _ = run_worlds(request, Console(stderr=True))
    wall = time.time() - started
    fit_seconds = [r["seconds"] for r in (read_result(p) for p in args.runs_dir.rglob("trials/*.json")) if r]
    sweep_seconds = [r["seconds"] for r in (read_result(p) for p in args.runs_dir.rglob("sweeps/*/fits/*.json")) if r]
    record = {
        "what": "bench worlds: tuning + confirmation + board, from scratch",
        "worlds": [c["world"] for c in doc["worlds"]],
        "seeds": args.seeds, "tune_trials": args.tune_trials, "tune_seeds": args.tune_seeds,
        "ray_cpus": os.environ.get("IRL_BENCH_CPUS") or os.cpu_count(),
        "host": provenance.hardware(),
        "wall_s": round(wall, 1),
        "confirmation_trials": len(fit_seconds), "confirmation_fit_s": round(sum(fit_seconds), 1),
        "tuning_fits": len(sweep_seconds), "tuning_fit_s": round(sum(sweep_seconds), 1),
    }
    print(json.dumps(record, indent=1))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(record, indent=1) + "\n")


if __name__ == "__main__":
    main()
