"""Frozen configurations: the best configuration a `bench sweep` found, one file per task, profile and method
(`tuned/<task>/<profile>/<method>.json`), which `bench run` then uses on fresh confirmation seeds."""

from __future__ import annotations

import json
from pathlib import Path

from bench.storage.artifacts import atomic_write_json


def frozen_path(tuned_dir: Path, task: str, profile: str, method: str) -> Path:
    return Path(tuned_dir) / task / profile / f"{method}.json"


def write_frozen(tuned_dir: Path, record: dict) -> Path:
    path = frozen_path(tuned_dir, record["task"], record["profile"], record["method"])
    atomic_write_json(path, record)
    return path


def load_frozen(tuned_dir: Path, task: str, method: str, profile: str) -> dict | None:
    """The frozen configuration of a method for a task and profile, if a sweep of that profile produced one."""
    path = frozen_path(tuned_dir, task, profile, method)
    if not path.exists():
        return None
    frozen = json.loads(path.read_text())
    if frozen.get("profile") != profile:
        return None
    return frozen | {"path": str(path)}
