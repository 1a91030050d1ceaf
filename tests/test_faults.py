"""Faults outside the code: committed results tampered with, and a disk that fills up during a write. Each is
detected, named with its path, and exits 1; nothing partial is left behind."""

import errno
import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from bench.cli import main
from bench.errors import RuntimeFailure
from bench.lm import rlhf
from bench.storage.artifacts import ArtifactCache, atomic_write_bytes, verify
from bench.storage.results import read_result, record_failures, write_result

REPO = Path(__file__).resolve().parent.parent


def committed_copy(tmp_path: Path, task: str) -> tuple[Path, list[Path]]:
    """A copy of the committed results of one task (with the cache its leaderboard reads), and its trial files."""
    results = tmp_path / "results"
    shutil.copytree(REPO / "results" / task, results / task)
    shutil.copytree(REPO / "results" / "cache", results / "cache")
    group = results / task / json.loads((results / task / "latest.json").read_text())["group"]
    return results, sorted((group / "trials").glob("*.json"))


def leaderboard(results: Path, out: Path, task: str) -> int:
    return main(["leaderboard", "--task", task, "--runs-dir", str(results), "--leaderboards-dir", str(out)])


def test_tampered_committed_results_fail_the_leaderboard_naming_every_damaged_file(tmp_path, capsys):
    results, trials = committed_copy(tmp_path, "detox")
    altered, deleted, failed = trials[0], trials[1], trials[2]
    text = altered.read_text()
    at = text.index('"test": [') + len('"test": [')  # one digit of one stored reward
    altered.write_text(text[:at] + ("1" if text[at] != "1" else "2") + text[at + 1:])
    deleted.unlink()
    assert leaderboard(results, tmp_path / "lb", "detox") == 1
    err = capsys.readouterr().err
    assert f"{altered} (its checksum does not match its contents)" in err
    assert f"{deleted} (it is missing)" in err
    assert "2 stored trial result(s)" in err and failed.name not in err
    assert not (tmp_path / "lb").exists()  # no leaderboard is built around the holes

    shutil.copy2(REPO / altered.relative_to(tmp_path), altered)
    shutil.copy2(REPO / deleted.relative_to(tmp_path), deleted)
    realigned = sorted((altered.parent.parent / "rerlhf").glob("*.json"))[0]
    realigned.write_bytes(realigned.read_bytes()[:200])  # a truncated re-alignment result is damage too
    assert leaderboard(results, tmp_path / "lb", "detox") == 1
    assert f"{realigned} (it is unreadable (JSONDecodeError))" in capsys.readouterr().err

    # A trial that failed is no damage: its file is intact, and the leaderboard lists it under its method.
    shutil.copy2(REPO / realigned.relative_to(tmp_path), realigned)
    payload = read_result(failed)
    write_result(failed, {**payload, "status": "failed", "error": "RuntimeError: deliberate"})
    assert leaderboard(results, tmp_path / "lb", "detox") == 0
    rows = json.loads((tmp_path / "lb/detox.json").read_text())["rows"]
    row = next(r for r in rows if r["method"] == payload["method"])
    assert row["failures"] == [{"trial_id": failed.stem, "seed": payload["seed"], "error": "RuntimeError: deliberate"}]
    assert row["n_seeds"] == len(row["trial_ids"]) - 1


