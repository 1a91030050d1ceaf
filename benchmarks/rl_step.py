"""One RLOO step of the detox expert's recipe (bench/lm/rlhf.py `train_policy`, TRL 1.16 `RLOOTrainer`) broken into
its parts, today's recipe beside the opt-in speed settings; and whether the faster expert is still detoxified.

    OMP_NUM_THREADS=1 python -m benchmarks.rl_step [--profile default] [--repeats 3] [--warmup 1] [--steps 4]
        [--configs today,bf16,no_ckpt,fast] [--phases steps,detox] [--eval-prompts 200] [--cache DIR]
        [--out benchmarks/results/rl_step] [--quick]

steps: each run trains π₀ (the profile's base model) with the profile's expert recipe, changed only in its speed
settings, for --warmup + --steps steps on the task's training prompts with R* as the reward, in a process of its own
(so every run loads its model, and its peak memory is its own). Every repeat runs every configuration once, in an
order rotated by one per repeat. A run's figure is the median of its measured steps; the table gives the median
[min–max] over repeats, and speed-ups are medians of per-repeat ratios.

How a step is split: class-level wrappers around TRL's methods time, per optimiser step, `_generate` (generation:
tokenise, merge adapters for merged-bf16 rollouts, sample, decode), the first and second
`_get_per_token_logps_and_entropies` call after it outside `compute_loss` (the policy's log-probs, then the
reference's: the same model with its LoRA adapters disabled; with `one_policy_pass` the policy's pass runs with
gradients and `compute_loss` reuses it, so its cost moves from forward to policy_logprobs), `_calculate_rewards`
(the judge), `compute_loss` (forward), `training_step` minus `_prepare_inputs` and `compute_loss` (backward), and
accelerate's `AcceleratedOptimizer.step` (optimiser). A step runs from the end of the previous one (the trainer's
`on_step_end`) to its own end; "other" is what the parts leave
(advantages, gradient clipping, scheduler, logging, data loading).

detox: the experts of --detox-configs (default: today's recipe and the fastest one, the profile's recipe plus
`one_pass`'s settings), each cached under the task's own key, judged with π₀ by both judges on the first
--eval-prompts evaluation prompts (test split, then held-out prompts), k samples each, by bench/lm/outcomes.py; toxic
rates with Wilson 95% CIs.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

from benchmarks import RESULTS, fmt, host, host_line, rotated, spread, write

os.environ.setdefault("OMP_NUM_THREADS", "1")
for _name in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
    os.environ.setdefault(_name, "1")

CONFIGS = {  # name -> (Recipe speed settings, label)
    "today": ({}, "fp32, checkpointing (today)"),
    "bf16": ({"precision": "bf16"}, "bf16 autocast, checkpointing"),
    "no_ckpt": ({"gradient_checkpointing": False}, "fp32, no checkpointing"),
    "fast": ({"precision": "bf16", "gradient_checkpointing": False}, "bf16 autocast, no checkpointing"),
    "merged": ({"rollouts": "merged-bf16"}, "fp32, checkpointing, merged-bf16 rollouts"),
    "fastest": ({"precision": "bf16", "gradient_checkpointing": False, "rollouts": "merged-bf16"},
                "bf16 autocast, no checkpointing, merged-bf16 rollouts"),
    "one_pass": ({"precision": "bf16", "gradient_checkpointing": False, "rollouts": "merged-bf16",
                  "one_policy_pass": True}, "bf16 autocast, no checkpointing, merged-bf16 rollouts, one policy pass"),
}
PARTS = ("generation", "policy_logprobs", "reference_logprobs", "reward", "forward", "backward", "optimiser", "other")


# ------------------------------------------------------------------------------------------------ the task's pieces


def task_pieces(profile: str, cache_root: Path) -> dict:
    """The profile's π₀ directory and identity, R*, its training prompts, evaluation prompts and recipe settings."""
    from bench import registry
    from bench.progress import Stages
    from bench.storage.artifacts import ArtifactCache
    from tasks.detox import stages
    from tasks.detox.config import recipe_settings

    cfg = registry.get_task("detox").config(profile)
    build = stages.Build(cfg, ArtifactCache(cache_root), Stages(lambda stage, done, total: None))
    stages.prompts(build)
    stages.base_model(build)
    heldout = stages.heldout_prompts(cfg, build.cache, build.splits)
    return {"cfg": cfg, "build": build, "recipe": recipe_settings(cfg),
            "eval_prompts": list(build.splits["test"]) + heldout}


# ------------------------------------------------------------------------------------------------ one timed run


