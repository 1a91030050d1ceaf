"""The synthetic task: an exactly tilted expert, disjoint splits, stressors, and no ground truth in the demos."""

import json

import numpy as np
import pytest

from bench import registry
from bench.data import Completions, Demonstrations, Split
from bench.storage.artifacts import ArtifactCache
from bench.task import split_fingerprints
from tasks.synthetic import SyntheticWorld


def test_expert_is_exactly_tilted():
    task = registry.get_task("synthetic")
    cfg = task.config("default", {"beta": 0.5})
    world = SyntheticWorld(cfg)
    # log π_E − log π₀ − θ/β is a per-prompt constant (−log Z_x) for every token
    gap = np.log(world.expert_probs) - np.log(world.base_probs) - world.theta / cfg.beta
    assert np.allclose(gap, gap[:, :1])


def test_expert_samples_follow_the_tilted_distribution(synthetic_default):
    task, data = synthetic_default
    cfg = task.config("default")
    world = SyntheticWorld(cfg)
    demos = data.demos()
    index = {tok: i for i, tok in enumerate(world.vocab)}
    expected, counts = np.zeros(cfg.vocab_size), np.zeros(cfg.vocab_size)
    for split in demos.splits.values():
        for prompt, text, source in zip(split.items.prompts, split.items.texts, split.items.sources):
            if source != "expert":
                continue
            expected += cfg.completion_length * world.expert_probs[world.prompts.index(prompt)]
            for tok in text.split():
                counts[index[tok]] += 1
    z = (counts - expected) / np.sqrt(expected)
    assert np.max(np.abs(z)) < 5, z  # Poisson z-scores of the token counts


def test_splits_are_disjoint_and_expert_is_better(synthetic_default):
    _, data = synthetic_default
    demos = data.demos()
    prompts = {s: set(demos.splits[s].items.prompts) for s in ("train", "val", "test")}
    assert not (prompts["train"] & prompts["val"]) and not (prompts["train"] & prompts["test"])
    assert not (prompts["val"] & prompts["test"])
    assert set(data.summary["split_hashes"]) == {"train", "val", "test"}
    test_stats = data.summary["splits"]["test"]
    assert test_stats["expert_mean_reward"] > test_stats["base_mean_reward"] + 0.5
    assert test_stats["expert_bad_rate"] < test_stats["base_bad_rate"]


def test_overlapping_splits_are_refused():
    items = Completions([0], ["prompt-1"], ["w1"], ["base"])
    split = Split(items, [])
    with pytest.raises(RuntimeError, match="share 1 prompts"):
        split_fingerprints(Demonstrations({"train": split, "val": split, "test": split}, {}))


def test_demonstrations_carry_no_ground_truth(synthetic_tiny):
    _, data = synthetic_tiny
    cache = ArtifactCache(data.cache_root)
    text = cache.load("demos", data.demos_key).file("demos.json").read_text()
    obj = json.loads(text)
    assert set(obj) == {"splits", "encoder"}
    for split in obj["splits"].values():
        assert set(split) == {"items", "pairs"}
        assert set(split["items"]) == {"prompt_ids", "prompts", "texts", "sources"}


def test_ground_truth_function_matches_stored_truth(synthetic_tiny):
    task, data = synthetic_tiny
    truth = ArtifactCache(data.cache_root).load("truth", data.truth_key).read_json("truth.json")
    items = data.demos().splits["test"].items
    scored = task.ground_truth(data).score(items.prompts, items.texts)
    assert np.allclose(scored, truth["test"]["reward"])


def test_same_config_same_data_other_seed_other_data(tmp_path):
    task = registry.get_task("synthetic")
    a = task.build("tiny", task.config("tiny"), ArtifactCache(tmp_path / "a"))
    b = task.build("tiny", task.config("tiny"), ArtifactCache(tmp_path / "b"))
    c = task.build("tiny", task.config("tiny", {"data_seed": "1"}), ArtifactCache(tmp_path / "a"))
    read = lambda d: (ArtifactCache(d.cache_root).load("demos", d.demos_key).file("demos.json").read_bytes())  # noqa
    assert a.demos_key == b.demos_key and read(a) == read(b)
    assert c.demos_key != a.demos_key and read(c) != read(a)


def test_label_noise_flips_the_declared_share(tmp_path):
    task = registry.get_task("synthetic")
    data = task.build("noisy", task.config("noisy"), ArtifactCache(tmp_path))
    split = data.demos().splits["train"]
    flipped = np.mean([split.items.sources[c] == "base" for c, _ in split.pairs])
    n = len(split.pairs)
    assert abs(flipped - 0.2) < 4 * np.sqrt(0.2 * 0.8 / n)
    assert data.summary["splits"]["train"]["flipped_pairs"] == round(flipped * n)
    test_split = data.demos().splits["test"]
    assert all(test_split.items.sources[c] == "expert" for c, _ in test_split.pairs)  # test pairs stay clean


def test_scarce_informative_pairs(tmp_path):
    task = registry.get_task("synthetic")
    data = task.build("scarce", task.config("scarce"), ArtifactCache(tmp_path))
    stats = data.summary["splits"]["train"]
    assert stats["informative_pairs"] <= 0.05 * stats["pairs"] + 1
    full = data.summary["splits"]["val"]  # other splits keep their natural share
    assert full["informative_pairs"] > 0.1 * full["pairs"]