def full_disk(monkeypatch):
    """Every fsync fails as on a full disk (the write itself was buffered, as a kernel does)."""
    def no_space(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    monkeypatch.setattr(os, "fsync", no_space)


def test_full_disk_during_a_write_names_path_and_size_and_keeps_the_old_file(tmp_path, monkeypatch):
    target = tmp_path / "board.json"
    target.write_bytes(b"old")
    full_disk(monkeypatch)
    with pytest.raises(RuntimeFailure, match=f"no space left on the device to write 1,234 bytes to {target} .*"
                                             f"the old file is unchanged"):
        atomic_write_bytes(target, b"x" * 1234)
    with pytest.raises(RuntimeFailure, match=f"to {tmp_path / 'trial.json'} .*nothing was written"):
        write_result(tmp_path / "trial.json", {"status": "ok"})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["board.json"]  # no temporary file left
    assert target.read_bytes() == b"old"


def test_full_disk_during_an_artifact_build_leaves_a_cache_that_verifies(tmp_path, monkeypatch):
    cache = ArtifactCache(tmp_path)
    kept = cache.get_or_build("demo", {"n": 1}, lambda d: (d / "a.txt").write_text("kept"))

    def build(directory):
        (directory / "first.txt").write_text("written before the disk filled")
        full_disk(monkeypatch)
        atomic_write_bytes(directory / "second.bin", b"\0" * 4096)

    with pytest.raises(RuntimeFailure, match="4,096 bytes to .*second.bin"):
        cache.get_or_build("demo", {"n": 2}, build)
    monkeypatch.undo()

    def stage_writes_itself(directory):  # a stage's own writer (np.save, save_pretrained) hits the full disk
        raise OSError(errno.ENOSPC, "No space left on device", str(directory / "weights.bin"))

    with pytest.raises(RuntimeFailure, match="no space left on the device to build artifact demo/.*partial build"):
        cache.get_or_build("demo", {"n": 3}, stage_writes_itself)
    assert [a.key for a in cache.entries()] == [kept.key] and verify(kept.path) is None
    assert sorted(p.name for p in (tmp_path / "demo").iterdir() if not p.name.endswith(".lock")) == [kept.key]
    assert cache.get_or_build("demo", {"n": 2}, lambda d: (d / "x").write_text("y")).file("x").read_text() == "y"


def test_full_disk_exits_1_through_the_cli_with_nothing_partial(tmp_path, monkeypatch, capsys):
    full_disk(monkeypatch)
    runs = tmp_path / "runs"
    assert main(["run", "--task", "synthetic", "--profile", "tiny", "--methods", "random",
                 "--runs-dir", str(runs), "--leaderboards-dir", str(tmp_path / "lb")]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: no space left on the device to write ") and "runs/cache/demos/" in err
    assert len(err.splitlines()) == 1
    assert not [p for p in runs.rglob("*") if p.is_file() and not p.name.endswith(".lock")]


def _namespaces_work() -> bool:
    try:
        return subprocess.run(["unshare", "-rm", "true"], capture_output=True, timeout=30).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


@pytest.mark.skipif(not _namespaces_work(), reason="needs unprivileged user namespaces (unshare -rm) for a tmpfs")
def test_real_full_disk_while_building_the_task_data(tmp_path):
    """A real 64 KiB tmpfs (mounted in a user namespace, no root needed): the demonstrations fit, a later artifact
    does not. Exit 1 naming the file; what was built verifies; no temporary file or build directory is left."""
    disk = tmp_path / "disk"
    disk.mkdir()
    check = ("import json, sys, pathlib; from bench.storage.artifacts import verify; root = pathlib.Path(sys.argv[1]);"
             "print(json.dumps({'files': sorted(str(p.relative_to(root)) for p in root.rglob('*') if p.is_file()),"
             "'problems': [verify(p) for p in root.glob('cache/*/*') if not p.name.startswith('.')]}))")
    script = (f"mount -t tmpfs -o size=64k tmpfs {disk} || exit 99; "
              f"{sys.executable} -m bench.cli run --task synthetic --profile tiny --methods random "
              f"--runs-dir {disk}/runs --leaderboards-dir {disk}/lb; echo rc=$?; "
              f"{sys.executable} -c \"{check}\" {disk}/runs")
    done = subprocess.run(["unshare", "-rm", "sh", "-c", script], cwd=REPO, capture_output=True, text=True,
                          env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=300)
    if done.returncode == 99:
        pytest.skip("tmpfs cannot be mounted here")
    rc, state = done.stdout.strip().splitlines()[-2:]
    assert rc == "rc=1", done.stderr
    err = [line for line in done.stderr.splitlines() if line.startswith("error: ")]
    assert len(err) == 1 and "no space left on the device to write " in err[0] and f"{disk}/runs/cache/" in err[0]
    state = json.loads(state)
    assert any(f.startswith("cache/demos/") and f.endswith("/demos.json") for f in state["files"])
    assert not [f for f in state["files"] if ".tmp" in f or ".building." in f]
    assert state["problems"] and all(p is None for p in state["problems"])


def test_a_trial_error_ray_cannot_read_back_becomes_the_recorded_cause(tmp_path):
    """A full disk can leave Ray's stored error of a failed trial empty, and reading it back raises EOFError: the
    executor records that as the trial's cause (never an EOFError in the driver); a lost trial gets a failed result
    naming it, a trial that finished keeps its result, and a trial that never ran (no error seen) gets no file."""
    from bench.execution.executor import failure_cause  # loads Ray's tune: only this test needs it

    class Unreadable:
        pickled_error_file = str(tmp_path / "error.pkl")

        def get_pickled_error(self):
            raise EOFError("Ran out of input")

    cause = failure_cause(Unreadable())
    assert cause == (f"the trial failed and Ray could not read back its error (EOFError reading {tmp_path}/error.pkl;"
                     f" is the disk full?)")

    class Spec:
        def __init__(self, trial_id, seed):
            self.trial_id, self.seed = trial_id, seed

        def to_json(self):
            return {"method": "m", "config": {}, "seed": self.seed, "task": {"name": "t"}}

    lost, finished, never_ran = Spec("lost", 0), Spec("finished", 1), Spec("never_ran", 2)
    write_result(tmp_path / "finished.json", {"status": "ok", "seed": 1})
    causes = {str(tmp_path / "lost.json"): cause, str(tmp_path / "finished.json"): "a later retry failed"}
    record_failures([lost, finished, never_ran], tmp_path, causes)
    assert read_result(tmp_path / "lost.json") == {"trial_id": "lost", "method": "m", "config": {}, "seed": 0,
                                                   "status": "failed", "error": cause}
    assert read_result(tmp_path / "finished.json") == {"status": "ok", "seed": 1}
    assert not (tmp_path / "never_ran.json").exists()


# A stand-in for RL training (bench/lm/rlhf.py train_policy) with its outputs: it asks the reward for one batch, then
# writes the policy's weights in two halves and recipe.json. With KILL set, the process dies (os._exit, no cleanup)
# between the halves, as a killed re-alignment would.
FAKE_RLHF = textwrap.dedent('''
    import hashlib, json, os, sys
    from pathlib import Path

    from bench.lm import realign as realign_module, rlhf

    def fake_train_policy(out, base_dir, reward_fn, prompts, recipe, progress=None):
        reward_fn(prompts[:2], ["a b", "c"])
        weights = b"".join(hashlib.sha256(f"{recipe.seed}:{i}".encode()).digest() for i in range(4096))
        (out / "model").mkdir()
        with open(out / "model" / "model.safetensors", "wb") as fh:
            fh.write(weights[: len(weights) // 2])
            fh.flush()
            if os.environ.get("KILL"):
                os._exit(9)
            fh.write(weights[len(weights) // 2 :])
        (out / "recipe.json").write_text(json.dumps({"seed": recipe.seed}))
        return [{"step": 1, "loss": 0.5}]

    class LengthReward:
        def score(self, prompts, completions):
            return [float(len(c)) for c in completions]

    def realign_once(cache):
        recipe = rlhf.recipe_from({"steps": 2, "seed": 3})
        return realign_module.realign("base-dir", {"hub": "base"}, LengthReward(), {"method": "length"},
                                      ["p1", "p2", "p3"], recipe, cache)

    if __name__ == "__main__":
        from bench.storage.artifacts import ArtifactCache
        rlhf.train_policy = fake_train_policy
        realign_once(ArtifactCache(sys.argv[1]))
''')


def test_a_realignment_killed_mid_training_is_never_read_and_rebuilds_the_same(tmp_path, monkeypatch):
    """bench/lm/realign.py builds the re-aligned policy through the artifact cache: killed halfway through writing
    its weights, it leaves no artifact that a reader could open (only a build directory), and the rerun removes
    that, builds it whole and verified, byte for byte what an uninterrupted build gives."""
    script = tmp_path / "fake_rlhf.py"
    script.write_text(FAKE_RLHF)
    root = tmp_path / "cache"
    killed = subprocess.run([sys.executable, str(script), str(root)], env={**os.environ, "KILL": "1"},
                            cwd=REPO, capture_output=True, text=True, timeout=300)
    assert killed.returncode == 9, killed.stderr
    [partial] = (root / "realigned").glob(".*.building.*")
    assert (partial / "model/model.safetensors").stat().st_size == 4096 * 32 // 2  # it died mid-write
    key = partial.name.split(".")[1]
    assert [p.name for p in (root / "realigned").iterdir() if not p.name.startswith(".")] == []
    with pytest.raises(FileNotFoundError, match=f"artifact realigned/{key} cannot be used: it does not exist"):
        ArtifactCache(root).load("realigned", key)  # what a re-alignment trial's reader calls

    monkeypatch.syspath_prepend(str(tmp_path))
    import fake_rlhf  # written above

    monkeypatch.setattr(rlhf, "train_policy", fake_rlhf.fake_train_policy)
    realign_once = fake_rlhf.realign_once
    rerun = realign_once(ArtifactCache(root))
    uninterrupted = realign_once(ArtifactCache(tmp_path / "fresh"))
    assert rerun.artifact.key == key == uninterrupted.artifact.key
    assert not partial.exists() and verify(rerun.artifact.path) is None
    files = sorted(p.relative_to(rerun.artifact.path) for p in rerun.artifact.path.rglob("*") if p.is_file())
    assert Path("model/model.safetensors") in files and len(files) == 5  # weights, recipe, curve, realign, manifest
    for name in files:
        if name.name != "manifest.json":  # which records the build's own duration
            assert (rerun.artifact.path / name).read_bytes() == (uninterrupted.artifact.path / name).read_bytes()
