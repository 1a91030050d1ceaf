"""Wall time per stage and peak memory of the detox task, cold (empty cache) and warm (everything cached), and of
`bench run --methods all --task detox --seeds N` on top of the warm cache, including the re-RLHF of every method
(the run's default) with its cost per method.

    OMP_NUM_THREADS=1 python benchmarks/detox_default.py [--profile default] [--seeds 3] [--workdir /tmp/detoxrun]
        [--phases cold,warm,run,rerun] [--rerlhf-methods all]

`run` on an empty WORKDIR measures the command cold, as a fresh user meets it (assets fetched, task built);
`rerun` runs the same command again, everything cached: the warm rerun. Each phase updates
WORKDIR/benchmark-<profile>.json and keeps what earlier invocations measured for the others.

Stage times come from the task's progress callback: a stage's time runs from the end of the previous stage to
the end of this one, so model loads are charged to the stage that needs them. Peak memory is the maximum resident
set size of the process tree, sampled every 0.5 s (the Ray workers of `bench run` included). Results are printed
and written to WORKDIR/benchmark-<profile>.json. Timings come from a shared 2-core machine: compare runs made in
the same conditions only.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

BUILD = r"""
import json, sys, time, resource
import torch
torch.set_num_threads(1)
from bench import registry
from bench.storage.artifacts import ArtifactCache
task = registry.get_task("detox")
profile, cache_root, out = sys.argv[1], sys.argv[2], sys.argv[3]
events = []
start = time.time()
def stages():
    out, last = [], 0.0
    for e in events:
        out.append({"stage": e["stage"], "seconds": round(e["end"] - last, 2), "units": e["units"]})
        last = e["end"]
    return out, last
def progress(stage, done, total):
    if done == total:
        events.append({"stage": stage, "end": time.time() - start, "units": total})
        # the stages so far, in case the build is stopped at a time limit before it ends
        json.dump({"finished": False, "stages": stages()[0]}, open(out, "w"), indent=1)
data = task.build(profile, task.config(profile), ArtifactCache(cache_root), progress=progress)
total = time.time() - start
done, last = stages()
done.append({"stage": "(rest: prompts, loads, artifact writes)", "seconds": round(total - last, 2)})
json.dump({"finished": True, "total_seconds": round(total, 2), "stages": done,
           "peak_rss_mb_self": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
           "summary": data.summary}, open(out, "w"), indent=1, default=str)