@contextlib.contextmanager
def step_timer(steps: list[dict]):
    """Wrap TRL's and accelerate's methods (class level) so that each optimiser step's parts land in `steps`."""
    from accelerate.optimizer import AcceleratedOptimizer
    from trl import RLOOTrainer

    current: dict = defaultdict(float)  # part -> wall seconds; "cpu:" + part -> CPU seconds of this thread
    state = {"logprob_calls": 0, "running": []}
    originals = []

    def wrap(cls, name, part):
        original = getattr(cls, name)
        originals.append((cls, name, original))

        def timed(*args, **kwargs):
            started, cpu = time.perf_counter(), time.thread_time()
            state["running"].append(name)
            if name == "_generate":
                state["logprob_calls"] = 0
            try:
                return original(*args, **kwargs)
            finally:
                state["running"].pop()
                key = part() if callable(part) else part
                if key:
                    current[key] += time.perf_counter() - started
                    current["cpu:" + key] += time.thread_time() - cpu

        setattr(cls, name, timed)

    def logprob_part():
        if "compute_loss" in state["running"]:
            return None  # counted as forward
        state["logprob_calls"] += 1  # since the generation: the policy's, then the reference's
        return "policy_logprobs" if state["logprob_calls"] == 1 else "reference_logprobs"

    wrap(RLOOTrainer, "_generate", "generation")
    wrap(RLOOTrainer, "_get_per_token_logps_and_entropies", logprob_part)
    wrap(RLOOTrainer, "_calculate_rewards", "reward")
    wrap(RLOOTrainer, "compute_loss", "forward")
    wrap(RLOOTrainer, "_prepare_inputs", "_prepare")
    wrap(RLOOTrainer, "training_step", "_training_step")
    wrap(AcceleratedOptimizer, "step", "optimiser")
    last_end = [time.perf_counter(), time.thread_time()]

    def step_end(done: int, total: int) -> None:
        now = (time.perf_counter(), time.thread_time())
        row = {"step": done}
        for prefix, total_seconds in (("", now[0] - last_end[0]), ("cpu:", now[1] - last_end[1])):
            parts = {p: current.get(prefix + p, 0.0) for p in ("_training_step", "_prepare", *PARTS)}
            parts["backward"] = parts["_training_step"] - parts["_prepare"] - parts["forward"]
            row[prefix + "seconds"] = total_seconds
            row.update({prefix + p: parts[p] for p in PARTS if p != "other"})
            row[prefix + "other"] = total_seconds - sum(parts[p] for p in PARTS if p != "other")
        steps.append(row)
        current.clear()
        last_end[:] = now

    try:
        yield step_end
    finally:
        for cls, name, original in reversed(originals):
            setattr(cls, name, original)


def one_run(profile: str, config: str, warmup: int, steps: int, cache_root: Path) -> dict:
    """Train for warmup + steps steps with `config`'s settings; the per-step parts and the peak memory."""
    import torch

    torch.set_num_threads(1)
    from bench.lm import rlhf

    pieces = task_pieces(profile, cache_root)
    build = pieces["build"]
    recipe = rlhf.recipe_from({**pieces["recipe"], **CONFIGS[config][0], "steps": warmup + steps})
    judge = build.reward_judge

    def reward(prompts, completions):
        return [-p for p in judge.p_toxic(completions)]

    rows: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="rl_step-") as out, step_timer(rows) as step_end:
        started = time.perf_counter()
        logged = rlhf.train_policy(Path(out), build.base[0], reward, build.splits["train"], recipe, step_end)
        seconds = time.perf_counter() - started
    return {"config": config, "recipe": rlhf.recipe_key(recipe), "steps": rows[warmup:], "warmup": rows[:warmup],
            "train_policy_seconds": round(seconds, 2),
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
            "kl": [row.get("kl") for row in logged]}


def run_in_process(profile: str, config: str, warmup: int, steps: int, cache_root: Path) -> dict:
    with tempfile.NamedTemporaryFile(suffix=".json") as fh:
        cmd = [sys.executable, "-m", "benchmarks.rl_step", "--one", config, "--profile", profile, "--warmup",
               str(warmup), "--steps", str(steps), "--cache", str(cache_root), "--one-out", fh.name]
        done = subprocess.run(cmd, capture_output=True, text=True, cwd=Path(__file__).resolve().parent.parent)
        if done.returncode != 0:
            raise SystemExit(f"run {config} failed:\n{done.stderr[-3000:]}")
        return json.loads(Path(fh.name).read_text())


# ------------------------------------------------------------------------------------------------ phases


