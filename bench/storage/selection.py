"""The record of one `bench run`: what it selected (task data, methods, configs, seeds, trial ids, re-alignment
trials, bootstrap settings, provenance). Written by bench/execution/run.py as `<group>/selection.json`; read by
the leaderboard, `bench publish` and `bench compare`, which rebuild everything from it and the trial results."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from bench.data import TaskData
from bench.storage.artifacts import atomic_write_json

FILE = "selection.json"


@dataclass(frozen=True)
class MethodSelection:
    config: dict
    trial_ids: list[str]
    tuning: dict = field(default_factory=lambda: {"source": "defaults"})  # defaults, or the frozen sweep's record


@dataclass(frozen=True)
class Selection:
    task_data: TaskData
    task_config: dict
    seeds: list[int]
    methods: dict[str, MethodSelection]
    bootstrap: dict  # {"resamples": n, "seed": s}
    provenance: dict
    realign_mode: str = "off"  # rloo, grpo, bon or off
    realign_trial_ids: dict[str, list[str]] = field(default_factory=dict)

    def to_json(self) -> dict:
        return {
            "task_data": self.task_data.to_json(),
            "task_config": self.task_config,
            "seeds": self.seeds,
            "methods": {m: {"config": s.config, "trial_ids": s.trial_ids, "tuning": s.tuning}
                        for m, s in self.methods.items()},
            "bootstrap": self.bootstrap,
            "rerlhf": {"mode": self.realign_mode, "trial_ids": self.realign_trial_ids},
            "provenance": self.provenance,
        }

    @classmethod
    def from_json(cls, obj: dict) -> "Selection":
        realign = obj.get("rerlhf", {"mode": "off", "trial_ids": {}})
        return cls(
            task_data=TaskData.from_json(obj["task_data"]),
            task_config=obj["task_config"],
            seeds=obj["seeds"],
            methods={m: MethodSelection(e["config"], e["trial_ids"], e.get("tuning", {"source": "defaults"}))
                     for m, e in obj["methods"].items()},
            bootstrap=obj["bootstrap"],
            provenance=obj["provenance"],
            realign_mode=realign["mode"],
            realign_trial_ids=realign["trial_ids"],
        )

    def write(self, group_dir: Path) -> None:
        atomic_write_json(Path(group_dir) / FILE, self.to_json())

    @classmethod
    def read(cls, group_dir: Path) -> "Selection":
        return cls.from_json(json.loads((Path(group_dir) / FILE).read_text()))
