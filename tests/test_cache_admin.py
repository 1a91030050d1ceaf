"""`bench cache ls|verify|gc` and `bench env` on a small real cache: the synthetic `tiny` task data of a stored run,
a chain of artifacts that name each other by key and by path, an orphan and a corrupted artifact."""

import json
import os
import time
from pathlib import Path

import pytest

from bench import registry
from bench.cli import main
from bench.data import TaskData
from bench.lm.bf16 import fast_bf16_hardware
from bench.storage import cache_admin
from bench.storage.artifacts import atomic_write_json, cache_for, file_lock
from bench.storage.selection import Selection


def put(cache, kind, inputs, size=1000):
    return cache.get_or_build(kind, inputs, lambda d: (d / "blob.bin").write_bytes(os.urandom(size)))


@pytest.fixture()
def world(tmp_path, monkeypatch):
    """runs/ with one stored run (synthetic tiny) whose task data also names `top`, which was built from `middle` (by
    key) and `bottom` (by a path inside it); plus an orphan and an orphan built from `bottom`."""
    monkeypatch.delenv("IRL_BENCH_CACHE", raising=False)
    runs = tmp_path / "runs"
    cache = cache_for(runs)
    task = registry.get_task("synthetic")
    data = task.build("tiny", task.config("tiny"), cache)
    bottom = put(cache, "tiny_lm", {"seed": 0})
    middle = put(cache, "samples", {"policy": {"tiny_lm": bottom.key}})
    top = put(cache, "features", {"samples": middle.key, "backbone": str(bottom.path / "blob.bin")})
    orphan = put(cache, "samples", {"policy": "elsewhere"}, size=5000)
    derived = put(cache, "judged", {"policy": {"tiny_lm": bottom.key}}, size=3000)  # built from a needed one
    data = TaskData(**{**data.to_json(), "artifacts": {**data.artifacts, "features": top.key}})
    Selection(data, {}, [0], {}, {"resamples": 100, "seed": 0}, {}).write(runs / "synthetic" / "tiny")
    atomic_write_json(runs / "synthetic" / "latest.json", {"group": "tiny"})
    world_only = put(cache, "policies", {"world": "clean"})  # named only by a nested run group (bench worlds)
    nested = TaskData(**{**data.to_json(), "artifacts": {"policies": world_only.key}})
    Selection(nested, {}, [0], {}, {"resamples": 100, "seed": 0}, {}).write(runs / "worlds/synthetic/world-clean")
    keep = {data.demos_key, data.truth_key, data.artifacts["policies"], top.key, middle.key, bottom.key,
            world_only.key}
    return runs, cache, keep, {orphan.key: orphan, derived.key: derived}, data


def cache_cli(*args, capsys):
    code = main(["cache", *args])
    return code, capsys.readouterr().out


def test_inventory_follows_references_transitively(world):
    runs, cache, keep, orphans, data = world
    inv = cache_admin.inventory(cache, [runs])
    assert {e.key for e in inv.entries} == keep | set(orphans)
    assert {k for k, users in inv.needed_by.items() if users} == keep
    world_only = {k for k in keep if inv.needed_by[k] == {"worlds/synthetic/world-clean"}}
    assert len(world_only) == 1
    assert all(inv.needed_by[k] == {"synthetic/tiny"} for k in keep - world_only - {data.demos_key, data.truth_key})
    assert inv.needed_by[data.demos_key] == {"synthetic/tiny", "worlds/synthetic/world-clean"}
    assert {e.key for e in inv.unreferenced()} == set(orphans)


def test_ls_lists_every_artifact_with_its_users(world, capsys):
    runs, cache, keep, orphans, data = world
    code, out = cache_cli("ls", "--runs-dir", str(runs), capsys=capsys)
    assert code == 0
    lines = {line.split()[1]: line for line in out.splitlines()[1:-1]}
    assert set(lines) == keep | set(orphans)
    assert lines[data.demos_key].startswith("demos ")
    assert lines[data.demos_key].endswith("synthetic/tiny, worlds/synthetic/world-clean")
    assert all(lines[k].endswith("nothing (gc removes it)") for k in orphans)
    freed = cache_admin.human_bytes(sum(cache_admin._size(o.path)[1] for o in orphans.values()))
    assert f"{len(keep) + len(orphans)} artifacts" in out and f"2 unreferenced ({freed})" in out


def test_verify_names_each_bad_artifact_and_exits_1(world, capsys):
    runs, cache, keep, orphans, data = world
    assert cache_cli("verify", "--runs-dir", str(runs), capsys=capsys)[0] == 0
    truth_file = next(p for p in cache.path("truth", data.truth_key).iterdir() if p.name != "manifest.json")
    truth_file.write_bytes(truth_file.read_bytes() + b" ")
    orphan = next(iter(orphans.values()))
    (orphan.path / "manifest.json").unlink()
    code, out = cache_cli("verify", "--runs-dir", str(runs), capsys=capsys)
    assert code == 1
    bad = sorted(line for line in out.splitlines() if line.startswith("bad: "))
    assert bad == sorted([f"bad: truth/{data.truth_key}: {truth_file.name} does not match its recorded hash",
                          f"bad: {orphan.kind}/{orphan.key}: its manifest is missing"])


