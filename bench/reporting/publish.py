"""`bench publish`: copy the compact results of a task's latest run into a committed results directory.

Only what the leaderboard is built from travels: the run's selection, its trial results (per-item rewards) and
re-alignment results (metrics), and the demonstration and ground-truth artifacts the scorer reads. No model
weights, no caches of intermediate stages.
`bench leaderboard --runs-dir results` then rebuilds the published leaderboards byte for byte (CI checks it).
"""

from __future__ import annotations

import shutil
from pathlib import Path

from bench.errors import BadInput
from bench.reporting import document as leaderboard
from bench.storage.artifacts import atomic_write_json, cache_for
from bench.storage.selection import FILE as SELECTION_FILE
from bench.storage.selection import Selection

SCORED_ARTIFACTS = (("pool", "pool"), ("pool_truth", "heldout_pool_truth"))  # (TaskData artifact name, kind)


def publish(task: str, runs_dir: Path, results_dir: Path, leaderboards_dir: Path) -> list[Path]:
    group = leaderboard.latest_group(runs_dir, task)
    selection = Selection.read(group)
    data = selection.task_data
    source_cache, target_cache = cache_for(runs_dir), cache_for(results_dir)
    target = results_dir / task / group.name
    if target.exists():
        shutil.rmtree(target)
    (target / "trials").mkdir(parents=True)
    shutil.copy2(group / SELECTION_FILE, target / SELECTION_FILE)
    for entry in selection.methods.values():
        for trial_id in entry.trial_ids:
            source = group / "trials" / f"{trial_id}.json"
            if not source.exists():
                raise BadInput(f"trial {trial_id} of {group} is missing; rerun `bench run` before publishing.")
            shutil.copy2(source, target / "trials" / source.name)
    for trial_ids in selection.realign_trial_ids.values():
        (target / "rerlhf").mkdir(exist_ok=True)
        for trial_id in trial_ids:
            source = group / "rerlhf" / f"{trial_id}.json"  # a failed re-alignment is stored too, and listed
            if not source.exists():
                raise BadInput(f"re-alignment trial {trial_id} of {group} is missing; rerun `bench run` before "
                               f"publishing.")
            shutil.copy2(source, target / "rerlhf" / source.name)
    # What the scorer reads: demonstrations and R*, and a held-out pool's items and truth when the task has one
    # (these are also the per-item published data: texts, prompt ids, sources and both judges' scores).
    scored = [("demos", data.demos_key), ("truth", data.truth_key)]
    scored += [(kind, data.artifacts[name]) for name, kind in SCORED_ARTIFACTS if name in data.artifacts]
    for kind, key in scored:
        destination = target_cache.path(kind, key)
        if not destination.exists():
            shutil.copytree(source_cache.load(kind, key).path, destination)
    atomic_write_json(results_dir / task / "latest.json", {"group": group.name})
    doc = leaderboard.build(target)
    return list(leaderboard.write(doc, leaderboards_dir))