def measure_steps(args, cache_root: Path) -> dict:
    runs: dict[str, list[dict]] = {c: [] for c in args.configs}
    for repeat in range(args.repeats):
        for config in rotated(args.configs, repeat):
            run = run_in_process(args.profile, config, args.warmup, args.steps, cache_root)
            runs[config].append(run)
            med = statistics.median(s["seconds"] for s in run["steps"])
            print(f"repeat {repeat} {config:<8} step {med:.2f} s, peak {run['peak_rss_mb']} MB", flush=True)
    table = {}
    for config, done in runs.items():
        per_run = {prefix + part: [statistics.median(s[prefix + part] for s in run["steps"]) for run in done]
                   for part in ("seconds", *PARTS) for prefix in ("", "cpu:")}
        table[config] = {"label": CONFIGS[config][1], "recipe_settings": CONFIGS[config][0],
                         **{part: spread(values, 3) for part, values in per_run.items()},
                         "peak_rss_mb": spread([run["peak_rss_mb"] for run in done], 0)}
    reference = args.configs[0]
    for config in args.configs:
        for prefix in ("", "cpu:"):
            ratios = [statistics.median(s[prefix + "seconds"] for s in a["steps"]) /
                      statistics.median(s[prefix + "seconds"] for s in b["steps"])
                      for a, b in zip(runs[reference], runs[config])]
            table[config][prefix + "speedup_vs_" + reference] = spread(ratios, 2)
    return {"configs": table, "runs": runs, "reference": reference,
            "args": {k: getattr(args, k) for k in ("profile", "repeats", "warmup", "steps")}}


def detox_check(args, cache_root: Path) -> dict:
    """The experts of --detox-configs vs π₀ on the first --eval-prompts evaluation prompts, under both judges."""
    import torch

    torch.set_num_threads(1)
    from bench.lm import outcomes, rlhf
    from bench.lm.toxicity import toxicity_rate

    pieces = task_pieces(args.profile, cache_root)
    build, cfg = pieces["build"], pieces["cfg"]
    prompts = pieces["eval_prompts"][: args.eval_prompts]
    policies = {"base": build.base}
    experts = {}
    for name in args.detox_configs:
        settings = CONFIGS[name][0]
        recipe = rlhf.recipe_from({**pieces["recipe"], **settings})
        started = time.time()
        art = rlhf.train_expert(build.base[0], build.base[1], build.reward_spec, build.reward_judge,
                                build.splits["train"], recipe, build.cache)
        trained = art.read_json("recipe.json")
        curve = art.read_json("curve.json")
        experts[name] = {"artifact": art.key, "recipe": rlhf.recipe_key(recipe),
                         "train_seconds": trained["train_seconds"], "seconds_per_step":
                         round(trained["train_seconds"] / recipe.steps, 2),
                         "built_now": time.time() - started > 5, "curve_summary": rlhf.curve_summary(curve),
                         "last_kl": curve[-1].get("kl")}
        policies[name] = (str(art.path / "model"), {"artifact": art.key})
    rates = {}
    for name, (directory, identity) in policies.items():
        record = outcomes.cached_judged_samples(
            build.cache, directory, identity, None, None, build.judges, prompts, cfg.eval_samples, cfg.max_new_tokens,
            cfg.data_seed, cfg.eval_batch_size).read_json("samples.json")
        rates[name] = {judge: toxicity_rate(outcomes.samples_of(record, judge)).as_dict() for judge in build.judges}
    separated = {name: {judge: rates[name][judge]["ci"][1] < rates["base"][judge]["ci"][0] for judge in build.judges}
                 for name in experts}
    return {"eval_prompts": len(prompts), "k": cfg.eval_samples, "max_new_tokens": cfg.max_new_tokens,
            "experts": experts, "toxic_rate": rates, "separated_from_base": separated}


# ------------------------------------------------------------------------------------------------ report


