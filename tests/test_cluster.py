"""A real two-node Ray cluster, as the README's cluster section sets one up: a head and a second worker node started
with `ray start` (one CPU each), `bench run --address` with the artifact cache on a directory both share
(IRL_BENCH_CACHE), and the same trial ids and numbers as fitting the trials locally. The cluster is stopped by killing
exactly the processes it started (found by its own --temp-dir): a bare `ray stop` would stop every Ray of this user."""

import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import psutil
import pytest

from bench.execution import plan as preview
from bench.execution.fit_trial import run_trial
from bench.execution.run import RunRequest, plan
from bench.storage.artifacts import ArtifactCache
from bench.storage.results import read_result
from bench.storage.selection import Selection

RAY = str(Path(sys.executable).with_name("ray"))
METHODS = "random,oracle,bradley_terry"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stop(temp_dir: str) -> None:
    """Terminate (then kill) every process whose command line names this cluster's temp dir, and their children."""
    own = [p for p in psutil.process_iter(["cmdline"]) if temp_dir in " ".join(p.info["cmdline"] or [])]
    procs = {p.pid: p for p in own}
    for p in own:
        with contextlib.suppress(psutil.NoSuchProcess):
            procs.update({c.pid: c for c in p.children(recursive=True)})
    for p in procs.values():
        with contextlib.suppress(psutil.NoSuchProcess):
            p.terminate()
    _, alive = psutil.wait_procs(list(procs.values()), timeout=10)
    for p in alive:
        with contextlib.suppress(psutil.NoSuchProcess):
            p.kill()
    psutil.wait_procs(alive, timeout=10)


@contextlib.contextmanager
def two_node_cluster():
    temp_dir = tempfile.mkdtemp(prefix="rt", dir="/tmp")  # short: Ray's socket paths must stay under 108 bytes
    port, env = free_port(), {**os.environ, "RAY_AUTH_MODE": "disabled"}
    common = ["--num-cpus", "1", "--temp-dir", temp_dir, "--disable-usage-stats"]
    try:
        for args in (["--head", "--port", str(port), "--include-dashboard", "false"],
                     ["--address", f"127.0.0.1:{port}"]):
            started = subprocess.run([RAY, "start", *args, *common], env=env, capture_output=True, text=True,
                                     timeout=180)
            assert started.returncode == 0, started.stdout[-2000:] + started.stderr[-2000:]
        yield f"127.0.0.1:{port}"
    finally:
        stop(temp_dir)
        shutil.rmtree(temp_dir, ignore_errors=True)


@pytest.mark.slow
def test_two_node_cluster_run_equals_local_fits(tmp_path):
    shared = tmp_path / "shared-cache"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "IRL_BENCH_CACHE": str(shared)}
    with two_node_cluster() as address:
        proc = subprocess.run([sys.executable, "-m", "bench.cli", "run", "--task", "synthetic", "--profile", "tiny",
                               "--methods", METHODS, "--seeds", "2", "--address", address],
                              cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    # the console of a whole run: the plan first, then no third-party progress bar or FutureWarning
    console = proc.stdout + proc.stderr
    assert proc.stdout.startswith("plan: synthetic (tiny)")
    assert "it/s]" not in console and "FutureWarning" not in console
    assert "6 trials: 0 reused, 6 to run" in proc.stdout
    # both nodes worked: each has one CPU, and two Tune workers (two processes) ran the six trials
    tune_results = [json.loads(p.read_text().splitlines()[-1]) for p in (tmp_path / "runs").rglob("result.json")]
    assert len(tune_results) == 6 and len({r["pid"] for r in tune_results}) == 2
    # the artifacts went to the shared cache, which the workers read them from
    group = tmp_path / "runs/synthetic/tiny"
    selection = Selection.read(group)
    assert (shared / "demos" / selection.task_data.demos_key).is_dir() and not (tmp_path / "runs/cache").exists()

    # the same trials fitted here, without Ray, on a cache of their own: same ids, same numbers
    p = plan(RunRequest(task="synthetic", methods=METHODS, profile="tiny", seeds=2, runs_dir=tmp_path / "local"))
    data = p.task.build(p.profile, p.task_config, ArtifactCache(tmp_path / "local-cache"))
    specs = [s for g in preview.fit_specs(p, data.ref).values() for s in g]
    cluster_ids = {t for m in selection.methods.values() for t in m.trial_ids}
    assert {s.trial_id for s in specs} == cluster_ids == {f.stem for f in (group / "trials").glob("*.json")}
    for spec in specs:
        local = run_trial(spec, tmp_path / "local" / f"{spec.trial_id}.json")
        remote = read_result(group / "trials" / f"{spec.trial_id}.json")
        assert remote["status"] == local["status"] == "ok"
        assert remote["rewards"] == local["rewards"] and remote["val_pair_accuracy"] == local["val_pair_accuracy"]
