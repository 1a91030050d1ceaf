"""`bench cache ls|verify|gc`: what the artifact cache holds, which stored runs need it, and what may go.

A stored run needs an artifact when it names it: a run group's `selection.json` (its task data: `demos_key`,
`truth_key` and the other `artifacts`), the group's re-alignment results (the re-aligned policies), and a sweep's fit
results (`demos_key`). An artifact in turn needs the artifacts its manifest `inputs` name, by key
(`"samples": "<key>"`, `{"artifact": "<key>"}`) or by a path inside the cache (`…/<kind>/<key>/model`). Those
references are followed transitively: gc removes only what no stored run needs, directly or through another
artifact, and never an artifact that a build or a run is using at that moment (see `busy`).

Downloaded assets (kind `asset`: pinned packages a judge or task names by package, not by key) are kept: fetching
them again needs the network.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

from bench.errors import BadInput, RuntimeFailure
from bench.storage.artifacts import MANIFEST, ArtifactCache, cache_for, file_lock, verify
from bench.storage.selection import FILE as SELECTION_FILE

KEPT_KINDS = ("asset",)


@dataclass(frozen=True)
class Entry:
    """One artifact directory `<cache>/<kind>/<key>` (complete or not)."""

    kind: str
    key: str
    path: Path
    files: int
    bytes: int
    modified: float  # when its manifest was written (the directory's time if it has none)
    inputs: frozenset[str] = frozenset()  # strings in its manifest's inputs (keys, paths) that may name artifacts


@dataclass(frozen=True)
class Inventory:
    """The cache's artifacts and, per artifact key, the stored runs that need it (directly or transitively)."""

    root: Path
    entries: list[Entry]
    needed_by: dict[str, set[str]] = field(default_factory=dict)

    def users(self, entry: Entry) -> set[str]:
        return self.needed_by.get(entry.key, set())

    def unreferenced(self) -> list[Entry]:
        return [e for e in self.entries if not self.users(e) and e.kind not in KEPT_KINDS]


def _size(directory: Path) -> tuple[int, int]:
    files = [p for p in directory.rglob("*") if p.is_file()]
    return len(files), sum(p.stat().st_size for p in files)


def _strings(obj) -> set[str]:
    """Every string value inside a JSON value."""
    if isinstance(obj, str):
        return {obj}
    if isinstance(obj, dict):
        return set().union(*(_strings(v) for v in obj.values())) if obj else set()
    if isinstance(obj, list):
        return set().union(*(_strings(v) for v in obj)) if obj else set()
    return set()


def _read_json(path: Path):
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def entries(cache: ArtifactCache) -> list[Entry]:
    """Every artifact directory of the cache, skipping builds in progress and lock files (names starting with '.')."""
    found = []
    for kind_dir in sorted(p for p in cache.root.glob("*") if p.is_dir() and not p.name.startswith(".")):
        for path in sorted(p for p in kind_dir.iterdir() if p.is_dir() and not p.name.startswith(".")):
            manifest = path / MANIFEST
            inputs = (_read_json(manifest) or {}).get("inputs", {}) if manifest.exists() else {}
            files, size = _size(path)
            modified = (manifest if manifest.exists() else path).stat().st_mtime
            found.append(Entry(kind_dir.name, path.name, path, files, size, modified, frozenset(_strings(inputs))))
    return found


SKIPPED = ("cache", "trials", "rerlhf", "fits", "configs", "ray", "leaderboards")  # hold no run group


def _stored(runs_dir: Path) -> tuple[list[Path], list[Path], list[Path]]:
    """(run group directories: those with a selection.json, at any depth, e.g. `worlds/<task>/<world>`; sweep
    directories `…/sweeps/<method>`; run group lock files), found without walking into caches, trial results or
    Ray's files."""
    groups, sweeps, locks = [], [], []
    for here, dirs, files in os.walk(runs_dir):
        here = Path(here)
        if SELECTION_FILE in files:
            groups.append(here)
        if ".lock" in files:  # a run group's, from its first run on
            locks.append(here / ".lock")
        if here.parent.name == "sweeps":
            sweeps.append(here)
        dirs[:] = sorted(d for d in dirs if not d.startswith(".") and d not in SKIPPED)
    return sorted(groups), sorted(sweeps), sorted(locks)


