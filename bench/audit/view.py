"""The audit document of a task's latest stored run group: per method, pair accuracy by kind of pair, agreement with
R* by R* bin, failure pairs, and what its reward penalises (bench/audit/pairs.py, attribution.py). Built from the
stored selection, trial results and artifacts only; R* comes through the scorer's `load_eval_sets`, and the token
view refits rewards (bench/audit/refit.py) where the task's encoder allows."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from threadpoolctl import threadpool_limits

from bench import registry
from bench.audit.pairs import KINDS, NEAR_TIE, accuracy_by_kind, agreement_by_bin, failure_pairs
from bench.audit.refit import token_view
from bench.audit.seeds import CI_METHOD
from bench.audit.words import judge_reference, word_view
from bench.errors import BadInput
from bench.reporting.document import latest_group, load_trials
from bench.scoring.scorer import load_eval_sets

SCHEMA_VERSION = 1
PROMPT_CHARS = 160  # prompts are shortened to this many characters in the failure pairs (completions stay whole)


@dataclass(frozen=True)
class InspectRequest:
    task: str
    runs_dir: Path = Path("runs")
    method: str | None = None  # failure pairs and attribution of this method only (default: every method)
    top: int = 10  # K: failure pairs shown per kind, tokens or words listed, precision@K
    min_count: int = 2  # word view: a word must occur in (and be absent from) at least this many test completions

    def validate(self) -> None:
        if self.top < 1:
            raise BadInput(f"--top {self.top} lists nothing; use --top 1 or more (e.g. --top 10).")
        if self.min_count < 1:
            raise BadInput(f"--min-count {self.min_count} is below 1; use --min-count 1 or more (e.g. 3).")


def inspect(request: InspectRequest) -> dict:
    """The audit document (JSON-ready) of the task's latest run group under `request.runs_dir`."""
    request.validate()
    group = latest_group(request.runs_dir, request.task)
    with threadpool_limits(limits=1):
        selection, data, ok, failed = load_trials(group)
        if request.method is not None and request.method not in selection.methods:
            raise BadInput(f"method {request.method!r} is not in the stored run of {request.task} ({group}); use one "
                           f"of: {', '.join(selection.methods)}.")
        if not ok:
            raise BadInput(f"no trial of the stored run {group} finished; rerun it with `bench run --task "
                           f"{request.task}` first.")
        focus = [request.method] if request.method else [m for m in selection.methods if m in ok]
        if request.method and request.method not in ok:
            raise BadInput(f"every trial of {request.method} in {group} failed; pick another --method or rerun it.")
        test = load_eval_sets(data)["test"]
        demos = data.demos()
        items = demos.splits["test"].items
        rewards = {m: [np.asarray(t["rewards"]["test"], dtype=float) for t in sorted(ok[m], key=lambda t: t["seed"])]
                   for m in selection.methods if m in ok}
        per_method = {m: {"seeds": [t["seed"] for t in sorted(ok[m], key=lambda t: t["seed"])],
                          "failed_seeds": [f["seed"] for f in failed.get(m, [])],
                          "by_kind": accuracy_by_kind(r, test.pairs, test.reward, test.bad),
                          "by_bin": agreement_by_bin(r, test.prompt_ids, test.reward)["bins"]}
                      for m, r in rewards.items()}
        failures = {m: failure_pairs(rewards[m], test.prompt_ids, test.pairs, test.reward, test.bad, request.top)
                    for m in focus}
        if demos.encoder.get("type") == "bag_of_tokens":
            attribution = token_view(selection, data, {m: ok[m] for m in focus}, request.top)
        else:
            ground_truth = registry.get_task(data.task).ground_truth(data.ref)
            attribution = word_view(items.texts, test.prompt_ids, test.reward, {m: rewards[m] for m in focus},
                                    request.top, request.min_count, judge_reference(ground_truth))
    texts = {i: items.texts[i] for m in failures.values() for kind in m.values() for p in kind["shown"]
             for i in (p["chosen"], p["rejected"])}
    prompts = {i: items.prompts[i][:PROMPT_CHARS] for i in texts}
    return {
        "schema_version": SCHEMA_VERSION,
        "task": data.task,
        "profile": data.profile,
        "group": str(group),
        "focus": focus,
        "ci": CI_METHOD,
        "test": {"items": len(items), "pairs": int(len(test.pairs)), "bad_items": int(test.bad.sum())},
        "kinds": KINDS,
        "bins": agreement_by_bin([test.reward], test.prompt_ids, test.reward)["definition"],
        "near_tie": NEAR_TIE,
        "methods": per_method,
        "failures": failures,
        "items": {str(i): {"prompt": prompts[i], "text": texts[i]} for i in sorted(texts)},
        "attribution": attribution,
    }
