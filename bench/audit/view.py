"""The audit document of a task's stored run group: per method, pair accuracy by kind of pair, agreement with R* by
R* bin, failure pairs, and what its reward penalises (bench/audit/pairs.py, attribution.py), on the held-out pool
when the task has one, else the test split (bench/audit/evidence.py). Built from the stored selection, trial
results and artifacts only; R* comes through the scorer's `load_eval_sets`, and the token view refits rewards
(bench/audit/refit.py) where the task's encoder allows."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from threadpoolctl import threadpool_limits

from bench.audit.evidence import summary
from bench.audit.pairs import failure_pairs
from bench.audit.refit import token_view
from bench.errors import BadInput
from bench.reporting.document import latest_group, load_trials

PROMPT_CHARS = 160  # prompts are shortened to this many characters in the failure pairs (completions stay whole)


@dataclass(frozen=True)
class InspectRequest:
    task: str
    runs_dir: Path = Path("runs")
    profile: str | None = None  # the run group of this profile (default: the task's latest)
    method: str | None = None  # failure pairs and attribution of this method only (default: every method)
    top: int = 10  # K: failure pairs shown per kind, tokens or words listed, precision@K
    min_count: int = 2  # word view: a word must occur in (and be absent from) at least this many test completions

    def validate(self) -> None:
        if self.top < 1:
            raise BadInput(f"--top {self.top} lists nothing; use --top 1 or more (e.g. --top 10).")
        if self.min_count < 1:
            raise BadInput(f"--min-count {self.min_count} is below 1; use --min-count 1 or more (e.g. 3).")


def group_of(runs_dir: Path, task: str, profile: str | None) -> Path:
    """The run group to audit: the task's latest, or that of `profile` when given. A run with overridden task
    settings (e.g. `--set task.expert_model=DIR`) is stored as `<profile>-<hash>`: the latest such group is taken."""
    if profile is None:
        return latest_group(runs_dir, task)
    groups = sorted(p.parent for p in (runs_dir / task).glob("*/selection.json"))
    hashed = re.compile(re.escape(profile) + r"-[0-9a-f]{8}")  # bench/execution/run.py RunPlan.group
    matching = [g for g in groups if g.name == profile or hashed.fullmatch(g.name)]
    if not matching:
        raise BadInput(f"no stored run of {task} with profile {profile!r} under {runs_dir}; "
                       + (f"use one of: {', '.join(g.name for g in groups)}." if groups else
                          f"run `bench run --task {task} --profile {profile}` first."))
    exact = [g for g in matching if g.name == profile]
    latest = latest_group(runs_dir, task) if (runs_dir / task / "latest.json").exists() else None
    return exact[0] if exact else latest if latest in matching else \
        max(matching, key=lambda g: (g / "selection.json").stat().st_mtime)


def inspect(request: InspectRequest) -> dict:
    """The audit document (JSON-ready) of the task's run group under `request.runs_dir`."""
    request.validate()
    group = group_of(request.runs_dir, request.task, request.profile)
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
        doc, scored = summary(data, ok, failed, request.top, request.min_count)
        doc["focus"] = focus
        t = scored.truth
        failures = {m: failure_pairs(scored.rewards[m], t.prompt_ids, t.pairs, t.reward, t.bad, request.top)
                    for m in focus}
        if data.demos().encoder.get("type") == "bag_of_tokens" and scored.split == "test":
            doc["attribution"] = token_view(selection, data, {m: ok[m] for m in focus}, request.top)
    shown = sorted({i for m in failures.values() for kind in m.values() for p in kind["shown"]
                    for i in (p["chosen"], p["rejected"])})
    return doc | {
        "group": str(group),
        "failures": failures,
        "items": {str(i): {"prompt": scored.prompts[i][:PROMPT_CHARS], "text": scored.texts[i]} for i in shown},
    }