"""


def tree_rss_mb(pid: int) -> float:
    import psutil

    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return 0.0
    total = 0
    for p in procs:
        try:
            total += p.memory_info().rss
        except psutil.Error:
            pass
    return total / 2**20


def run_measured(cmd: list[str], cwd: Path, env: dict, timeout: float | None = None) -> dict:
    """Run `cmd`, sampling the resident memory of its process tree; wall time, peak tree RSS, exit code. Past
    `timeout` seconds its whole process group (Ray's workers too) is killed and `timed_out` is true."""
    started = time.time()
    proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    peak = [0.0]
    done = threading.Event()

    def sample():
        while not done.is_set():
            peak[0] = max(peak[0], tree_rss_mb(proc.pid))
            time.sleep(0.5)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    timed_out = False
    try:
        output = proc.communicate(timeout=timeout)[0]
    except subprocess.TimeoutExpired:
        timed_out = True
        os.killpg(proc.pid, signal.SIGKILL)
        output = proc.communicate()[0]
    done.set()
    sampler.join()
    return {"seconds": round(time.time() - started, 2), "peak_tree_rss_mb": round(peak[0]),
            "returncode": proc.returncode, "timed_out": timed_out,
            "output_tail": output[-2000:]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", default="default")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/detoxrun"))
    parser.add_argument("--phases", default="cold,warm,run", help="which of cold, warm, run, rerun to measure now")
    parser.add_argument("--rerlhf-methods", default="all", help="passed to bench run: which methods to re-align")
    parser.add_argument("--timeout", type=float, default=None,
                        help="seconds per phase; a build stopped there reports the stages it finished")
    args = parser.parse_args()
    phases = args.phases.split(",")
    work = args.workdir.resolve()
    work.mkdir(parents=True, exist_ok=True)
    report_path = work / f"benchmark-{args.profile}.json"
    cache = work / "runs" / "cache"  # where `bench run` in WORKDIR looks, so the run reuses the measured build
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
           "TRANSFORMERS_OFFLINE": "1", "RAY_AUTH_MODE": "disabled"}
    report = json.loads(report_path.read_text()) if report_path.exists() else {}
    report.update({"profile": args.profile, "workdir": str(work), "cpus": os.cpu_count()})
    for phase in [p for p in ("cold", "warm") if p in phases]:
        if phase == "cold" and cache.exists() and any(cache.iterdir()):
            print(f"note: {cache} is not empty, so the 'cold' build reuses what is there (wipe it for a cold run)")
        out = work / f"build-{phase}.json"
        out.unlink(missing_ok=True)
        measured = run_measured([sys.executable, "-c", BUILD, args.profile, str(cache), str(out)], work, env,
                                args.timeout)
        built = json.loads(out.read_text()) if out.exists() else {"stages": []}
        if not built.get("finished"):
            report[f"build_{phase}"] = {"wall_seconds": measured["seconds"], "timed_out": measured["timed_out"],
                                        "peak_tree_rss_mb": measured["peak_tree_rss_mb"],
                                        "stages_finished": built["stages"]}
            report_path.write_text(json.dumps(report, indent=1, default=str))
            print(measured["output_tail"])
            print(f"{phase} build stopped after {measured['seconds']} s (timed out: {measured['timed_out']}); "
                  f"stages finished: {built['stages']}")
            return 1
        report[f"build_{phase}"] = {"wall_seconds": measured["seconds"],
                                    "peak_tree_rss_mb": measured["peak_tree_rss_mb"],
                                    "build_seconds": built["total_seconds"], "stages": built["stages"]}
        report["task_summary_detox"] = built["summary"].get("detox")
        report["expert"] = {k: v for k, v in built["summary"]["expert"].items() if k != "recipe"}
        print(f"{phase} build: {measured['seconds']} s wall, peak {measured['peak_tree_rss_mb']} MB")
        for s in built["stages"]:
            print(f"  {s['stage']:<42} {s['seconds']:>8.1f} s")
    command = [sys.executable, "-m", "bench.cli", "run", "--methods", "all", "--task", "detox", "--profile",
               args.profile, "--seeds", str(args.seeds), "--rerlhf-methods", args.rerlhf_methods]
    if "run" in phases:
        measured = run_measured(command, work, env)
        report["bench_run"] = {k: v for k, v in measured.items() if k != "output_tail"}
        print(f"bench run --seeds {args.seeds} (task build unless cached, trials, re-alignments, leaderboard): "
              f"{measured['seconds']} s wall, peak {measured['peak_tree_rss_mb']} MB, exit {measured['returncode']}")
        print(measured["output_tail"])
        if measured["returncode"] != 0:
            return 1
        report["rerlhf_per_method"] = rerlhf_costs(work / "runs" / "detox")
        for method, cost in report["rerlhf_per_method"].items():
            print(f"  re-RLHF {method:<14} {cost}")
    if "rerun" in phases:
        measured = run_measured(command, work, env)
        report["bench_rerun"] = {k: v for k, v in measured.items() if k != "output_tail"}
        print(f"rerun: {measured['seconds']} s wall, peak {measured['peak_tree_rss_mb']} MB, exit "
              f"{measured['returncode']}")
        if measured["returncode"] != 0:
            print(measured["output_tail"])
            return 1
    report_path.write_text(json.dumps(report, indent=1, default=str))
    print(f"wrote {report_path}")
    return 0


def rerlhf_costs(task_runs: Path) -> dict:
    """Per method, from the latest run's re-alignment results: the trial's wall time and its parts (refit +
    best-of-n, RL training, sampling + judging the re-aligned policy) and the Ray worker's peak resident memory.
    Parts read ~0 when the trial reused cached artifacts; `train_seconds` is the RL training as first built."""
    group = task_runs / json.loads((task_runs / "latest.json").read_text())["group"]
    selection = json.loads((group / "selection.json").read_text())
    out = {}
    for method, trial_ids in selection.get("rerlhf", {}).get("trial_ids", {}).items():
        for trial_id in trial_ids:
            payload = json.loads((group / "rerlhf" / f"{trial_id}.json").read_text())["payload"]
            out[f"{method} (seed {payload['seed']})"] = {
                "status": payload["status"], "trial_seconds": payload["seconds"],
                "timing": payload.get("timing"), "worker_peak_rss_mb": payload["worker_peak_rss_mb"],
                "train_seconds": payload.get("training", {}).get("recipe", {}).get("train_seconds")}
    return out


if __name__ == "__main__":
    sys.exit(main())
