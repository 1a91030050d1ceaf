"""`bench publish`: copy the compact results of a task's latest run into a committed results directory.

Only what the leaderboard is built from travels: the run's selection, its trial results (per-item rewards) and
re-alignment results (metrics), and the demonstration and ground-truth artifacts the scorer reads. No model
weights, no caches of intermediate stages. Beside them, `dataset/` holds the per-item tables as Parquet with a
dataset card (bench/reporting/dataset.py).
`bench leaderboard --runs-dir results` then rebuilds the published leaderboards byte for byte (CI checks it).

Everything is checked before anything published changes: the run group is staged in a hidden directory beside its
target, its leaderboard is built and rendered from the stage, and only then does the stage replace the published
group (a rename), the pointer `latest.json` and the leaderboard files. A failure at any step before that leaves the
previously published results and leaderboards exactly as they were.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from bench.errors import BadInput
from bench.reporting import dataset
from bench.reporting import document as leaderboard
from bench.storage.artifacts import ArtifactCache, atomic_write_json, cache_for, verify
from bench.storage.results import damage
from bench.storage.selection import FILE as SELECTION_FILE
from bench.storage.selection import Selection

SCORED_ARTIFACTS = (("pool", "pool"), ("pool_truth", "heldout_pool_truth"))  # (TaskData artifact name, kind)
GROUP_FILES = ("ambiguity.json",)  # other files of a run group that its leaderboard reads, published when present


def publish(task: str, runs_dir: Path, results_dir: Path, leaderboards_dir: Path) -> list[Path]:
    """Publish the latest run of `task` from `runs_dir` into `results_dir` and write its leaderboard files into
    `leaderboards_dir`; returns the paths of the leaderboard files and of the dataset's files."""
    group = leaderboard.latest_group(runs_dir, task)
    if not (group / SELECTION_FILE).exists():
        raise BadInput(f"{group} has no {SELECTION_FILE}; rerun `bench run --task {task}` before publishing.")
    selection = Selection.read(group)
    source_cache, target_cache = cache_for(runs_dir), cache_for(results_dir)
    trials = _read_results(group, "trials", [t for e in selection.methods.values() for t in e.trial_ids])
    realignments = _read_results(group, "rerlhf", [t for ids in selection.realign_trial_ids.values() for t in ids])
    scored = _scored_artifacts(selection, source_cache)
    export = dataset.collect(selection, source_cache, trials, realignments)

    target = results_dir / task / group.name
    target.parent.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{group.name}.publishing."))
    boards_dir = Path(leaderboards_dir)
    boards_dir.mkdir(parents=True, exist_ok=True)
    boards = Path(tempfile.mkdtemp(dir=boards_dir, prefix=".publishing."))
    replaced = None
    try:
        for name in (SELECTION_FILE, *GROUP_FILES):
            if (group / name).exists():
                shutil.copy2(group / name, stage / name)
        for folder, ids in (("trials", trials), ("rerlhf", realignments)):
            if folder == "trials" or ids:
                (stage / folder).mkdir()
            for trial_id in ids:
                shutil.copy2(group / folder / f"{trial_id}.json", stage / folder / f"{trial_id}.json")
        dataset_files = dataset.write(export, selection, group.name, stage / dataset.DIRECTORY)
        for kind, key in scored:  # content-addressed: adding one that nothing points to yet is harmless
            _copy_artifact(source_cache, target_cache, kind, key)
        # Built and rendered from the stage (the same cache sits beside it), so a damaged result or a plotting
        # failure stops the publish here, with nothing published changed.
        written = leaderboard.write(leaderboard.build(stage), boards)
        replaced = _swap(stage, target)  # from here on, only renames and one small atomic write remain
        atomic_write_json(results_dir / task / "latest.json", {"group": group.name})
        paths = []
        for path in written:
            os.replace(path, boards_dir / path.name)
            paths.append(boards_dir / path.name)
    finally:
        for leftover in (stage, boards, replaced):  # the stage is gone already after a successful swap
            if leftover is not None:
                shutil.rmtree(leftover, ignore_errors=True)
    return paths + [target / path.relative_to(stage) for path in dataset_files]


def _read_results(group: Path, folder: str, trial_ids: list[str]) -> dict[str, dict]:
    """{trial id: payload} of the run's stored results; BadInput naming every missing or damaged one."""
    payloads, problems = {}, []
    for trial_id in trial_ids:
        payload, problem = damage(group / folder / f"{trial_id}.json")
        if problem is None:
            payloads[trial_id] = payload
        else:
            problems.append(f"{group / folder / trial_id}.json ({problem})")
    if problems:
        raise BadInput(f"{len(problems)} stored result(s) of {group} are missing or damaged: {'; '.join(problems)}; "
                       f"rerun the `bench run` that wrote them (it runs exactly those again), then publish; nothing "
                       f"was published.")
    return payloads


def _scored_artifacts(selection: Selection, cache: ArtifactCache) -> list[tuple[str, str]]:
    """What the scorer reads: demonstrations and R*, and a held-out pool's items and truth when the task has one
    (also the per-item published data: texts, prompt ids, sources and both judges' scores), each verified."""
    data = selection.task_data
    scored = [("demos", data.demos_key), ("truth", data.truth_key)]
    scored += [(kind, data.artifacts[name]) for name, kind in SCORED_ARTIFACTS if name in data.artifacts]
    for kind, key in scored:
        try:
            cache.load(kind, key)
        except FileNotFoundError as exc:
            raise BadInput(f"{exc} (in {cache.root}); rerun `bench run` to rebuild it, then publish; nothing was "
                           f"published.") from None
    return scored


def _copy_artifact(source: ArtifactCache, target: ArtifactCache, kind: str, key: str) -> None:
    destination = target.path(kind, key)
    if destination.exists() and verify(destination) is None:
        return
    destination.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=destination.parent, prefix=f".{key}.publishing."))
    try:
        shutil.copytree(source.path(kind, key), tmp, dirs_exist_ok=True)
        if destination.exists():  # damaged: replaced by the verified source
            shutil.rmtree(destination)
        os.replace(tmp, destination)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _swap(stage: Path, target: Path) -> Path | None:
    """Put the staged group in place of the published one (two renames on one filesystem; if the second fails, the
    old group is renamed back). Returns where the replaced group now is, for deletion, or None."""
    if not target.exists():
        os.replace(stage, target)
        return None
    old = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.replaced."))
    os.replace(target, old)  # replaces the empty placeholder directory
    try:
        os.replace(stage, target)
    except BaseException:
        os.replace(old, target)
        raise
    return old