def roots(runs_dir: Path) -> dict[str, set[str]]:
    """Per stored run (`task/group`, `worlds/task/world`, or `task/profile/sweeps/method`), the strings in its
    records that may name artifacts."""
    runs_dir = Path(runs_dir)
    groups, sweeps, _ = _stored(runs_dir)
    found = {}
    for group in groups:
        strings = _strings(_read_json(group / SELECTION_FILE) or {})
        for result in sorted((group / "rerlhf").glob("*.json")):  # re-aligned policies, by artifact key
            strings |= _strings(_read_json(result) or {})
        found[str(group.relative_to(runs_dir))] = strings
    for sweep in sweeps:
        fit = next(iter(sorted((sweep / "fits").glob("*.json"))), None)  # every fit of a sweep has the same task
        if fit is not None:
            found[str(sweep.relative_to(runs_dir))] = _strings(_read_json(fit) or {})
    return found


def _named(strings: set[str], by_key: dict[str, Entry]) -> set[str]:
    """The artifact keys among `strings`: a key itself, or a path with `<kind>/<key>` of a known artifact in it."""
    keys = set()
    for text in strings:
        if text in by_key:
            keys.add(text)
        elif "/" in text:
            parts = Path(text).parts
            keys.update(part for kind, part in zip(parts, parts[1:]) if part in by_key and by_key[part].kind == kind)
    return keys


def inventory(cache: ArtifactCache, runs_dirs: list[Path]) -> Inventory:
    found = entries(cache)
    by_key = {e.key: e for e in found}
    needed_by: dict[str, set[str]] = {}
    for runs_dir in runs_dirs:
        for label, strings in roots(runs_dir).items():
            label = label if len(runs_dirs) == 1 else f"{runs_dir}:{label}"
            todo, seen = list(_named(strings, by_key)), set()
            while todo:  # the run's artifacts and, transitively, every artifact they were built from
                key = todo.pop()
                if key in seen:
                    continue
                seen.add(key)
                needed_by.setdefault(key, set()).add(label)
                todo.extend(_named(by_key[key].inputs, by_key) - seen)
    return Inventory(cache.root, found, needed_by)


def check_all(inv: Inventory) -> list[tuple[Entry, str]]:
    """(artifact, what is wrong) for every artifact whose files do not match its manifest."""
    return [(e, problem) for e in inv.entries if (problem := verify(e.path)) is not None]


def _held(lock: Path) -> bool:
    """Whether another process holds the advisory lock at `lock` now."""
    try:
        with open(lock, "rb") as fh:
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return True
            fcntl.flock(fh, fcntl.LOCK_UN)
    except OSError:
        return False
    return False


def busy(cache: ArtifactCache, runs_dirs: list[Path]) -> list[Path]:
    """Locks held right now: an artifact being built (`<cache>/<kind>/.<key>.lock`) or a run group whose trials
    are running (`<runs>/<task>/<group>/.lock`). A run names the artifacts it built in its selection only at its end."""
    locks = list(cache.root.glob("*/.*.lock")) + [p for d in runs_dirs for p in _stored(Path(d))[2]]
    return sorted(p for p in locks if _held(p))


def remove(cache: ArtifactCache, entry: Entry) -> None:
    """Delete one artifact under its build lock; renamed away first, so no reader sees half of it."""
    with file_lock(cache.root / entry.kind / f".{entry.key}.lock"):
        if entry.path.exists():
            doomed = entry.path.with_name(f".{entry.key}.deleting.{os.getpid()}")
            os.replace(entry.path, doomed)
            shutil.rmtree(doomed)


def collectable(inv: Inventory, min_age_s: float, now: float | None = None) -> list[Entry]:
    """Unreferenced artifacts older than `min_age_s` (a younger one may belong to a run that has not yet ended)."""
    now = time.time() if now is None else now
    return [e for e in inv.unreferenced() if now - e.modified >= min_age_s]


