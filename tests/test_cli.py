"""The `bench` command line as a user types it."""

import json
import os
import subprocess
import sys

import pytest

from bench.cli import main

BENCH = [sys.executable, "-m", "bench.cli"]


def test_ls_lists_methods_tasks_profiles(capsys):
    assert main(["ls", "methods"]) == 0
    out = capsys.readouterr().out
    for name in ("max_margin", "bradley_terry", "failure_aware", "random", "oracle"):
        assert any(line.startswith(name + " ") and len(line.split()) > 2 for line in out.splitlines()), name
    assert main(["ls", "profiles"]) == 0
    assert "synthetic:default" in capsys.readouterr().out


@pytest.mark.parametrize("args, fragment", [
    (["--methods", "nosuch", "--task", "synthetic"], "unknown method 'nosuch'"),
    (["--methods", "all", "--task", "nosuch"], "unknown task 'nosuch'"),
    (["--task", "synthetic", "--profile", "huge"], "has no profile 'huge'"),
    (["--task", "synthetic", "--set", "lr"], "malformed"),
    (["--task", "synthetic", "--set", "bradley_terry.lr=7"], "out of range"),
    (["--task", "synthetic", "--set", "task.n_prompts=ten"], "whole number"),
    (["--task", "synthetic", "--seeds", "0"], "--seeds 1 or more"),
    (["--task", "synthetic", "--gpus-per-trial", "-1"], "negative"),
    (["--task", "synthetic", "--rerlhf", "rloo"], "no language-model policies to re-align"),
    (["--task", "detox", "--rerlhf", "ppo"], "not a re-alignment mode; choose one of auto, rloo, grpo, bon, off"),
    (["--task", "detox", "--seeds", "2", "--rerlhf-seeds", "3"], "--rerlhf-seeds 3 must lie between 1 and"),
    (["--task", "detox", "--methods", "oracle", "--rerlhf-methods", "random"], "which --methods does not select"),
])
def test_bad_input_exits_2_with_one_sentence_and_writes_nothing(args, fragment, tmp_path, capsys):
    runs = tmp_path / "runs"
    assert main(["run", *args, "--runs-dir", str(runs), "--leaderboards-dir", str(tmp_path / "lb")]) == 2
    err = capsys.readouterr().err.strip()
    assert fragment in err and err.startswith("error: ") and len(err.splitlines()) == 1
    assert not runs.exists() and not (tmp_path / "lb").exists()


def test_unwritable_runs_dir_is_bad_input(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    assert main(["run", "--task", "synthetic", "--runs-dir", str(blocker / "runs")]) == 2
    assert "is not a writable directory" in capsys.readouterr().err


def test_leaderboard_without_runs_is_bad_input(tmp_path, capsys):
    assert main(["leaderboard", "--task", "synthetic", "--runs-dir", str(tmp_path)]) == 2
    assert "run `bench run --task synthetic` first" in capsys.readouterr().err


def run_bench(*args, cwd):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([*BENCH, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


@pytest.mark.slow
def test_synthetic_end_to_end(tmp_path):
    """The issue's acceptance run: oracle best, random at chance, IRL methods clearly better; reruns reuse."""
    done = run_bench("run", "--methods", "all", "--task", "synthetic", "--seeds", "3", cwd=tmp_path)
    assert done.returncode == 0, done.stderr + done.stdout
    assert "24 trials: 0 reused, 24 to run" in done.stdout
    board = json.loads((tmp_path / "runs/leaderboards/synthetic.json").read_text())
    rows = {r["method"]: r for r in board["rows"]}
    assert set(rows) == {"max_margin", "bradley_terry", "failure_aware", "failure_aware_ablation", "random", "oracle",
                         "implicit", "length"}
    metric = lambda m, k: rows[m]["metrics"][k]  # noqa: E731

    assert metric("oracle", "starc")["mean"] == pytest.approx(0.0, abs=1e-6)
    # the exactly tilted expert: the implicit reward equals R* up to per-prompt constants
    assert metric("implicit", "starc")["mean"] == pytest.approx(0.0, abs=1e-4)
    assert all(metric("oracle", "pair_accuracy")["mean"] >= metric(m, "pair_accuracy")["mean"] for m in rows)
    lo, hi = metric("random", "roc_auc")["ci"]
    assert lo <= 0.5 <= hi
    for m in ("max_margin", "bradley_terry", "failure_aware", "failure_aware_ablation"):
        assert metric(m, "roc_auc")["ci"][0] > metric("random", "roc_auc")["ci"][1] + 0.2
        assert metric(m, "starc")["ci"][1] < 0.6 < metric("random", "starc")["ci"][0]
        assert rows[m]["n_seeds"] == 3 and not rows[m]["failures"]
    assert board["provenance"]["seeds"] == [0, 1, 2] and board["profile"] == "default"
    assert board["bootstrap"]["resamples"] == 1000

    trials = sorted((tmp_path / "runs/synthetic/default/trials").glob("*.json"))
    assert len(trials) == 24
    before = {p: p.stat().st_mtime_ns for p in trials}
    json_before = (tmp_path / "runs/leaderboards/synthetic.json").read_bytes()

    again = run_bench("run", "--methods", "all", "--task", "synthetic", "--seeds", "3", cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert "24 trials: 24 reused, 0 to run" in again.stdout
    assert {p: p.stat().st_mtime_ns for p in trials} == before

    # the rerun rewrote the leaderboard from the same trials: same rows (byte-identical rebuilds by
    # `bench leaderboard` are tested in tests/test_leaderboard_html.py)
    board_after = json.loads((tmp_path / "runs/leaderboards/synthetic.json").read_text())
    assert json.loads(json_before)["rows"] == board_after["rows"]
