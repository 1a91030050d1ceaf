"""The benchmark suite: `python -m benchmarks [--only a,b | --all] [--quick] [--list] [--results DIR]`.

Each part is a module of this package, run as its own process (`python -m benchmarks.<part> ...`: its imports,
threads, Ray and peak memory stay its own), writing DIR/<part>.{md,json}. Afterwards DIR/README.md indexes every
part that has results: what it measures, its headline ratio, when and where it was measured, and whether its GPU
figures (benchmarks/gpu.sh, under DIR/gpu/) are still to be measured. The default run is the cheap parts; the heavy
ones run with --only or --all. --quick passes each part its small workload (seconds to a few minutes).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from benchmarks import RESULTS

HERE = Path(__file__).resolve().parent
REPO = HERE.parent


@dataclass(frozen=True)
class Part:
    name: str
    what: str
    heavy: bool = False
    on_gpu: bool = False  # benchmarks/gpu.sh measures it on the GPU machine
    args: Callable[[Path, bool], list[str]] | None = None  # default: --out OUT [--quick], those the part takes
    manual: str = ""  # why the suite cannot run it (it is indexed all the same)
    module: str = ""  # the module it runs, when not its own name (two parts measure two profiles with one script)

    @property
    def script(self) -> str:
        return self.module or self.name


def detox_args(out: Path, quick: bool) -> list[str]:
    """A fresh work directory, so that the cold build is cold (its assets are downloaded from PyPI again); its
    `bench run` phase gives trials no GPU share (benchmarks/gpu.sh runs that phase itself, with one)."""
    work = tempfile.mkdtemp(prefix="benchmarks-detox-")
    return ["--workdir", work, "--profile", "smoke" if quick else "default", "--seeds", "1"]


def detox_fast_args(out: Path, quick: bool) -> list[str]:
    """The mission's command as a fresh user types it, on the fast profile: `bench run` on an empty cache (assets
    fetched, the task built, every trial and one re-alignment per method), then the same command again."""
    work = tempfile.mkdtemp(prefix="benchmarks-detox-fast-")
    return ["--workdir", work, "--profile", "smoke" if quick else "fast", "--seeds", "1", "--phases", "run,rerun"]


PARTS = {p.name: p for p in [
    Part("fit_scaling", "bradley_terry and max_margin fit time vs number of pairs (synthetic, 1k-16k), log-log slope"),
    Part("judges", "detox judges: texts/s batched vs one text at a time, on 200 real completions"),
    Part("reward_trainer", "bradley_terry's linear head on cached features vs TRL's RewardTrainer training the same "
                           "head on the frozen backbone: s/epoch and pair accuracy", heavy=True),
    Part("generation", "sampling tokens/s per engine vs the reference batched path vs a per-prompt generate loop",
         heavy=True, on_gpu=True,
         args=lambda out, quick: ["--out", str(out)] + (["--prompts", "16", "--loop-prompts", "4"] if quick else [])),
    Part("rl_step", "one RLOO step of the expert's recipe, by part: today's settings vs the opt-in speed settings",
         heavy=True),
    Part("detox_default", "cold and warm wall time and peak memory of the detox build per stage, and of bench run "
                          "--methods all --task detox", heavy=True, on_gpu=True, args=detox_args),
    Part("detox_fast", "bench run --methods all --task detox --profile fast --seeds 1 on an empty cache (assets, "
                       "build, trials, one re-RLHF per method), then rerun warm: wall time and peak memory",
         heavy=True, args=detox_fast_args, module="detox_default"),
    Part("reward_model_classes", "IRL fit s/epoch: linear head on cached features vs the LM's top blocks training "
                                 "(forward/backward through the backbone)", heavy=True,
         args=lambda out, quick: ["--out", str(out)] + (["--epochs", "3", "--heads", "linear,lm_top1"] if quick
                                                          else [])),
    Part("ray_overhead", "the same fits in-process vs as Ray Tune trials; sweep time vs configurations", heavy=True,
         args=lambda out, quick: ["--out", str(out.with_suffix(".json"))] + (["--fits", "4", "--sweep-trials", "2,4"]
                                                                             if quick else [])),
    Part("synthetic_worlds", "wall time of the whole worlds matrix (bench worlds) from scratch", heavy=True,
         args=lambda out, quick: ["--runs-dir", tempfile.mkdtemp(prefix="worlds-bench-"), "--tuned-dir",
                                  tempfile.mkdtemp(prefix="worlds-tuned-"), "--out", str(out.with_suffix(".json"))]
         + (["--worlds", "clean", "--seeds", "1", "--tune-trials", "2", "--tune-seeds", "1"] if quick else [])),
    Part("memory", "RSS of a re-alignment trial per stage (smoke) with and without the release steps; SmolLM2 stage "
                   "peaks and the projected tree peak of two concurrent default trials", heavy=True),
    Part("generation_ortgenai", "onnxruntime-genai vs transformers batched generate", heavy=True,
         manual="it runs in its own virtual environment; see benchmarks/generation_ortgenai.py"),
]}
DEFAULT = [name for name, p in PARTS.items() if not p.heavy]


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.splitlines()[0])
    parser.add_argument("--only", default=None, help="comma-separated parts (see --list); heavy ones included")
    parser.add_argument("--all", action="store_true", help="every part the suite can run (hours on a CPU)")
    parser.add_argument("--quick", action="store_true", help="each part's small workload")
    parser.add_argument("--list", action="store_true", help="name every part and exit")
    parser.add_argument("--index", action="store_true", help="only rewrite RESULTS/README.md from the results there")
    parser.add_argument("--results", type=Path, default=RESULTS, help="where the parts write (default %(default)s)")
    parser.add_argument("--timeout", type=float, default=None, help="seconds per part before it is stopped")
    args = parser.parse_args(argv)
    names = args.only.split(",") if args.only else [n for n, p in PARTS.items() if not p.manual] if args.all \
        else DEFAULT
    unknown = [n for n in names if n not in PARTS]
    if unknown:
        parser.error(f"unknown part(s) {', '.join(unknown)}; choose from: {', '.join(PARTS)} (see --list).")
    args.parts = names
    return args


def run_part(part: Part, results: Path, quick: bool, timeout: float | None) -> dict:
    """Run one part as `python -m benchmarks.<name>`; its wall time and exit status (or why it was skipped)."""
    if part.manual:
        return {"status": "skipped", "why": part.manual}
    if not (HERE / f"{part.script}.py").exists():
        return {"status": "skipped", "why": f"benchmarks/{part.script}.py is not there yet"}
    out = results / part.name
    command = [sys.executable, "-m", f"benchmarks.{part.script}",
               *(part.args or default_args(part.script))(out, quick)]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
           "RAY_AUTH_MODE": "disabled", "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    print(f"== {part.name}: {' '.join(command[1:])}", flush=True)
    began = time.time()
    try:
        code = subprocess.run(command, cwd=REPO, env=env, timeout=timeout).returncode
    except subprocess.TimeoutExpired:
        code = "timeout"
    record = {"status": "ok" if code == 0 else f"failed ({code})", "seconds": round(time.time() - began, 1),
              "command": " ".join(command[1:]), "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    if code == 0 and part.script == "detox_default":  # it reports into its work directory
        work, profile = command[command.index("--workdir") + 1], command[command.index("--profile") + 1]
        report = Path(work) / f"benchmark-{profile}.json"
        shutil.copyfile(report, out.with_suffix(".json"))
        out.with_suffix(".md").write_text(detox_markdown(json.loads(report.read_text())))
    return record


def default_args(name: str) -> Callable[[Path, bool], list[str]]:
    """--out OUT and --quick, each only if the part's source names it (a part written elsewhere may take neither)."""
    source = (HERE / f"{name}.py").read_text()
    return lambda out, quick: ((["--out", str(out)] if '"--out"' in source else [])
                               + (["--quick"] if quick and '"--quick"' in source else []))


