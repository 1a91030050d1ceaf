"""`bench sweep`: validation-only tuning, frozen configs used by `bench run`, and resumption after a kill."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from bench import config as C
from bench import registry
from bench.cli import main
from bench.execution.sweep import sample_configs

BENCH = [sys.executable, "-m", "bench.cli"]


def test_sampled_configs_are_reproducible_and_inside_the_search_range():
    a, b = sample_configs("failure_aware", 6, seed=0), sample_configs("failure_aware", 6, seed=0)
    assert a == b and len({json.dumps(c, sort_keys=True) for c in a}) == 6
    assert sample_configs("failure_aware", 6, seed=1) != a
    declared = {f.name: f.metadata for f in C.fields(registry.methods()["failure_aware"].Config)}
    for cfg in a:
        lo, hi = declared["lr"]["search"]
        assert lo <= cfg["lr"] <= hi
        assert cfg["patience"] == 15  # not tuned: stays at its default


@pytest.mark.parametrize("args, fragment", [
    (["--method", "oracle"], "has no settings to tune"),
    (["--method", "nosuch"], "unknown method"),
    (["--method", "bradley_terry", "--scheduler", "pbt"], "use asha or fifo"),
    (["--method", "bradley_terry", "--metric", "roc_auc"], "not a validation-only objective"),
    (["--method", "bradley_terry", "--trials", "0"], "at least 1"),
])
def test_sweep_bad_input(args, fragment, tmp_path, capsys):
    code = main(["sweep", *args, "--task", "synthetic", "--runs-dir", str(tmp_path / "r"),
                 "--tuned-dir", str(tmp_path / "t")])
    assert code == 2 and fragment in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


def bench(*args, cwd, **kwargs):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([*BENCH, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600, **kwargs)


SWEEP = ["sweep", "--method", "bradley_terry", "--task", "synthetic", "--profile", "tiny"]


@pytest.mark.slow
def test_frozen_config_is_used_by_run_on_fresh_seeds(tmp_path):
    done = bench(*SWEEP, "--trials", "4", "--seeds-per-trial", "2", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    frozen = json.loads((tmp_path / "tuned/synthetic/tiny/bradley_terry.json").read_text())
    assert frozen["budget"]["configurations"] == 4 and frozen["tuning_seeds"] == [1000, 1001]
    assert frozen["objective"]["split"] == "val"

    again = bench(*SWEEP, "--trials", "4", "--seeds-per-trial", "2", cwd=tmp_path)
    assert again.returncode == 2 and "pass --resume" in again.stderr

    run = bench("run", "--methods", "bradley_terry,random", "--task", "synthetic", "--profile", "tiny",
                "--seeds", "2", cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    board = json.loads((tmp_path / "runs/leaderboards/synthetic-tiny.json").read_text())
    rows = {r["method"]: r for r in board["rows"]}
    assert rows["bradley_terry"]["tuning"]["source"].endswith("tuned/synthetic/tiny/bradley_terry.json")
    assert rows["bradley_terry"]["config"] == frozen["config"]
    assert rows["bradley_terry"]["seeds"] == [0, 1]  # confirmation seeds, disjoint from the tuning seeds
    assert rows["random"]["tuning"] == {"source": "defaults"}
    markdown = (tmp_path / "runs/leaderboards/synthetic-tiny.md").read_text()
    assert "| bradley_terry | linear head | `" in markdown and "tuned/synthetic/tiny/bradley_terry.json" in markdown
    assert frozen["head"] == "linear" and frozen["search"]["fixed"] == {"head": "linear"}
    assert frozen["budget"]["completed"] == 4  # fifo, the default: every configuration completes

    # One reward-model class per table: a config tuned in another class, or a --set head, is refused.
    frozen["config"]["head"] = "mlp"
    (tmp_path / "tuned/synthetic/tiny/bradley_terry.json").write_text(json.dumps(frozen))
    mixed = bench("run", "--methods", "bradley_terry", "--task", "synthetic", "--profile", "tiny", cwd=tmp_path)
    assert mixed.returncode == 2 and "tuned with the mlp head" in mixed.stderr and "--head mlp" in mixed.stderr
    forced = bench("run", "--methods", "random,bradley_terry", "--task", "synthetic", "--profile", "tiny",
                   "--head", "mlp", "--set", "head=linear", cwd=tmp_path)
    assert forced.returncode == 2 and "use --head instead" in forced.stderr


KILLABLE = [*SWEEP, "--trials", "8", "--seeds-per-trial", "2", "--scheduler", "fifo"]


@pytest.fixture(scope="module")
def reference_sweep(tmp_path_factory):
    """The same sweep, uninterrupted."""
    reference = tmp_path_factory.mktemp("reference")
    assert bench(*KILLABLE, cwd=reference).returncode == 0
    return reference


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGINT])
def test_killed_sweep_resumes_without_repeating(tmp_path, sig, reference_sweep):
    args, reference = KILLABLE, reference_sweep

    killed = tmp_path / "killed"
    killed.mkdir()
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([*BENCH, *args], cwd=killed, env=env, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    records = killed / "runs/synthetic/tiny/sweeps/bradley_terry/configs"
    fits = killed / "runs/synthetic/tiny/sweeps/bradley_terry/fits"
    deadline = time.time() + 300
    while time.time() < deadline and len(list(records.glob("*.json"))) < 2:
        time.sleep(0.2)
    os.killpg(proc.pid, sig)
    proc.wait(timeout=60)
    assert proc.returncode != 0
    assert not (killed / "tuned/synthetic/tiny/bradley_terry.json").exists()  # nothing frozen from a partial sweep
    done_before = {p.name: p.stat().st_mtime_ns for p in fits.glob("*.json")}
    assert 2 <= len(list(records.glob("*.json"))) < 8, "the kill should land mid-sweep"

    resumed = bench(*args, "--resume", cwd=killed)
    assert resumed.returncode == 0, resumed.stderr
    ref_records = {p.name for p in (reference / "runs/synthetic/tiny/sweeps/bradley_terry/configs").glob("*.json")}
    assert {p.name for p in records.glob("*.json")} == ref_records and len(ref_records) == 8
    after = {p.name: p.stat().st_mtime_ns for p in fits.glob("*.json")}
    assert len(after) == 16  # 8 configurations × 2 tuning seeds, each fitted once
    assert all(after[name] == mtime for name, mtime in done_before.items())  # nothing finished was redone
    ref_frozen = json.loads((reference / "tuned/synthetic/tiny/bradley_terry.json").read_text())
    frozen = json.loads((killed / "tuned/synthetic/tiny/bradley_terry.json").read_text())
    assert frozen["config"] == ref_frozen["config"]
    assert frozen["objective"]["value"] == ref_frozen["objective"]["value"]
