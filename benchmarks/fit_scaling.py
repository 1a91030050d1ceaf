"""How an IRL fit's time grows with the number of preference pairs: `bradley_terry` and `max_margin` on the
synthetic task, 1k → 16k training pairs, a fixed number of epochs, and the log-log slope with its 95% CI.

    OMP_NUM_THREADS=1 nice python -m benchmarks.fit_scaling [--profile default] [--sizes 1000,2000,4000,8000,16000]
        [--methods bradley_terry,max_margin] [--epochs 5] [--repeats 3] [--out benchmarks/results/fit_scaling]

One world is built from the profile with enough prompts for the largest size (only `n_prompts` changes); each size
fits the first N training pairs of it (whole prompts first), validating on the same validation pairs every time.
Each fit runs exactly --epochs epochs (patience above it), on the device chosen at run time (CUDA when present).
Every repeat runs every (method, size) once, in an order rotated per repeat. Reported per (method, size): seconds
per epoch (between the trainer's epoch reports: the steps and the constant validation pass) and the whole fit
(encoding the pairs, building the head, every epoch), median [min–max]; per method, the slope of log seconds per
epoch against log pairs over every repeat (OLS; 95% CI from its standard error), where 1 is linear.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from scipy import stats

from bench import config as C
from bench import registry
from bench.data import PreferencePairs
from bench.execution.fit_trial import seed_everything
from bench.kit.interface import FitContext
from bench.kit.reward_models import RewardModel, make_encoder, make_head
from bench.storage.artifacts import ArtifactCache
from benchmarks import RESULTS, fmt, host, host_line, rotated, spread, write

QUICK = ["--profile", "tiny", "--sizes", "250,500,1000", "--epochs", "3"]


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.fit_scaling", description=__doc__.splitlines()[0])
    parser.add_argument("--profile", default="default", help="synthetic profile whose world is used")
    parser.add_argument("--sizes", default="1000,2000,4000,8000,16000", help="training pairs per fit")
    parser.add_argument("--methods", default="bradley_terry,max_margin")
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--cache", type=Path, default=None, help="artifact cache (default: a temporary directory)")
    parser.add_argument("--out", type=Path, default=RESULTS / "fit_scaling")
    parser.add_argument("--quick", action="store_true", help="seconds: " + " ".join(QUICK))
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parser.parse_args(argv)
    if args.quick:
        args = parser.parse_args([*argv, *QUICK])  # the later flags win
    if args.epochs < 2 or args.repeats < 3:
        parser.error("use --epochs >= 2 (seconds per epoch are timed between epochs) and --repeats >= 3.")
    return args


def build(profile: str, largest: int, cache: Path):
    """(train pairs, val pairs, encoder spec, settings) of the profile's world with prompts enough for `largest`."""
    task = registry.get_task("synthetic")
    cfg = task.config(profile)
    share = 1 - cfg.val_fraction - cfg.test_fraction
    cfg = dataclasses.replace(cfg, n_prompts=math.ceil(largest / (cfg.completions_per_prompt * share)) + 4)
    demos = task.build(profile, cfg, ArtifactCache(cache)).ref.demos()
    train = demos.splits["train"].preference_pairs
    if len(train) < largest:
        raise SystemExit(f"the world gave {len(train)} training pairs, fewer than {largest}")
    return train, demos.splits["val"].preference_pairs, demos.encoder, C.to_dict(cfg)


def first(pairs: PreferencePairs, n: int) -> PreferencePairs:
    return PreferencePairs(pairs.prompts[:n], pairs.chosen[:n], pairs.rejected[:n])


def timed_fit(method: str, pairs: PreferencePairs, val: PreferencePairs, encoder_spec: dict, epochs: int,
              device: torch.device, settings: dict | None = None) -> dict:
    """One fit of exactly `epochs` epochs (other config `settings` as given): seconds per epoch (between epoch
    reports) and in all, and the fitted reward."""
    cls = registry.methods()[method]
    cfg = cls.Config(**C.to_dict(C.build(cls.Config, {**(settings or {}), "epochs": epochs, "patience": epochs + 1},
                                         owner=method)))
    stamps = []

    def record(**metrics) -> None:
        if "epoch" in metrics:
            stamps.append(time.perf_counter())

    seed_everything(0)
    began = time.perf_counter()
    encoder = make_encoder(encoder_spec)
    reward = RewardModel(encoder, make_head("linear", encoder.dim)).to(device)
    ctx = FitContext(seed=0, device=device, val=val, report=record)
    cls().fit(pairs, reward, cfg, ctx)
    total = time.perf_counter() - began
    assert len(stamps) == epochs, (method, len(stamps))
    return {"per_epoch": (stamps[-1] - stamps[0]) / (epochs - 1), "total": total, "reward": reward}