def detox_markdown(r: dict) -> str:
    lines = ["# Detox pipeline: cold and warm wall time and peak memory", "",
             f"Profile `{r.get('profile')}`, {r.get('cpus')} CPUs. Produced by `python -m benchmarks --only "
             f"detox_default` (benchmarks/detox_default.py); stage times from the task's progress callback, peak "
             f"memory the process tree's resident set sampled every 0.5 s.", ""]
    for phase in ("build_cold", "build_warm"):
        b = r.get(phase)
        if b:
            lines += [f"## {phase.replace('_', ' ')}: {b['wall_seconds']} s wall, peak {b['peak_tree_rss_mb']} MB", "",
                      "| stage | seconds |", "|---|---|"]
            lines += [f"| {s['stage']} | {s['seconds']} |" for s in b.get("stages", [])] + [""]
    for key, what in (("bench_run", "`bench run --methods all --task detox`"),
                      ("bench_rerun", "the same command again (everything cached)")):
        run = r.get(key)
        if run:
            lines += [f"{what}: {run['seconds']} s wall, peak {run['peak_tree_rss_mb']} MB, exit "
                      f"{run['returncode']}.", ""]
    phases = r.get("phases_seconds") or {}
    if phases:
        lines += ["| phase of the cold run | seconds |", "|---|---|"]
        lines += [f"| {name} | {seconds} |" for name, seconds in phases.items()] + [""]
    costs = r.get("rerlhf_per_method") or {}
    if costs:
        lines += ["| re-alignment | trial s | RL training s | worker peak MB |", "|---|---|---|---|"]
        lines += [f"| {name} | {c.get('trial_seconds')} | {c.get('train_seconds')} | {c.get('worker_peak_rss_mb')} |"
                  for name, c in costs.items()] + [""]
    lines += [f"- {note}" for note in r.get("notes", [])]
    return "\n".join(lines)