def test_gc_removes_only_unreferenced_artifacts(world, capsys):
    runs, cache, keep, orphans, data = world
    freed = sum(cache_admin._size(o.path)[1] for o in orphans.values())
    code, out = cache_cli("gc", "--runs-dir", str(runs), capsys=capsys)  # everything is younger than an hour
    assert code == 0 and "removed 0 unreferenced artifacts" in out

    code, out = cache_cli("gc", "--runs-dir", str(runs), "--dry-run", "--min-age", "0", capsys=capsys)
    assert code == 0 and f"would free {cache_admin.human_bytes(freed)} ({freed} bytes)" in out
    assert all(o.path.exists() for o in orphans.values())

    code, out = cache_cli("gc", "--runs-dir", str(runs), "--min-age", "0", capsys=capsys)
    assert code == 0 and f"removed 2 unreferenced artifacts, freed {cache_admin.human_bytes(freed)}" in out
    assert not any(o.path.exists() for o in orphans.values())
    assert {e.key for e in cache_admin.entries(cache)} == keep
    assert not list(cache.root.glob("*/.*.deleting.*"))
    assert cache.load("demos", data.demos_key) and cache.load("truth", data.truth_key)  # intact and verified


def test_gc_waits_for_a_running_build_or_run(world, capsys):
    runs, cache, keep, orphans, _ = world
    for lock in (runs / "synthetic/tiny/.lock", runs / "synthetic/first-run/.lock", orphan_lock(cache, orphans)):
        with file_lock(lock):  # a `bench run` running trials (a rerun, a first run), a build in progress
            code = main(["cache", "gc", "--runs-dir", str(runs), "--min-age", "0"])
            err = capsys.readouterr().err
            assert code == 1 and "in progress" in err and str(lock) in err
            assert cache_cli("gc", "--runs-dir", str(runs), "--dry-run", "--min-age", "0", capsys=capsys)[0] == 0
    assert all(o.path.exists() for o in orphans.values())
    orphan = next(iter(orphans.values()))
    old = time.time() - 7200
    os.utime(orphan.path / "manifest.json", (old, old))
    assert [e.key for e in cache_admin.collectable(cache_admin.inventory(cache, [runs]), 3600)] == [orphan.key]


def orphan_lock(cache, orphans):
    orphan = next(iter(orphans.values()))
    return cache.root / orphan.kind / f".{orphan.key}.lock"


def test_cache_commands_refuse_a_missing_runs_dir(tmp_path, capsys):
    assert main(["cache", "gc", "--runs-dir", str(tmp_path / "nosuch")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: --runs-dir") and "is not a directory" in err and len(err.splitlines()) == 1


def test_env_reports_versions_devices_engines_and_the_cache(world, capsys, monkeypatch):
    runs, cache, keep, orphans, _ = world
    assert main(["env", "--json", "--runs-dir", str(runs)]) == 0
    env = json.loads(capsys.readouterr().out)
    assert env["versions"]["numpy"] and env["versions"]["python"].count(".") == 2
    assert env["devices"]["cpus"] == os.cpu_count() and env["devices"]["gpu_count"] == len(env["devices"]["gpus"])
    assert env["generation_engines"]["transformers"] is True
    assert set(env["generation_engines"]) == {"transformers", "ctranslate2", "vllm", "onnxruntime_genai"}
    native_bf16 = fast_bf16_hardware() and not env["devices"]["cuda_available"]
    expected_auto = "transformers-bf16" if native_bf16 else "transformers"
    assert env["engine_choice"] == {"auto": expected_auto, "native_bf16_cpu": fast_bf16_hardware()}
    files = [p for p in cache.root.rglob("*") if p.is_file() and not p.name.startswith(".")]
    assert env["cache"]["root"] == str(cache.root) and env["cache"]["artifacts"] == len(keep) + len(orphans)
    assert env["cache"]["files"] == len(files) and env["cache"]["bytes"] == sum(p.stat().st_size for p in files)

    monkeypatch.setenv("IRL_BENCH_CACHE", str(runs / "elsewhere"))
    assert main(["env", "--runs-dir", str(runs)]) == 0
    out = capsys.readouterr().out
    assert f"  auto               {expected_auto}\n" in out
    assert f"{runs / 'elsewhere'} (from IRL_BENCH_CACHE)" in out and "empty (not created yet)" in out


def test_leaderboard_output_never_targets_the_committed_boards_from_a_runs_dir(tmp_path, monkeypatch):
    from bench.reporting.document import output_of

    monkeypatch.chdir(tmp_path)
    assert output_of(Path("runs"), Path("runs/detox/smoke")) == (Path("runs/leaderboards"), "detox-smoke")
    assert output_of(Path("runs"), Path("runs/synthetic/default")) == (Path("runs/leaderboards"), "synthetic")
    assert output_of(Path("x"), Path("x/detox/default-1a2b3c4d")) == (Path("x/leaderboards"), "detox-default-1a2b3c4d")
    assert output_of(Path("results"), Path("results/detox/default")) == (Path("leaderboards"), "detox")
    assert output_of(tmp_path / "results", Path("results/detox/smoke"), Path("out")) == (Path("out"), "detox")