def collect_garbage(cache: ArtifactCache, runs_dirs: list[Path], *, dry_run: bool, min_age_s: float) -> list[Entry]:
    """`bench cache gc`: remove (or with `dry_run` only list) the collectable artifacts; returns them."""
    held = [] if dry_run else busy(cache, runs_dirs)
    if held:
        raise RuntimeFailure(f"{held[0]} is locked by a build or a `bench run` in progress; run `bench cache gc` "
                             f"when it has finished (or pass --dry-run to see what it would remove).")
    doomed = collectable(inventory(cache, runs_dirs), min_age_s)
    if not dry_run:
        for entry in doomed:
            remove(cache, entry)
    return doomed


def usage(cache: ArtifactCache) -> dict:
    """Where the cache is and how much it holds (for `bench env`)."""
    found = entries(cache) if cache.root.exists() else []
    return {"root": str(cache.root), "exists": cache.root.exists(), "artifacts": len(found),
            "files": sum(e.files for e in found), "bytes": sum(e.bytes for e in found)}


def human_bytes(n: int) -> str:
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"


def human_age(seconds: float) -> str:
    for unit, span in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= span:
            return f"{seconds / span:.0f} {unit}"
    return f"{max(seconds, 0):.0f} s"


def listing(inv: Inventory, now: float | None = None) -> list[str]:
    """`bench cache ls`: one line per artifact, then a total."""
    now = time.time() if now is None else now
    lines = [f"{'kind':16s} {'key':20s} {'size':>10s} {'age':>7s}  needed by"]
    for e in inv.entries:
        users = ", ".join(sorted(inv.users(e))) or ("kept (downloaded asset)" if e.kind in KEPT_KINDS
                                                    else "nothing (gc removes it)")
        lines.append(f"{e.kind:16s} {e.key:20s} {human_bytes(e.bytes):>10s} {human_age(now - e.modified):>7s}  {users}")
    total = sum(e.bytes for e in inv.entries)
    free = sum(e.bytes for e in inv.unreferenced())
    lines.append(f"{len(inv.entries)} artifacts, {human_bytes(total)} in {inv.root}; "
                 f"{len(inv.unreferenced())} unreferenced ({human_bytes(free)})")
    return lines


def command(action: str, runs_dirs: list[Path], *, dry_run: bool = False, min_age_s: float = 3600.0) -> tuple[
        list[str], int]:
    """`bench cache ACTION`: (lines to print, exit code). The cache is that of the first runs directory (or
    IRL_BENCH_CACHE); every runs directory given counts as a user of it."""
    missing = [d for d in runs_dirs if not Path(d).is_dir()]
    if missing:
        raise BadInput(f"--runs-dir {missing[0]} is not a directory; pass the --runs-dir of your `bench run`s "
                       f"(default: runs).")
    cache = cache_for(runs_dirs[0])
    if not cache.root.is_dir():
        return [f"no artifact cache at {cache.root} yet; `bench run` creates it."], 0
    inv = inventory(cache, runs_dirs)
    if action == "ls":
        return listing(inv), 0
    if action == "verify":
        bad = check_all(inv)
        lines = [f"bad: {e.kind}/{e.key}: {problem}" for e, problem in bad]
        lines.append(f"{len(inv.entries) - len(bad)} of {len(inv.entries)} artifacts match their manifests"
                     + (f"; {len(bad)} do not (a run rebuilds a bad artifact it needs; `bench cache gc` removes "
                        f"unreferenced ones)" if bad else ""))
        return lines, 1 if bad else 0
    doomed = collect_garbage(cache, runs_dirs, dry_run=dry_run, min_age_s=min_age_s)
    verb = "would remove" if dry_run else "removed"
    lines = [f"{verb} {e.kind}/{e.key} ({human_bytes(e.bytes)})" for e in doomed]
    freed = sum(e.bytes for e in doomed)
    lines.append(f"{verb} {len(doomed)} unreferenced artifacts, {'would free' if dry_run else 'freed'} "
                 f"{human_bytes(freed)} ({freed} bytes); references read from "
                 f"{', '.join(str(d) for d in runs_dirs)}")
    return lines, 0
