"""What the trainable-layer reward-model class costs: one IRL fit per epoch with a linear head over cached frozen
features vs with the LM's last k blocks training with it (head lm_top<k>, bench/kit/lm_top.py), on one detox
profile's data.

    OMP_NUM_THREADS=1 nice python benchmarks/reward_model_classes.py [--profile smoke] [--heads linear,lm_top1,lm_top2]
        [--method bradley_terry] [--epochs 10] [--repeats 3] [--workdir /tmp/rmclasses]
    # then, on the same pairs over the default profile's backbone (an HF directory), added to the same results:
    ... --epochs 3 --backbone DIR --backbone-name SmolLM2-135M-Instruct

Each head is fitted once (its first fit: for lm_top<k> it computes and stores the lower-layer states of every
text, as the first trial of a run does), then `--repeats` times, the heads interleaved; each fit runs exactly
`--epochs` epochs (patience above it). Reported: median [min–max] seconds per epoch (timed between the trainer's
epoch reports: the steps and the validation pass), the median setup per fit (the rest of the fit's time), the first
fit's seconds, the lower-layer states' size on disk, and the validation pair accuracy the first fit reached (one
seed; not a comparison of classes). Writes
benchmarks/results/reward_model_classes.{md,json}. Timings from a shared machine: compare rows of one run only.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

RESULTS = Path(__file__).resolve().parent / "results"


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def main() -> None:
    import torch

    from bench import config as C
    from bench import registry
    from bench.execution.fit_trial import TrialSpec, fit_reward
    from bench.storage.artifacts import ArtifactCache

    parser = argparse.ArgumentParser()
    parser.add_argument("--profile", default="smoke")
    parser.add_argument("--heads", default="linear,lm_top1,lm_top2")
    parser.add_argument("--method", default="bradley_terry")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/rmclasses"))
    parser.add_argument("--out", type=Path, default=RESULTS / "reward_model_classes")
    parser.add_argument("--backbone", default=None,
                        help="also time the heads over this HF model directory (e.g. the default profile's "
                             "SmolLM2-135M) on the same pairs, with its own features table; added as 'backbone'")
    parser.add_argument("--backbone-name", default=None, help="how the results name --backbone")
    args = parser.parse_args()
    torch.set_num_threads(1)
    cache = ArtifactCache(args.workdir / "cache")
    task = registry.get_task("detox")
    started = time.perf_counter()
    data = task.build(args.profile, task.config(args.profile), cache)
    build_seconds = time.perf_counter() - started
    demos = data.ref.demos()
    sizes = {s: {"pairs": len(demos.splits[s].pairs), "items": len(demos.splits[s].items)} for s in demos.splits}

    cls = registry.methods()[args.method].Config
    heads = args.heads.split(",")
    configs = {h: C.to_dict(C.build(cls, {"head": h, "epochs": args.epochs, "patience": args.epochs + 1},
                                    owner=args.method)) for h in heads}

    def timed_fit(head: str, fit=None) -> dict:
        stamps, accuracies = [], []

        def record(**metrics):
            if "epoch" in metrics:
                stamps.append(time.perf_counter())
                accuracies.append(metrics["val_pair_accuracy"])

        began = time.perf_counter()
        (fit or (lambda h, rec: fit_reward(TrialSpec(args.method, configs[h], 0, data.ref), rec)))(head, record)
        total = time.perf_counter() - began
        assert len(stamps) == args.epochs, (head, len(stamps))
        per_epoch = (stamps[-1] - stamps[0]) / (args.epochs - 1)  # steps + validation, between epoch reports
        return {"total": total, "per_epoch": per_epoch, "setup": total - args.epochs * per_epoch,
                "best_val_pair_accuracy": max(accuracies)}

    if args.backbone:
        fit = backbone_fit(args.backbone, demos, configs, args.method, cache.root)
        previous = json.loads(args.out.with_suffix(".json").read_text())
        previous["backbone"] = {"model": args.backbone_name or Path(args.backbone).name, "epochs": args.epochs,
                                "repeats": args.repeats, "rows": measure(heads, lambda h: timed_fit(h, fit),
                                                                                   args.repeats),
                                "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
                                "load_average": os.getloadavg()}
        args.out.with_suffix(".json").write_text(json.dumps(previous, indent=1) + "\n")
        args.out.with_suffix(".md").write_text(markdown(previous))
        print(markdown(previous))
        return
    rows = measure(heads, timed_fit, args.repeats)
    states = [p for p in (args.workdir / "cache" / "lm_top_states").glob("*/states.npy")]
    result = {
        "profile": args.profile, "method": args.method, "epochs": args.epochs, "repeats": args.repeats,
        "splits": sizes, "task_build_seconds": round(build_seconds, 1), "rows": rows,
        "lm_top_states": {"artifacts": len(states), "megabytes": round(sum(p.stat().st_size for p in states) / 2**20,
                                                                        2)},
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
        "host": {"cpu": cpu_model(), "cpus": os.cpu_count(), "torch": torch.__version__, "threads": 1,
                 "device": "cpu", "load_average": os.getloadavg()},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(result, indent=1) + "\n")
    args.out.with_suffix(".md").write_text(markdown(result))
    print(markdown(result))


def measure(heads: list[str], timed_fit, repeats: int) -> list[dict]:
    first = {h: timed_fit(h) for h in heads}  # lm_top<k>: computes and stores the lower-layer states
    timed = {h: [] for h in heads}
    for _ in range(repeats):  # heads interleaved, so the shared machine's load drifts over all of them
        for h in heads:
            timed[h].append(timed_fit(h))
    rows = []
    for h in heads:
        per_epoch = [r["per_epoch"] for r in timed[h]]
        setup = [r["setup"] for r in timed[h]]
        rows.append({"head": h, "seconds_per_epoch": {"median": statistics.median(per_epoch), "min": min(per_epoch),
                                                      "max": max(per_epoch), "all": per_epoch},
                     "setup_seconds_median": statistics.median(setup), "first_fit_seconds": first[h]["total"],
                     "best_val_pair_accuracy": first[h]["best_val_pair_accuracy"]})
        print(json.dumps(rows[-1]), flush=True)
    linear = next((r for r in rows if r["head"] == "linear"), None)
    for r in rows:
        r["slowdown_vs_linear"] = (r["seconds_per_epoch"]["median"] / linear["seconds_per_epoch"]["median"]
                                   if linear else None)
    return rows


def backbone_fit(backbone: str, demos, configs: dict, method: str, cache_root: Path):
    """A fit of the task's train/val pairs over another backbone: its features table (the frozen features of every
    train and val text, standardised on train items) is built once under the cache, as the features stage does."""
    import numpy as np
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from bench import registry
    from bench.execution.fit_trial import seed_everything
    from bench.kit.interface import FitContext
    from bench.kit.reward_models import RewardModel, lm_features, make_encoder, make_head, text_key
    from bench.storage.artifacts import ArtifactCache, atomic_write_json

    texts = {}
    for split in ("train", "val"):
        items = demos.splits[split].items
        for p, y in zip(items.prompts, items.texts):
            texts.setdefault(text_key(p, y), (p, y, split))
    keys = sorted(texts)
    model = AutoModelForCausalLM.from_pretrained(backbone, dtype=torch.float32).eval()
    tok = AutoTokenizer.from_pretrained(backbone)

    def build(out: Path) -> None:
        feats = lm_features(model, tok, [texts[k][0] for k in keys], [texts[k][1] for k in keys], max_length=128)
        train = feats[[i for i, k in enumerate(keys) if texts[k][2] == "train"]]
        std = train.std(0)
        np.save(out / "features.npy", feats)
        atomic_write_json(out / "keys.json", keys, indent=None)
        atomic_write_json(out / "standardise.json", {"mean": train.mean(0).tolist(),
                                                     "std": np.where(std > 1e-6, std, 1.0).tolist()}, indent=None)

    table = ArtifactCache(cache_root).get_or_build("lm_features", {"benchmark": Path(backbone).name, "keys": keys},
                                                   build)
    spec = {"type": "frozen_lm", "model": backbone, "dim": model.config.hidden_size, "max_length": 128,
            "features_dir": str(table.path)}
    cls = registry.methods()[method]

    def fit(head: str, record) -> None:
        seed_everything(0)
        encoder = make_encoder(spec)
        reward = RewardModel(encoder, make_head("linear", encoder.dim))
        ctx = FitContext(seed=0, device=torch.device("cpu"), val=demos.splits["val"].preference_pairs, report=record)
        cls().fit(demos.splits["train"].preference_pairs, reward, cls.Config(**configs[head]), ctx)

    return fit


def markdown(r: dict) -> str:
    h = r["host"]
    train = r["splits"]["train"]
    lines = [
        "# Reward-model classes: cost of training the LM's top blocks",
        "",
        f"One `{r['method']}` fit on the detox `{r['profile']}` profile ({train['pairs']} training pairs, "
        f"{r['splits']['val']['pairs']} validation pairs), exactly {r['epochs']} epochs, seed 0; the linear head "
        f"over cached frozen features vs `lm_top<k>` (the backbone's last k blocks and final norm train with a "
        f"linear head, over cached lower-layer states). Seconds per epoch (the steps over every training pair and "
        f"the validation pass, timed between epoch reports), median [min–max] of {r['repeats']} repeats, heads "
        f"interleaved; setup (loading, building the model, reading stored states) apart; all after a first fit "
        f"per head (which for lm_top<k> also computes and stores the lower-layer states: "
        f"{r['lm_top_states']['artifacts']} artifacts, {r['lm_top_states']['megabytes']} MB). Host: {h['cpu']}, "
        f"{h['cpus']} CPUs shared with other jobs (load average {h['load_average'][0]:.1f}), torch {h['torch']} on "
        f"CPU, 1 thread; peak RSS {r['peak_rss_mb']} MB. Produced by `benchmarks/reward_model_classes.py`.",
        *(["", "The smoke profile's backbone is a tiny GPT-2 (2 blocks, width 64), so lm_top2 trains all its blocks "
              "(the token embedding stays frozen); a block of SmolLM2-135M (30 blocks, width 576) costs far more, "
              "which this run does not measure."] if r["profile"] == "smoke" else []),
        "",
        "| reward-model class | s / epoch | × linear | setup per fit (s) | first fit (s) | best val pair accuracy |",
        "|---|---|---|---|---|---|",
    ]
    for row in r["rows"]:
        t = row["seconds_per_epoch"]
        lines.append(f"| {row['head']} | {t['median']:.3f} [{t['min']:.3f}–{t['max']:.3f}] | "
                     f"{row['slowdown_vs_linear']:.1f} | {row['setup_seconds_median']:.2f} | "
                     f"{row['first_fit_seconds']:.1f} | "
                     f"{row['best_val_pair_accuracy']:.3f} |")
    b = r.get("backbone")
    if b:
        note = (f"The smoke profile's training and validation texts encoded by {b['model']} instead (its own "
                f"features table, built once; lower-layer states stored on the first fit), {b['epochs']} epochs, "
                f"median [min–max] of {b['repeats']} repeats, heads interleaved; "
                f"load average {b['load_average'][0]:.1f}, peak RSS {b['peak_rss_mb']} MB. The default profile has "
                f"about 2.5× these pairs, so about 2.5× the seconds per epoch.")
        lines += ["", f"## The same pairs over {b['model']}", "", note, "",
                  "| reward-model class | s / epoch | × linear | setup per fit (s) | first fit (s) |",
                  "|---|---|---|---|---|"]
        for row in b["rows"]:
            t = row["seconds_per_epoch"]
            lines.append(f"| {row['head']} | {t['median']:.3f} [{t['min']:.3f}–{t['max']:.3f}] | "
                         f"{row['slowdown_vs_linear']:.0f} | {row['setup_seconds_median']:.2f} | "
                         f"{row['first_fit_seconds']:.1f} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