def headline(name: str, r: dict) -> str:
    """The part's headline ratio, from its JSON."""
    if "headline" in r:
        return r["headline"]
    try:
        if name == "generation":
            # the fastest engine whose samples the reference cannot tell apart (Mann-Whitney p >= 0.05)
            same = {c["configuration"] for c in r.get("same_distribution_check", [])
                    if (c["mann_whitney_p_vs_reference"] or 1.0) >= 0.05}
            best = max((row for row in r["rows"] if row["configuration"] in same),
                       key=lambda row: row["speedup_vs_transformers_batched_same_batch"]["median"])
            return (f"{best['configuration']} {best['speedup_vs_transformers_batched_same_batch']['median']}× "
                    f"batched transformers at the same distribution")
        if name == "reward_model_classes":
            rows = (r.get("backbone") or r)["rows"]
            return "; ".join(f"{row['head']} {row['slowdown_vs_linear']:.0f}× linear s/epoch" for row in rows
                             if row["head"] != "linear") + (f" ({r['backbone']['model']})" if r.get("backbone") else "")
        if name == "rl_step":
            # the fastest configuration, in CPU seconds (wall seconds on a shared host measure the queue for a core)
            best = max(r["steps"]["configs"].values(), key=lambda c: c["cpu:speedup_vs_today"]["median"])
            return f"{best['label']}: {best['cpu:speedup_vs_today']['median']}× today's CPU s per RLOO step"
        if name == "ray_overhead":
            return f"Ray Tune {r['tune_over_sequential']}× in-process sequential, {r['fits']} fits"
        if name == "synthetic_worlds":
            return f"{r['wall_s']} s for {len(r['worlds'])} worlds"
        if name == "detox_default":
            return (f"cold build {r['build_cold']['wall_seconds']:.0f} s vs warm {r['build_warm']['wall_seconds']:.0f} "
                    f"s ({r['build_cold']['wall_seconds'] / r['build_warm']['wall_seconds']:.0f}×)")
        if name == "detox_fast":
            return (f"cold {r['bench_run']['seconds'] / 60:.0f} min, warm rerun {r['bench_rerun']['seconds']:.0f} s, "
                    f"peak {r['bench_run']['peak_tree_rss_mb'] / 1024:.1f} GB")
        if name == "generation_ortgenai":
            return "; ".join(f"{k} {v['speedup_vs_transformers_batched']['median']}× batched transformers"
                             for k, v in r.items() if isinstance(v, dict) and "speedup_vs_transformers_batched" in v
                             and "onnx" in k)
    except (KeyError, TypeError, ValueError, ZeroDivisionError):
        pass
    return f"see {name}.md"


