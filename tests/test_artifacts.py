"""The content-addressed cache: reuse, atomicity, corruption detection."""

import logging
import sys

import pytest

from bench.storage.artifacts import ArtifactCache, verify


def write(text):
    def build(directory):
        (directory / "data.txt").write_text(text)
    return build


def test_same_inputs_reuse_different_inputs_rebuild(tmp_path):
    cache = ArtifactCache(tmp_path)
    calls = []

    def build(directory):
        calls.append(1)
        (directory / "data.txt").write_text("x")

    a = cache.get_or_build("demo", {"n": 1}, build)
    b = cache.get_or_build("demo", {"n": 1}, build)
    c = cache.get_or_build("demo", {"n": 2}, build)
    assert a == b and a.key != c.key and len(calls) == 2
    assert a.manifest["inputs"] == {"n": 1} and "data.txt" in a.manifest["files"]


def test_failed_build_leaves_nothing(tmp_path):
    cache = ArtifactCache(tmp_path)

    def broken(directory):
        (directory / "half.txt").write_text("partial")
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        cache.get_or_build("demo", {"n": 1}, broken)
    assert cache.entries() == []
    assert not any(p.name.endswith(".txt") for p in tmp_path.rglob("*"))


@pytest.mark.parametrize("damage", ["truncate", "alter", "delete"])
def test_corrupted_artifact_is_named_and_rebuilt(tmp_path, caplog, damage):
    cache = ArtifactCache(tmp_path)
    art = cache.get_or_build("demo", {"n": 1}, write("original content"))
    target = art.file("data.txt")
    if damage == "truncate":
        target.write_text("orig")
    elif damage == "alter":
        target.write_text("Original content")
    else:
        target.unlink()
    assert verify(art.path) is not None
    with caplog.at_level(logging.WARNING):
        again = cache.get_or_build("demo", {"n": 1}, write("original content"))
    assert f"demo/{art.key} is corrupted" in caplog.text
    assert again.file("data.txt").read_text() == "original content"
    assert verify(again.path) is None


def test_load_refuses_a_corrupted_artifact(tmp_path):
    cache = ArtifactCache(tmp_path)
    art = cache.get_or_build("demo", {"n": 1}, write("abc"))
    art.file("data.txt").write_text("abd")
    with pytest.raises(FileNotFoundError, match="does not match its recorded hash"):
        cache.load("demo", art.key)


def test_locate_rewrites_recorded_paths_of_a_moved_cache(tmp_path):
    old = ArtifactCache(tmp_path / "old" / "cache")
    model = old.get_or_build("model", {"x": 1}, lambda d: (d / "model").mkdir())
    recorded = str(model.path / "model")
    (tmp_path / "old").rename(tmp_path / "elsewhere")  # the cache moved (or is mounted at another path)
    moved = ArtifactCache(tmp_path / "elsewhere" / "cache")
    assert moved.locate(recorded) == str(moved.path("model", model.key) / "model")
    assert moved.locate("EleutherAI/pythia-70m") == "EleutherAI/pythia-70m"  # a hub id is not a path
    assert moved.locate(str(tmp_path / "nowhere" / "x")) == str(tmp_path / "nowhere" / "x")  # unknown: unchanged
    present = str(moved.path("model", model.key))
    assert moved.locate(present) == present


def test_an_artifact_built_on_a_gpu_never_shares_a_key_with_a_cpu_built_one(tmp_path, monkeypatch):
    """GPU arithmetic differs from the CPU's in the last bits, so a GPU process keys its artifacts by the GPU's
    name (and records it in the manifest); CPU keys stay as they were; downloaded assets are the same everywhere."""
    from types import SimpleNamespace

    from bench import CODE_VERSION
    from bench.storage.artifacts import content_hash

    cache, build = ArtifactCache(tmp_path), write("x")
    on_cpu = cache.get_or_build("samples", {"n": 1}, build)
    assert on_cpu.key == content_hash({"kind": "samples", "inputs": {"n": 1}, "code_version": CODE_VERSION})
    asset_on_cpu = cache.get_or_build("asset", {"n": 1}, build)

    fake_torch = SimpleNamespace(cuda=SimpleNamespace(is_available=lambda: True, get_device_name=lambda: "H200"))
    monkeypatch.setitem(sys.modules, "torch", fake_torch)
    on_gpu = cache.get_or_build("samples", {"n": 1}, build)
    assert on_gpu.key != on_cpu.key and on_gpu.manifest["inputs"] == {"n": 1, "device": "H200"}
    assert cache.get_or_build("asset", {"n": 1}, build) == asset_on_cpu
    fake_torch.cuda.is_available = lambda: False  # a Ray trial the GPU is hidden from computes on the CPU
    assert cache.get_or_build("samples", {"n": 1}, build) == on_cpu