def slope(sizes: list[int], seconds: list[float]) -> dict:
    """OLS slope of log seconds on log pairs, with its standard error and 95% CI (t, n − 2 dof)."""
    fit = stats.linregress(np.log(sizes), np.log(seconds))
    half = stats.t.ppf(0.975, len(sizes) - 2) * fit.stderr
    return {"slope": round(float(fit.slope), 3), "stderr": round(float(fit.stderr), 3),
            "ci95": [round(float(fit.slope - half), 3), round(float(fit.slope + half), 3)], "points": len(sizes)}


def main(argv: list[str] | None = None) -> dict:
    args = parse(argv)
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    load_before = os.getloadavg()
    sizes = sorted(int(s) for s in args.sizes.split(","))
    methods = args.methods.split(",")
    with tempfile.TemporaryDirectory(prefix="fit-scaling-") as tmp:
        began = time.perf_counter()
        train, val, encoder_spec, settings = build(args.profile, sizes[-1], args.cache or Path(tmp))
        build_seconds = time.perf_counter() - began
        cells = [(m, n) for m in methods for n in sizes]
        for m, n in cells:  # first use: imports, allocator warm-up; not timed
            timed_fit(m, first(train, n), val, encoder_spec, 2, device)
        timed = {cell: [] for cell in cells}
        for repeat in range(args.repeats):
            for m, n in rotated(cells, repeat):
                timed[(m, n)].append(timed_fit(m, first(train, n), val, encoder_spec, args.epochs, device))
                print(f"repeat {repeat}: {m:<14} {n:>6} pairs  {timed[(m, n)][-1]['per_epoch']:.4f} s/epoch",
                      flush=True)
    rows = [{"method": m, "pairs": n, "seconds_per_epoch": spread([t["per_epoch"] for t in timed[(m, n)]], 5),
             "fit_seconds": spread([t["total"] for t in timed[(m, n)]], 4)} for m, n in cells]
    slopes = {}
    for m in methods:
        points = [(n, t) for (mm, n), ts in timed.items() if mm == m for t in ts]
        slopes[m] = {"seconds_per_epoch": slope([n for n, _ in points], [t["per_epoch"] for _, t in points]),
                     "fit_seconds": slope([n for n, _ in points], [t["total"] for _, t in points])}
    bt = slopes.get("bradley_terry") or slopes[methods[0]]
    result = {
        "part": "fit_scaling",
        "what": "fit time vs number of preference pairs on the synthetic task (log-log slope)",
        "headline": f"{methods[0] if 'bradley_terry' not in slopes else 'bradley_terry'} seconds per epoch grow as "
                    f"pairs^{bt['seconds_per_epoch']['slope']} (95% CI {bt['seconds_per_epoch']['ci95'][0]}–"
                    f"{bt['seconds_per_epoch']['ci95'][1]}), {sizes[0]}→{sizes[-1]} pairs",
        "profile": args.profile, "world": settings, "sizes": sizes, "methods": methods, "epochs": args.epochs,
        "repeats": args.repeats, "validation_pairs": len(val), "build_seconds": round(build_seconds, 2),
        "rows": rows, "slopes": slopes, "host": host(str(device), load_before),
    }
    write(args.out, result, markdown(result))
    return result


def markdown(r: dict) -> str:
    lines = [
        "# Fit time vs number of pairs (synthetic task)",
        "",
        f"The synthetic `{r['profile']}` world (vocabulary {r['world']['vocab_size']}, {r['world']['n_prompts']} "
        f"prompts so that the largest size fits); each fit takes the first N training pairs, exactly {r['epochs']} "
        f"epochs, validation on the same {r['validation_pairs']} pairs every time, default settings otherwise "
        f"(linear head over bag-of-token counts). {r['repeats']} repeats, every (method, size) once per repeat in a "
        f"rotated order; median [min–max]. Seconds per epoch: the steps and the validation pass, between the "
        f"trainer's epoch reports; the fit: encoding the pairs, the head and every epoch. Slope: OLS of log "
        f"seconds on log pairs over all repeats, 95% CI (1 = linear). {host_line(r['host'])} Produced by "
        f"`python -m benchmarks.fit_scaling`.",
        "",
        "| method | pairs | s / epoch | fit (s) |",
        "|---|---|---|---|",
    ]
    for row in r["rows"]:
        lines.append(f"| {row['method']} | {row['pairs']} | {fmt(row['seconds_per_epoch'], 4)} | "
                     f"{fmt(row['fit_seconds'], 3)} |")
    lines += ["", "| method | slope of s / epoch [95% CI] | slope of the fit [95% CI] |", "|---|---|---|"]
    for m, s in r["slopes"].items():
        e, f = s["seconds_per_epoch"], s["fit_seconds"]
        lines.append(f"| {m} | {e['slope']} [{e['ci95'][0]}, {e['ci95'][1]}] | "
                     f"{f['slope']} [{f['ci95'][0]}, {f['ci95'][1]}] |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