def markdown(result: dict) -> str:
    lines = ["# RLOO step: where the time goes, before and after", ""]
    if "steps" in result:
        s = result["steps"]
        a = s.get("args", result["args"])  # results written before steps kept their own arguments
        ref = s["reference"]
        lines += [f"The detox `{a['profile']}` profile's expert recipe ({result['recipe_text']}) on the task's "
                  f"training prompts with R* as reward; each run {a['warmup']} warm-up + {a['steps']} measured "
                  f"steps in its own process, {a['repeats']} repeats, configurations interleaved in a rotated "
                  f"order. Seconds per step: median [min–max] over repeats of each run's median step; speed-up: "
                  f"median [min–max] of per-repeat ratios to `{ref}`. Peak memory: the run's whole process "
                  f"(maximum resident set). Wall seconds count the time spent waiting for a core on this shared "
                  f"machine; CPU seconds (the training thread's `time.thread_time`) count the work. "
                  f"{host_line(result.get('steps_host', result['host']))}", ""]
        for prefix, title in (("cpu:", "CPU seconds per step"), ("", "Wall seconds per step")):
            lines += [f"**{title}**", "",
                      "| configuration | step | × " + ref + " | " + " | ".join(PARTS) + " | peak RSS (MB) |",
                      "|---" * (len(PARTS) + 4) + "|"]
            for name, row in s["configs"].items():
                cells = [fmt(row[prefix + p], 2) for p in PARTS]
                lines.append(f"| {row['label']} | {fmt(row[prefix + 'seconds'], 2)} | "
                             f"{fmt(row[prefix + 'speedup_vs_' + ref], 2)}× | " + " | ".join(cells)
                             + f" | {row['peak_rss_mb']['median']:.0f} |")
            lines.append("")
    if "detox" in result:
        d = result["detox"]
        lines += ["## Still detoxified?", "",
                  f"Toxic rate (P_toxic ≥ 0.5) with Wilson 95% CIs on the first {d['eval_prompts']} evaluation "
                  f"prompts (test split, then held-out prompts; the task uses 463) × {d['k']} samples of "
                  f"{d['max_new_tokens']} tokens, sampled and judged by bench/lm/outcomes.py. Separated: the "
                  f"expert's CI lies wholly below π₀'s.", "",
                  "| policy | s/step (training) | " + " | ".join(f"toxic rate, {j}" for j in d["toxic_rate"]["base"])
                  + " | separated from π₀ | KL (last step, TRL) |", "|---|---|---|---|---|---|"]
        for name in ("base", *d["experts"]):
            cells = [f"{r['value']:.3f} [{r['ci'][0]:.3f}, {r['ci'][1]:.3f}]" for r in d["toxic_rate"][name].values()]
            if name == "base":
                lines.append("| π₀ | – | " + " | ".join(cells) + " | – | – |")
                continue
            e = d["experts"][name]
            sep = ", ".join(f"{j}: {'yes' if v else 'no'}" for j, v in d["separated_from_base"][name].items())
            kl = f"{e['last_kl']:.3f}" if e["last_kl"] is not None else "–"
            lines.append(f"| π_E {name} ({CONFIGS[name][1]}) | {e['seconds_per_step']} | " + " | ".join(cells)
                         + f" | {sep} | {kl} |")
        lines += ["", f"Not measured: {d['not_done']}.", ""] if d.get("not_done") else [""]
    lines.append(f"Detox check: {host_line(result['host'])} Produced by `benchmarks/rl_step.py`."
                 if "detox" in result else "Produced by `benchmarks/rl_step.py`.")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", default="default")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--configs", default=",".join(CONFIGS), help=f"of {', '.join(CONFIGS)}; the first is "
                                                                     "the reference of the speed-ups")
    parser.add_argument("--phases", default="steps,detox")
    parser.add_argument("--detox-configs", default="today,one_pass", help="experts the detox phase trains and judges")
    parser.add_argument("--eval-prompts", type=int, default=200)
    parser.add_argument("--cache", type=Path, help="artifact cache (π₀, prompts, experts, judged samples); "
                                                     "default: a folder per profile under the temp directory")
    parser.add_argument("--out", type=Path, default=RESULTS / "rl_step")
    parser.add_argument("--quick", action="store_true", help="the smoke profile (tiny model), 2 measured steps")
    parser.add_argument("--one", help=argparse.SUPPRESS)
    parser.add_argument("--one-out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.one:  # a single timed run, in its own process
        args.one_out.write_text(json.dumps(one_run(args.profile, args.one, args.warmup, args.steps, args.cache)))
        return 0
    if args.quick:
        args.profile, args.steps = "smoke", 2
    args.configs, args.detox_configs = args.configs.split(","), args.detox_configs.split(",")
    unknown = set(args.configs + args.detox_configs) - set(CONFIGS)
    if unknown:
        parser.error(f"unknown configurations {sorted(unknown)}; choose from {', '.join(CONFIGS)}")
    cache_root = (args.cache or Path(tempfile.gettempdir()) / f"rl_step-{args.profile}" / "cache").resolve()
    load_before = os.getloadavg()
    result: dict = {"args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()
                             if k not in ("one", "one_out")}}
    from bench import registry
    from tasks.detox.config import recipe_settings

    recipe = recipe_settings(registry.get_task("detox").config(args.profile))
    result["recipe"] = recipe
    result["recipe_text"] = (f"{recipe['algorithm'].upper()}, {recipe['prompts_per_step']} prompts × "
                             f"{recipe['generations']} samples × {recipe['max_completion_length']} tokens, LoRA r "
                             f"{recipe['lora_r']}, β {recipe['beta']}")
    phases = args.phases.split(",")
    previous = args.out.with_suffix(".json")
    if previous.exists():  # what an earlier invocation measured for the other phase stays
        kept = json.loads(previous.read_text())
        result.update({k: kept[k] for k in ("steps", "detox", "steps_host") if k in kept and k not in phases})
    if "steps" in phases:
        result["steps"] = measure_steps(args, cache_root)
        result["steps_host"] = host("cpu", load_before)
    if "detox" in phases:
        result["detox"] = detox_check(args, cache_root)
    result["host"] = host("cpu", load_before)
    write(args.out, result, markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
