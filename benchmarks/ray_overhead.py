"""Ray's overhead in irl-bench: the same 16 fits in-process and sequential vs. as Ray Tune trials on 2 workers,
and how sweep time grows with the number of configurations.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/ray_overhead.py [--out benchmarks/ray_overhead.json]

Wall-clock numbers on a shared machine are noisy: run it on an otherwise idle machine and report the host.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")


def main() -> None:
    import ray
    import torch
    from rich.console import Console

    from bench import config as C
    from bench import registry
    from bench.execution.executor import execute
    from bench.execution.fit_trial import TrialSpec, run_fit_trial, run_trial
    from bench.execution.sweep import SweepRequest, sweep
    from bench.storage.artifacts import cache_for

    parser = argparse.ArgumentParser()
    parser.add_argument("--profile", default="default")
    parser.add_argument("--fits", type=int, default=16)
    parser.add_argument("--sweep-trials", default="4,8,16")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    torch.set_num_threads(1)
    console = Console(quiet=True)
    work = Path(tempfile.mkdtemp(prefix="ray-overhead-"))
    task = registry.get_task("synthetic")
    data = task.build(args.profile, task.config(args.profile), cache_for(work / "runs"))
    cfg = C.to_dict(C.build(registry.methods()["bradley_terry"].Config))
    specs = [TrialSpec("bradley_terry", cfg, seed, data.ref) for seed in range(args.fits)]

    run_trial(specs[0], work / "warmup.json")  # imports and first-use costs, paid by every worker too
    started = time.perf_counter()
    for spec in specs:
        run_trial(spec, work / "inprocess" / f"{spec.trial_id}.json")
    sequential = time.perf_counter() - started

    started = time.perf_counter()
    execute(specs, run_fit_trial, work / "tune")
    through_tune = time.perf_counter() - started  # includes ray.init
    ray.shutdown()

    sweeps = {}
    for n in [int(x) for x in args.sweep_trials.split(",")]:
        started = time.perf_counter()
        sweep(SweepRequest(task="synthetic", methods="bradley_terry", profile=args.profile, trials=n,
                           scheduler="fifo", runs_dir=work / f"sweep{n}", tuned_dir=work / f"tuned{n}"), console)
        sweeps[n] = round(time.perf_counter() - started, 1)
        ray.shutdown()

    report = {
        "profile": args.profile,
        "cpus": os.cpu_count(),
        "fits": args.fits,
        "in_process_sequential_s": round(sequential, 1),
        "ray_tune_2_workers_s": round(through_tune, 1),
        "tune_over_sequential": round(through_tune / sequential, 2),
        "sweep_seconds_by_configurations": sweeps,
    }
    print(json.dumps(report, indent=1))
    if args.out:
        args.out.write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()
