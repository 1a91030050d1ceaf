"""Frozen configurations: the best configuration a `bench sweep` found, one file per task, profile and method
(`tuned/<task>/<profile>/<method>.json`), which `bench run` then uses on fresh confirmation seeds."""

from __future__ import annotations

import json
from pathlib import Path

from bench.storage.artifacts import atomic_write_json

MAIN_HEAD = "linear"  # the reward-model class of the main boards; another class is its own group and tuning


def class_group(profile: str, head: str = MAIN_HEAD) -> str:
    """The folder of a profile's runs, sweeps and frozen configs for one reward-model class: the profile itself for
    the main class, `<profile>+<head>` for another — so methods are compared and tuned within one class."""
    return profile if head == MAIN_HEAD else f"{profile}+{head}"


def frozen_path(tuned_dir: Path, task: str, profile: str, method: str, head: str = MAIN_HEAD) -> Path:
    return Path(tuned_dir) / task / class_group(profile, head) / f"{method}.json"


def write_frozen(tuned_dir: Path, record: dict) -> Path:
    path = frozen_path(tuned_dir, record["task"], record["profile"], record["method"],
                       record.get("head", MAIN_HEAD))
    atomic_write_json(path, record)
    return path


def load_frozen(tuned_dir: Path, task: str, method: str, profile: str, head: str = MAIN_HEAD) -> dict | None:
    """The frozen configuration of a method for a task, profile and reward-model class, if a sweep of that
    profile and class produced one."""
    path = frozen_path(tuned_dir, task, profile, method, head)
    if not path.exists():
        return None
    frozen = json.loads(path.read_text())
    if frozen.get("profile") != profile:
        return None
    return frozen | {"path": str(path)}