def when_and_where(name: str, r: dict, runs: dict, path: Path) -> tuple[str, str]:
    h = r.get("host")
    date = (h.get("date") if isinstance(h, dict) else None) or r.get("provenance", {}).get("started") \
        or runs.get(name, {}).get("date")
    if not date:
        log = subprocess.run(["git", "log", "-1", "--format=%cs", "--", str(path)], cwd=REPO, capture_output=True,
                             text=True)
        date = log.stdout.strip() or "?"
    if isinstance(h, dict):
        where = f"{h.get('cpus', '?')} CPUs" + (f", {h['device']}" if h.get("device") else "")
    elif isinstance(h, str):
        where = h
    else:
        where = r.get("provenance", {}).get("hardware") or (f"{r['cpus']} CPUs" if "cpus" in r else "?")
    return date[:10], where


def index(results: Path) -> str:
    """DIR/README.md: one line per part with results."""
    runs = json.loads((results / "runs.json").read_text()) if (results / "runs.json").exists() else {}
    lines = ["# Benchmark results", "",
             "Written by `python -m benchmarks` (benchmarks/__main__.py). Every ratio is measured side by side in "
             "one run on a shared machine; absolute seconds are only comparable within a part's own table. "
             "GPU figures come from `benchmarks/gpu.sh` (under `gpu/`).", "",
             "| part | what it measures | headline | date | host | GPU |", "|---|---|---|---|---|---|"]
    for name, part in PARTS.items():
        path = results / f"{name}.json"
        if not path.exists():
            why = runs.get(name, {}).get("why") or "not measured yet"
            lines.append(f"| {name} | {part.what} | – ({why}) | – | – | {gpu_status(part, results)} |")
            continue
        r = json.loads(path.read_text())
        date, where = when_and_where(name, r, runs, path)
        shown = f"[{name}]({name}.md)" if (results / f"{name}.md").exists() else name
        lines.append(f"| {shown} | {part.what} | {headline(name, r)} | {date} | {where} | "
                     f"{gpu_status(part, results)} |")
    if not (results / "gpu").is_dir():
        lines += ["", "GPU figures: still to be measured. No GPU machine has run `benchmarks/gpu.sh` yet (its "
                      "`--check` mode validates it on a CPU); when one does, commit what it writes under `gpu/` and "
                      "rerun `python -m benchmarks --index`."]
    elif (results / "gpu" / "README.md").exists():
        lines += ["", "GPU figures: [gpu/README.md](gpu/README.md) says what `benchmarks/gpu.sh` measured and how."]
    return "\n".join(lines) + "\n"


def gpu_status(part: Part, results: Path) -> str:
    if (results / "gpu" / f"{part.name}.json").exists():
        return f"[measured](gpu/{part.name}.json)"
    return "still to be measured (benchmarks/gpu.sh)" if part.on_gpu else "CPU only (not in gpu.sh)"


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    if args.list:
        for name, part in PARTS.items():
            kind = "manual" if part.manual else "heavy" if part.heavy else "default"
            print(f"{name:<22} {kind:<8} {part.what}")
        return 0
    args.results.mkdir(parents=True, exist_ok=True)
    if args.index:
        (args.results / "README.md").write_text(index(args.results))
        return 0
    runs_path = args.results / "runs.json"
    runs = json.loads(runs_path.read_text()) if runs_path.exists() else {}
    failed = []
    for name in args.parts:
        runs[name] = run_part(PARTS[name], args.results, args.quick, args.timeout)
        print(f"== {name}: {runs[name]['status']}", flush=True)
        failed += [name] if runs[name]["status"].startswith("failed") else []
        runs_path.write_text(json.dumps(runs, indent=1, sort_keys=True) + "\n")
    (args.results / "README.md").write_text(index(args.results))
    if failed:
        print(f"failed: {', '.join(failed)} (their output is above)", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
