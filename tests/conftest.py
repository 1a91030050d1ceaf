"""Shared test settings: offline, one thread per process, Ray without auth tokens."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(1)


@pytest.fixture(scope="session")
def synthetic_tiny(tmp_path_factory):
    """The synthetic task's `tiny` profile, built once per test session: (task, TaskData)."""
    from bench import registry
    from bench.artifacts import ArtifactCache

    task = registry.get_task("synthetic")
    cache = ArtifactCache(tmp_path_factory.mktemp("cache"))
    return task, task.build("tiny", task.config("tiny"), cache)


@pytest.fixture(scope="session")
def synthetic_default(tmp_path_factory):
    from bench import registry
    from bench.artifacts import ArtifactCache

    task = registry.get_task("synthetic")
    cache = ArtifactCache(tmp_path_factory.mktemp("cache"))
    return task, task.build("default", task.config("default"), cache)
