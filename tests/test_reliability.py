"""Reliability with real processes: interruptions (SIGINT, SIGKILL) at several points, corrupted results, failing
trials, concurrent runs, the ground-truth quarantine of method code, and determinism across independent runs."""

import ast
import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from bench.cli import main
from bench.storage.artifacts import verify

BENCH = [sys.executable, "-m", "bench.cli"]
REPO = Path(__file__).resolve().parent.parent
# a small run: two trained methods and two baselines, 2 seeds, on the 60-prompt profile
RUN = ["run", "--methods", "bradley_terry,max_margin,random,oracle", "--task", "synthetic", "--profile", "tiny",
       "--seeds", "2", "--bootstrap", "200"]
N_TRIALS = 8


def env(**extra):
    return {**os.environ, "OMP_NUM_THREADS": "1", **extra}


def bench(*args, cwd, extra_env=None):
    return subprocess.run([*BENCH, *args], cwd=cwd, env=env(**(extra_env or {})), capture_output=True, text=True,
                          timeout=600)


def rows(cwd):
    board = json.loads((Path(cwd) / "runs/leaderboards/synthetic-tiny.json").read_text())
    return {r["method"]: (r["metrics"], r["per_seed"], r["n_seeds"]) for r in board["rows"]}


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The run, uninterrupted."""
    cwd = tmp_path_factory.mktemp("reference")
    done = bench(*RUN, cwd=cwd)
    assert done.returncode == 0, done.stderr
    return cwd


def test_unreachable_address_and_missing_gpu_are_bad_input(tmp_path, capsys):
    assert main(["run", "--task", "synthetic", "--address", "127.0.0.1:1", "--runs-dir", str(tmp_path / "r")]) == 2
    assert "cannot reach a Ray cluster at '127.0.0.1:1'" in capsys.readouterr().err
    import torch

    if not torch.cuda.is_available():
        assert main(["run", "--task", "synthetic", "--gpus-per-trial", "1", "--runs-dir", str(tmp_path / "r")]) == 2
        assert "use --gpus-per-trial 0 here" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


def test_method_code_cannot_reach_the_ground_truth():
    """No method module imports the scorer, a task module, or names the truth artifact."""
    forbidden_modules = {"bench.scoring.scorer", "bench.reporting.document", "tasks"}
    for path in sorted((REPO / "methods").glob("*.py")):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            else:
                continue
            for name in names:
                assert not any(name == f or name.startswith(f + ".") for f in forbidden_modules), (path, name)
        strings = [n.value for n in ast.walk(tree) if isinstance(n, ast.Constant) and isinstance(n.value, str)]
        assert not any("truth.json" in s or "truth_key" in s for s in strings), path


def wait_for(predicate, timeout=300):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return False


def start(cwd, args=RUN):
    return subprocess.Popen([*BENCH, *args], cwd=cwd, env=env(), start_new_session=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def trial_files(cwd):
    return {p.name: p.stat().st_mtime_ns for p in (Path(cwd) / "runs/synthetic/tiny/trials").glob("*.json")}


@pytest.mark.slow
@pytest.mark.parametrize("point, sig", [("trials", signal.SIGINT), ("trials", signal.SIGKILL),
                                        ("leaderboard", signal.SIGKILL)])
def test_interrupted_run_completes_on_rerun(tmp_path, reference, sig, point):
    proc = start(tmp_path)
    trials = tmp_path / "runs/synthetic/tiny/trials"
    if point == "trials":
        assert wait_for(lambda: len(list(trials.glob("*.json"))) >= 3)
    else:  # the trials are done and the scorer is building the leaderboard
        assert wait_for(lambda: (tmp_path / "runs/synthetic/tiny/selection.json").exists())
    os.killpg(proc.pid, sig)
    out, err = proc.communicate(timeout=120)
    if sig == signal.SIGINT and point == "trials":
        assert proc.returncode != 0 and "rerun the same command" in err
        assert not (tmp_path / "runs/leaderboards/synthetic-tiny.json").exists()  # no leaderboard from a partial run
    before = trial_files(tmp_path)
    assert before, "some trials had finished"

    again = bench(*RUN, cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    # a Ray worker may still finish the trial it was running after the driver is gone: it is reused too
    reused, to_run = map(int, re.search(r"(\d+) reused, (\d+) to run", again.stdout).groups())
    assert reused >= len(before) and reused + to_run == N_TRIALS
    after = trial_files(tmp_path)
    assert len(after) == N_TRIALS
    assert all(after[name] == mtime for name, mtime in before.items())  # finished trials were not redone
    assert rows(tmp_path) == rows(reference)  # and the result is the uninterrupted run's


@pytest.mark.slow
def test_run_killed_during_the_artifact_build_never_reads_a_partial_artifact(tmp_path):
    args = ["run", "--methods", "random,oracle", "--task", "synthetic", "--profile", "tiny", "--seeds", "1",
            "--bootstrap", "100", "--set", "task.n_prompts=12000", "--set", "task.val_fraction=0.05",
            "--set", "task.test_fraction=0.05"]
    proc = start(tmp_path, args)
    cache = tmp_path / "runs/cache"
    assert wait_for(lambda: any(cache.glob("*/.*.building.*")))
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=60)
    for manifest_dir in [p for p in cache.glob("*/*") if not p.name.startswith(".")]:
        assert verify(manifest_dir) is None  # anything in place is complete
    done = bench(*args, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert not list(cache.glob("*/.*.building.*"))  # the dead builder's leftovers are gone
    assert all(verify(p) is None for p in cache.glob("*/*") if not p.name.startswith("."))


@pytest.mark.slow
def test_corrupted_trial_result_is_named_and_rerun(tmp_path, reference):
    import shutil

    shutil.copytree(reference / "runs", tmp_path / "runs")
    victim = sorted((tmp_path / "runs/synthetic/tiny/trials").glob("*.json"))[0]
    victim.write_text(victim.read_text()[:100])  # truncated
    other = sorted((tmp_path / "runs/synthetic/tiny/trials").glob("*.json"))[1]
    other.write_text(other.read_text().replace('"seed": 0', '"seed": 9').replace('"seed": 1', '"seed": 9'))
    demos = next((tmp_path / "runs/cache/demos").glob("*/demos.json"))
    demos.write_text(demos.read_text().replace("w0", "w9", 1))  # altered artifact

    again = bench(*RUN, cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    for damaged in (victim, other):  # named relative to the working directory, as the user passed --runs-dir
        assert f"{damaged.relative_to(tmp_path)} is corrupted" in again.stderr
    assert "is corrupted" in again.stderr and "demos/" in again.stderr
    assert f"{N_TRIALS} trials: {N_TRIALS - 2} reused, 2 to run" in again.stdout
    assert rows(tmp_path) == rows(reference)


PLUGIN = textwrap.dedent('''
    import errno, os, signal
    from dataclasses import dataclass
    from pathlib import Path

    import bench.storage.artifacts as artifacts
    from bench.kit.reward_models import RandomReward
    from bench.kit.training import IRLMethod
    from bench.registry import register_method

    @dataclass
    class Config:
        pass

    @register_method("always_fails")
    class AlwaysFails(IRLMethod):
        description = "raises on purpose"
        Config = Config

        def fit(self, train, model, cfg, ctx):
            raise RuntimeError("deliberate failure in fit")

    @register_method("killed_once")
    class KilledOnce(IRLMethod):
        description = "on its first attempt at seed 0, SIGKILLs its own Ray worker, as the out-of-memory killer would"
        Config = Config

        def fit(self, train, model, cfg, ctx):
            marker = Path(os.environ["KILL_MARKER"])
            if ctx.seed == 0 and not marker.exists():
                marker.write_text(str(os.getpid()))
                os.kill(os.getpid(), signal.SIGKILL)
            return RandomReward(ctx.seed)

    @register_method("disk_full")
    class DiskFull(IRLMethod):
        description = "at seed 0 its result file meets a full disk (ENOSPC when the worker writes it)"
        Config = Config

        def fit(self, train, model, cfg, ctx):
            if ctx.seed == 0:
                real = artifacts.os.fsync

                def full(fd):
                    artifacts.os.fsync = real  # this write only: the worker runs other trials afterwards
                    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

                artifacts.os.fsync = full
            return RandomReward(ctx.seed)
''')


@pytest.mark.slow
def test_failing_and_killed_trials_are_recorded_and_shown(tmp_path):
    """Through the real executor, inside Ray workers (a third-party plugin loaded through its entry point): a method
    that raises; one whose worker is SIGKILLed mid-trial (it is started again and finishes); one whose result write
    meets a full disk (recorded as failed with that cause, not an EOFError in the driver). The run finishes, and
    every other trial's result exists exactly once."""
    plugin = tmp_path / "plugin"
    (plugin / "failing_plugin-1.0.dist-info").mkdir(parents=True)
    (plugin / "failing_plugin.py").write_text(PLUGIN)
    (plugin / "failing_plugin-1.0.dist-info/METADATA").write_text("Metadata-Version: 2.1\nName: failing-plugin\n"
                                                                  "Version: 1.0\n")
    (plugin / "failing_plugin-1.0.dist-info/entry_points.txt").write_text(
        "[irl_bench.methods]\nalways_fails = failing_plugin\nkilled_once = failing_plugin\n"
        "disk_full = failing_plugin\n")
    cwd = tmp_path / "work"
    cwd.mkdir()
    marker = tmp_path / "killed"
    done = bench("run", "--methods", "always_fails,killed_once,disk_full,bradley_terry", "--task", "synthetic",
                 "--profile", "tiny", "--seeds", "2", "--bootstrap", "100", cwd=cwd,
                 extra_env={"PYTHONPATH": str(plugin), "KILL_MARKER": str(marker)})
    assert done.returncode == 1, done.stderr
    assert "3 trial(s) failed" in done.stdout
    assert marker.exists()  # a worker was killed
    board = json.loads((cwd / "runs/leaderboards/synthetic-tiny.json").read_text())
    by_method = {r["method"]: r for r in board["rows"]}
    for method in ("bradley_terry", "killed_once"):  # the killed trial ran again and finished
        assert by_method[method]["n_seeds"] == 2 and not by_method[method]["failures"], method
    failures = by_method["always_fails"]["failures"]
    assert len(failures) == 2 and all("deliberate failure in fit" in f["error"] for f in failures)
    assert "deliberate failure in fit" in (cwd / "runs/leaderboards/synthetic-tiny.md").read_text()
    [full] = by_method["disk_full"]["failures"]
    assert full["seed"] == 0 and "RuntimeFailure: no space left on the device to write" in full["error"]
    assert by_method["disk_full"]["n_seeds"] == 1
    results = [json.loads(p.read_text())["payload"] for p in (cwd / "runs/synthetic/tiny/trials").glob("*.json")]
    assert sorted((r["method"], r["seed"]) for r in results) == sorted(
        (m, s) for m in ("always_fails", "killed_once", "disk_full", "bradley_terry") for s in (0, 1))


@pytest.mark.slow
def test_two_concurrent_runs_share_a_runs_dir(tmp_path, reference):
    first, second = start(tmp_path), start(tmp_path)
    outputs = [p.communicate(timeout=600) for p in (first, second)]
    assert first.returncode == 0 and second.returncode == 0, outputs
    assert len(trial_files(tmp_path)) == N_TRIALS
    combined = outputs[0][0] + outputs[1][0]
    assert f"{N_TRIALS} trials: {N_TRIALS} reused, 0 to run" in combined  # the second reused the first's work
    assert rows(tmp_path) == rows(reference)
