"""Memory of a re-alignment trial (bench/lm/realign_trial.py), stage by stage: resident set before, peak during and
after each stage, and what stays alive after it (models, trainers, optimisers), with the release steps (bench/lm/
outcomes.py `release_memory` after training and evaluation, r̂ dropped before the evaluation, the evaluation holding
one policy at a time) and with the code before them (`--before`, run from an archive of that revision), on the
detox smoke profile; then the peak of each stage of the default profile on SmolLM2-135M, one stage per process (two
RLOO steps of the expert's recipe against an r̂ with its own frozen SmolLM2 backbone; the evaluation's policies and
judges on a few prompts, before and after), from which it projects the process-tree peak of two concurrent
default-profile trials plus the driver.

    python -m benchmarks.memory [--out benchmarks/results/memory] [--quick] [--workdir DIR]

Each measurement runs in its own process (`--child`), so imports and earlier stages do not blur it. --quick skips
the SmolLM2 stages. Writes OUT.json and OUT.md.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
PAGE = os.sysconf("SC_PAGE_SIZE")
SMOLLM2_PROMPTS = ["The weather today is", "You are such a", "I can't believe that people", "The best way to learn"]


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * PAGE / 2**20


class Sampler:
    """The resident set sampled every 5 ms on a thread: `peak` since the last `reset`."""

    def __init__(self):
        self.peak = rss_mb()
        self._stop = threading.Event()
        threading.Thread(target=self._run, daemon=True).start()

    def _run(self):
        while not self._stop.wait(0.005):
            self.peak = max(self.peak, rss_mb())

    def reset(self) -> float:
        now = rss_mb()
        self.peak = now
        return now


def census() -> dict:
    """Live objects that hold memory: language models (and their parameter MB), trainers, optimisers."""
    import torch
    from transformers import PreTrainedModel, Trainer

    models, trainers, optimisers, storages = 0, 0, 0, {}
    with warnings.catch_warnings():  # isinstance on torch's deprecated module aliases warns
        warnings.simplefilter("ignore")
        objects = [o for o in gc.get_objects() if isinstance(o, (PreTrainedModel, Trainer, torch.optim.Optimizer))]
    for obj in objects:
        if isinstance(obj, PreTrainedModel):
            models += 1
            for p in obj.parameters():
                storages[p.untyped_storage().data_ptr()] = p.untyped_storage().nbytes()
        elif isinstance(obj, Trainer):
            trainers += 1
        elif isinstance(obj, torch.optim.Optimizer):
            optimisers += 1
    return {"models": models, "model_mb": round(sum(storages.values()) / 2**20), "trainers": trainers,
            "optimisers": optimisers}


def instrument(stages: list, sampler: Sampler, module, name: str, label: str):
    """Wrap module.name so that each call records (label, RSS before, peak during, RSS after, census after)."""
    inner = getattr(module, name)

    def wrapped(*args, **kwargs):
        before = sampler.reset()
        out = inner(*args, **kwargs)
        after = rss_mb()
        stages.append({"stage": label, "rss_before_mb": round(before), "peak_mb": round(max(sampler.peak, after)),
                       "rss_after_mb": round(after), "alive_after": census()})
        sampler.reset()
        return out

    setattr(module, name, wrapped)


def child_trial(ref_path: str, method: str) -> dict:
    """One re-alignment trial (RLOO) of `method` on the built task at `ref_path`, in this process, with whichever
    `bench` this process imports (this tree's, or an older tree's: see `old_tree`); the artifacts it trains are
    removed afterwards, so the next measurement trains again."""
    from bench.data import TaskRef
    from bench.execution.fit_trial import TrialSpec
    from bench.lm import outcomes, realign, realign_trial, rlhf

    ref = TaskRef.from_json(json.loads(Path(ref_path).read_text()))
    cache_root = Path(ref.cache_root)
    existing = {kind: set(os.listdir(cache_root / kind)) if (cache_root / kind).is_dir() else set()
                for kind in ("realigned", "policy_samples")}
    stages: list[dict] = []
    sampler = Sampler()
    instrument(stages, sampler, realign_trial, "fit_reward", "refit r̂")
    instrument(stages, sampler, realign_trial, "best_of_n", "best-of-n scores")
    instrument(stages, sampler, rlhf, "train_policy", "RLOO training (inside realign)")
    instrument(stages, sampler, realign, "realign", "re-RLHF (training + release)")
    instrument(stages, sampler, outcomes, "cached_judged_samples", "evaluation (sample, log-probs, judges)")
    spec = realign_trial.RealignSpec(TrialSpec(method, {}, 0, ref), "rloo")
    with tempfile.TemporaryDirectory() as tmp:
        payload = realign_trial.run_realign_trial(spec, Path(tmp) / "result.json")
    end = rss_mb()
    for kind, names in existing.items():
        for name in set(os.listdir(cache_root / kind)) - names:  # the artifact and its lock file
            path = cache_root / kind / name
            shutil.rmtree(path) if path.is_dir() else path.unlink()
    return {"method": method, "code": str(Path(realign_trial.__file__).parents[2]), "stages": stages,
            "rss_end_mb": round(end),
            "worker_peak_rss_mb": payload.get("worker_peak_rss_mb"), "status": payload.get("status"),
            "error": payload.get("error"), "numbers": numbers(payload)}


def numbers(payload: dict) -> str:
    """The payload without what legitimately differs between runs (times, memory): the JSON that must not change."""
    drop = {"timing", "seconds", "worker_peak_rss_mb"}
    kept = {k: v for k, v in payload.items() if k not in drop}
    if "training" in kept:
        kept["training"] = {k: v for k, v in kept["training"].items() if k != "build_seconds"}
        kept["training"]["recipe"] = {k: v for k, v in kept["training"]["recipe"].items() if k != "train_seconds"}
    return json.dumps(kept, sort_keys=True)


def smollm2_dir() -> str | None:
    """The SmolLM2-135M HF directory converted from the PyPI GGUF, if a run has made one (runs/cache/gguf_model)."""
    root = REPO / "runs" / "cache" / "gguf_model"
    found = sorted(p for p in root.glob("*/model.safetensors")) if root.is_dir() else []
    return str(found[0].parent) if found else None


def child_smollm2_train(model_dir: str, release: bool) -> dict:
    """Two RLOO steps of the default recipe on SmolLM2 against an r̂ with its own frozen SmolLM2 backbone (what a
    frozen-LM method's reward loads): peak during training, RSS after, and after dropping r̂ + `release_memory`."""
    import numpy as np
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from bench.kit.reward_models import lm_features
    from bench.lm import outcomes, realign, rlhf

    sampler = Sampler()
    start = sampler.reset()
    backbone = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    tok = AutoTokenizer.from_pretrained(model_dir)
    head = np.random.default_rng(0).standard_normal(backbone.config.hidden_size)

    class Reward:  # a linear head on the frozen backbone's features, as a frozen-LM method's r̂ scores new texts
        def score(self, prompts, completions):
            return lm_features(backbone, tok, prompts, completions, max_length=128) @ head

    reward = Reward()

    loaded = rss_mb()
    recipe = rlhf.Recipe(steps=2)  # the default profile's recipe, two of its 24 steps
    prompts = SMOLLM2_PROMPTS * 2
    with tempfile.TemporaryDirectory() as tmp:
        sampler.reset()
        rlhf.train_policy(Path(tmp), model_dir, realign.BatchNormalisedReward(reward, 1.0), prompts, recipe)
        peak, after = round(max(sampler.peak, rss_mb())), round(rss_mb())
    alive = census()
    if release:
        del backbone, reward
        outcomes.release_memory()
    return {"stage": "RLOO + LoRA training (2 steps), r̂ backbone loaded", "rss_start_mb": round(start),
            "rss_with_rhat_mb": round(loaded), "peak_mb": peak, "rss_after_mb": after, "alive_after": alive,
            "rss_after_release_mb": round(rss_mb()) if release else None}


def child_smollm2_eval(model_dir: str, cache_root: str) -> dict:
    """The evaluation of a re-aligned SmolLM2 (bench/lm/outcomes.py's build): policy and π₀ loaded, both judges,
    k = 2 samples of 20 tokens for a few prompts at the default batch size, log-probs under both."""
    from bench.lm import outcomes
    from bench.lm.judges import make_judge
    from bench.storage.artifacts import ArtifactCache
    from tasks.detox.config import parse_judge

    cache = ArtifactCache(cache_root)
    sampler = Sampler()
    start = sampler.reset()
    judges = {name: (spec, lambda s=spec: make_judge(s, cache))
              for name, spec in (("R*", parse_judge("profanity_check")), ("eval", parse_judge("bilstm:toxic")))}
    with tempfile.TemporaryDirectory() as tmp:
        # A copy of π₀ stands in for the re-aligned policy: a different directory, so both load, as in a trial.
        policy_dir = shutil.copytree(model_dir, Path(tmp) / "policy")
        out = ArtifactCache(Path(tmp) / "cache")
        sampler.reset()
        outcomes.cached_judged_samples(out, str(policy_dir), {"copy": 1}, model_dir, {"base": 1}, judges,
                                       SMOLLM2_PROMPTS * 4, 2, 20, 0, 16)
        peak, after = round(max(sampler.peak, rss_mb())), round(rss_mb())
    getattr(outcomes, "release_memory", gc.collect)()  # an older tree has no release_memory
    return {"stage": "evaluation: policy + π₀ + judges, 16 prompts x 2 samples", "rss_start_mb": round(start),
            "peak_mb": peak, "rss_after_mb": after, "rss_after_release_mb": round(rss_mb())}


def old_tree(workdir: Path, rev: str) -> Path:
    """The repository at `rev` (before the release steps) in workdir/old, with this file added, so that a child run
    there imports that revision's `bench` (the current directory comes first on sys.path)."""
    tree = workdir / f"old-{rev}"
    if not tree.exists():
        tree.mkdir()
        archive = subprocess.run(["git", "archive", rev], cwd=REPO, capture_output=True, check=True).stdout
        subprocess.run(["tar", "-x", "-C", str(tree)], input=archive, check=True)
        shutil.copy(__file__, tree / "benchmarks" / "memory.py")
    return tree


def child_judges(cache_root: str) -> dict:
    """What the evaluation's judges cost resident, and what dropping them gives back: the case for (or against)
    keeping them across the trials of one worker."""
    import torch  # noqa: F401  (imported first, as in a trial, so that its own pages are not counted)

    from bench.lm import outcomes
    from bench.lm.judges import make_judge
    from bench.storage.artifacts import ArtifactCache

    cache = ArtifactCache(cache_root)
    start = rss_mb()
    profanity = make_judge({"type": "profanity_check"}, cache)
    profanity.p_toxic(["you are a kind person"])
    with_profanity = rss_mb()
    bilstm = make_judge({"type": "bilstm", "reduce": "toxic"}, cache)
    bilstm.p_toxic(["you are a kind person"] * 16)
    with_both = rss_mb()
    del bilstm, profanity
    outcomes.release_memory()
    return {"profanity_check_mb": round(with_profanity - start), "bilstm_mb": round(with_both - with_profanity),
            "given_back_by_dropping_both_mb": round(with_both - rss_mb())}


def run_child(args: list[str], env: dict | None = None, timeout: float = 1800, cwd: Path = REPO) -> dict:
    proc = subprocess.run([sys.executable, "-m", "benchmarks.memory", "--child", *args], cwd=cwd,
                          env={**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1",
                               "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", **(env or {})},
                          capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"child {args} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def build_smoke(workdir: Path) -> Path:
    """The detox smoke task built into workdir/cache (once); its TaskRef at workdir/ref.json."""
    from bench import registry
    from bench.storage.artifacts import ArtifactCache

    ref = workdir / "ref.json"
    if not ref.exists():
        task = registry.get_task("detox")
        data = task.build("smoke", task.config("smoke"), ArtifactCache(workdir / "cache"), progress=lambda *a: None)
        ref.write_text(json.dumps(data.ref.to_json()))
    return ref


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.memory", description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=HERE / "results" / "memory")
    parser.add_argument("--quick", action="store_true", help="smoke profile only (no SmolLM2 stages)")
    parser.add_argument("--workdir", type=Path, default=None, help="where the smoke task is built (kept)")
    parser.add_argument("--methods", default="bradley_terry,implicit")
    parser.add_argument("--before", default="7984d83", help="the revision before the release steps (compared)")
    parser.add_argument("--child", nargs="+", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        kind, *rest = args.child
        result = {"trial": lambda: child_trial(rest[0], rest[1]),
                  "build": lambda: {"ref": str(build_smoke(Path(rest[0])))},
                  "smollm2_train": lambda: child_smollm2_train(rest[0], rest[1] == "1"),
                  "smollm2_eval": lambda: child_smollm2_eval(rest[0], rest[1]),
                  "judges": lambda: child_judges(rest[0])}[kind]()
        print(json.dumps(result))
        return 0
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="benchmarks-memory-"))
    workdir.mkdir(parents=True, exist_ok=True)
    began = time.time()
    ref = run_child(["build", str(workdir)])["ref"]
    report: dict = {"host": {"cpus": os.cpu_count(), "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())},
                    "smoke": {}}
    before = old_tree(workdir, args.before)
    report["before"] = args.before
    for method in args.methods.split(","):
        old = run_child(["trial", ref, method], cwd=before)
        new = run_child(["trial", ref, method])
        arena = run_child(["trial", ref, method], env={"MALLOC_ARENA_MAX": "2"})
        report["smoke"][method] = {"old": old, "new": new, "new_malloc_arena_max_2": arena,
                                   "identical_numbers": old["numbers"] == new["numbers"] == arena["numbers"]}
        for run in (old, new, arena):
            run.pop("numbers")
    model_dir = smollm2_dir()
    if not args.quick and model_dir:
        cache_root = str(REPO / "runs" / "cache")
        report["smollm2"] = {"model_dir": model_dir,
                            "train": run_child(["smollm2_train", model_dir, "1"]),
                            "eval_before": run_child(["smollm2_eval", model_dir, cache_root], cwd=before),
                            "eval": run_child(["smollm2_eval", model_dir, cache_root])}
        report["judges"] = run_child(["judges", cache_root])
        report["projection"] = projection(report["smollm2"])
    elif not args.quick:
        report["smollm2"] = {"skipped": "no SmolLM2 directory under runs/cache/gguf_model (run the default build)"}
    report["seconds"] = round(time.time() - began)
    report["headline"] = headline(report)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(report, indent=1) + "\n")
    args.out.with_suffix(".md").write_text(markdown(report))
    print(markdown(report))
    return 0


DRIVER_MB = 600  # the driver's resident set in the last `bench run --task detox` (issue #13)
RAY_MB = 500  # Ray's own processes (GCS, raylet, dashboard, its agents, monitors): 496 MB by ps on a live run


def projection(smollm2: dict) -> dict:
    """Two concurrent trials, each at the larger of its training and evaluation peaks, plus the driver and Ray. The
    measured training holds one SmolLM2 for r̂ (a frozen-LM method's backbone); the implicit method's r̂ holds two
    (π₀ and π_E), so its training peak is one model more."""
    t = smollm2["train"]
    model_mb = t["rss_with_rhat_mb"] - t["rss_start_mb"]
    worker = max(t["peak_mb"], smollm2["eval"]["peak_mb"])
    worst = max(t["peak_mb"] + model_mb, smollm2["eval"]["peak_mb"])
    return {"worker_peak_mb": worker, "implicit_worker_peak_mb": worst, "model_mb": model_mb, "driver_mb": DRIVER_MB,
            "ray_mb": RAY_MB, "tree_peak_mb": 2 * worker + DRIVER_MB + RAY_MB,
            "tree_peak_two_implicit_mb": 2 * worst + DRIVER_MB + RAY_MB}


def headline(r: dict) -> str:
    parts = []
    for method, m in r["smoke"].items():
        same = "identical" if m["identical_numbers"] else (
            "differ in train_seconds only (see note)" if m.get("identical_numbers_note") else "DIFFER")
        parts.append(f"smoke {method}: end RSS {m['old']['rss_end_mb']} → {m['new']['rss_end_mb']} MB, numbers {same}")
    if "projection" in r:
        parts.append(f"projected tree peak, 2 default trials + driver: {r['projection']['tree_peak_mb']} MB")
    return "; ".join(parts)


def markdown(r: dict) -> str:
    lines = ["# Memory of a re-alignment trial", "", f"{r['host']['cpus']} CPUs, {r['host']['date']}. Produced by "
             "`python -m benchmarks --only memory` (benchmarks/memory.py). RSS from /proc/self/statm, peaks sampled "
             "every 5 ms on a thread; each row is one process. *old*: the code at revision "
             f"{r.get('before')} (before the release steps); *new*: this tree (bench/lm/outcomes.py `release_memory` "
             "after training and evaluation, r̂ dropped before evaluation, one policy at a time in the evaluation).",
             ""]
    for method, m in r["smoke"].items():
        lines += [f"## smoke profile, `{method}` (RLOO, all weights, β = 0.1: TRL's reference copy)", "",
                  f"Payload numbers old vs new vs new with MALLOC_ARENA_MAX=2: "
                  f"{'byte-identical' if m['identical_numbers'] else 'DIFFERENT'}."
                  + (f" {m['identical_numbers_note']}" if m.get("identical_numbers_note") else ""), "",
                  "| variant | stage | RSS before | peak | RSS after | alive: models / MB / trainers / optimisers |",
                  "|---|---|---|---|---|---|"]
        for variant in ("old", "new", "new_malloc_arena_max_2"):
            run = m[variant]
            for s in run["stages"]:
                a = s["alive_after"]
                lines.append(f"| {variant} | {s['stage']} | {s['rss_before_mb']} | {s['peak_mb']} | "
                             f"{s['rss_after_mb']} | {a['models']} / {a['model_mb']} / {a['trainers']} / "
                             f"{a['optimisers']} |")
            lines.append(f"| {variant} | end of trial | | ru_maxrss {run['worker_peak_rss_mb']} | {run['rss_end_mb']} "
                         f"| |")
        lines.append("")
    s = r.get("smollm2")
    if s and "train" in s:
        t, e, b, p = s["train"], s["eval"], s["eval_before"], r["projection"]
        lines += ["## SmolLM2-135M (default profile), one stage per process", "",
                  "| stage | RSS at start | peak | RSS after | after release |", "|---|---|---|---|---|",
                  f"| {t['stage']} (RSS with r̂ loaded: {t['rss_with_rhat_mb']}) | {t['rss_start_mb']} | "
                  f"{t['peak_mb']} | {t['rss_after_mb']} | {t['rss_after_release_mb']} |",
                  f"| {e['stage']} | {e['rss_start_mb']} | {e['peak_mb']} | {e['rss_after_mb']} | "
                  f"{e['rss_after_release_mb']} |",
                  f"| the same evaluation, code at {r.get('before')} (both policies at once) | {b['rss_start_mb']} | "
                  f"{b['peak_mb']} | {b['rss_after_mb']} | {b['rss_after_release_mb']} |", "",
                  f"Projected tree peak: 2 × {p['worker_peak_mb']} MB (a worker's larger stage peak) + driver "
                  f"{p['driver_mb']} MB (issue #13's figure) + Ray's processes {p['ray_mb']} MB (496 MB by ps on a "
                  f"live `bench run --task detox`, not by this script) = **{p['tree_peak_mb']} MB**. Two `implicit` "
                  f"trials at once (r̂ holds π₀ and π_E: one {p['model_mb']} MB model more in training): "
                  f"2 × {p['implicit_worker_peak_mb']} + {p['driver_mb']} + {p['ray_mb']} = "
                  f"**{p['tree_peak_two_implicit_mb']} MB**.", ""]
    elif s:
        lines += [f"SmolLM2 stages: skipped ({s['skipped']}).", ""]
    lines += [r["notes"], ""] if r.get("notes") else []
    j = r.get("judges")
    if j:
        lines += [f"Judges (not cached across a worker's trials): alt-profanity-check costs {j['profanity_check_mb']} "
                  f"MB once imported and stays loaded with its module anyway; the BiLSTM {j['bilstm_mb']} MB; "
                  f"dropping both gives back {j['given_back_by_dropping_both_mb']} MB. A module-level cache would "
                  "save a few seconds of loading per trial (of 20+ minutes) and hold the judges through the next "
                  "trial's training, the stage that sets the peak; with an hf_classifier judge (the pythia "
                  "profiles) that is a RoBERTa more in training. Left out.", ""]
    lines += ["Not measured: a whole default-profile trial (20+ minutes) and so its end-to-end peak inside a Ray "
              "worker, whose baseline (Ray's own imports, the task's data and feature tables) sits above these "
              "processes' (about 250-400 MB at the start here), so the projection is a lower bound by that much per "
              "worker; the default trial's refit and best-of-n stages (seconds, on cached features); Ray's processes "
              "(taken from ps, above); the 24-step training peak (two steps here: LoRA's optimiser state is "
              "allocated at step 1, and activations do not grow with steps).", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
