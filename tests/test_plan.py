"""`bench run`'s plan (bench/execution/plan.py), `--dry-run`, and the console table at 80 and 120 columns."""

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from rich.console import Console

from bench import config as configs
from bench import provenance
from bench.execution import plan as preview
from bench.execution.fit_trial import run_fit_trial
from bench.execution.run import RunRequest, plan
from bench.reporting.console import SHOWN, cell, print_summary
from bench.reporting.markdown import HEADINGS
from bench.storage.artifacts import cache_for
from bench.storage.results import read_result
from bench.storage.selection import MethodSelection, Selection

ROOT = Path(__file__).resolve().parents[1]


def request(runs, **kw):
    return RunRequest(**{"task": "synthetic", "methods": "random,bradley_terry", "profile": "tiny", "seeds": 2,
                         "runs_dir": runs, **kw})


def finish(p, runs, done: int):
    """What `bench run` leaves without Ray: the task data built, `done` fit trials run, the selection written."""
    data = p.task.build(p.profile, p.task_config, cache_for(runs))
    specs = preview.fit_specs(p, data.ref)
    group = runs / "synthetic" / p.group
    for spec in [s for g in specs.values() for s in g][:done]:
        run_fit_trial(spec.to_json(), group / "trials" / f"{spec.trial_id}.json")
    Selection(data, configs.to_dict(p.task_config), p.seeds,
              {m: MethodSelection({}, [s.trial_id for s in g]) for m, g in specs.items()},
              {"resamples": 100, "seed": 0}, provenance.collect()).write(group)
    return data


def snapshot(directory: Path) -> dict:
    return {str(f.relative_to(directory)): f.is_file() and f.stat().st_mtime_ns for f in directory.rglob("*")}


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """A runs directory with the tiny task data built and 3 of its 4 fit trials finished."""
    runs = tmp_path_factory.mktemp("plan") / "runs"
    return runs, finish(plan(request(runs)), runs, done=3)


def test_plan_knows_what_is_cached_and_estimates_from_recorded_costs(tmp_path, built):
    first = preview.preview(plan(request(tmp_path / "runs")))
    assert not first.data_cached and first.stages == [] and first.seconds is None
    assert first.trials[0].total == 4 and first.trials[0].reused is None

    runs, data = built
    again = preview.preview(plan(request(runs)))
    assert again.data_cached and again.trials[0].reused == 3 and again.trials[0].to_run == 1
    recorded = [read_result(f)["seconds"] for f in (runs / "synthetic/tiny/trials").glob("*.json")]
    assert again.trials[0].seconds_each == pytest.approx(sum(recorded) / 3)
    assert {s.kind for s in again.stages} == {"demos", "truth", *data.artifacts} and all(s.cached for s in again.stages)
    assert again.seconds == pytest.approx(again.trials[0].seconds_each / again.cpus)

    # other task settings: another group, nothing known to be cached; the stages and their costs come from the
    # manifests of the build above (each stage's recorded seconds)
    other = preview.preview(plan(request(runs, seeds=3, assignments=["task.n_prompts=50"])))
    assert not other.data_cached and other.trials[0].reused is None and other.trials[0].total == 6
    cache = cache_for(runs)
    manifest = json.loads((cache.path("demos", data.demos_key) / "manifest.json").read_text())
    assert {s.kind: s.seconds for s in other.stages}["demos"] == pytest.approx(manifest["seconds"])
    out = io.StringIO()
    preview.render(other, Console(file=out, width=80))
    text = out.getvalue()
    assert "task data: to build" in text and "demos" in text and "6 trials: to run or reuse" in text
    assert max(len(line) for line in text.splitlines()) <= 80


def test_a_long_detox_plan_suggests_cheaper_runs(tmp_path):
    p = plan(RunRequest(task="detox", methods="random,oracle", seeds=2, runs_dir=tmp_path / "runs"))
    fresh = preview.preview(p)
    assert fresh.seconds is None and [t.total for t in fresh.trials] == [4, 2]
    assert fresh.hints == ["--profile smoke is a quick first run of this task"]
    fresh.stages = [preview.Stage("expert", None, 1200.0)]
    fresh.trials[0].seconds_each, fresh.trials[1].seconds_each = 10.0, 3000.0
    assert fresh.seconds == pytest.approx(1200 + (4 * 10 + 2 * 3000) / fresh.cpus)
    hints = preview._hints(p, fresh)
    assert any(h.startswith("--rerlhf bon") for h in hints) and any(h.startswith("--profile smoke") for h in hints)


@pytest.mark.slow
def test_dry_run_prints_the_plan_builds_nothing_and_never_loads_ray(tmp_path, built):
    runs, _ = built
    before = snapshot(runs)
    script = ("import sys; from bench.cli import main; "
              f"code = main(['run', '--task', 'synthetic', '--profile', 'tiny', '--methods', 'random,bradley_terry', "
              f"'--seeds', '2', '--runs-dir', {str(runs)!r}, '--dry-run']); "
              "print('ray loaded:', 'ray' in sys.modules); sys.exit(code)")
    proc = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("plan: synthetic (tiny)")
    assert "4 trials: 3 reused, 1 to run" in proc.stdout and "ray loaded: False" in proc.stdout
    assert snapshot(runs) == before  # no artifact, trial, selection or leaderboard written


@pytest.mark.parametrize("width", [80, 120])
def test_console_table_never_cuts_a_method_name_or_a_ci(width):
    doc = json.loads((ROOT / "leaderboards/synthetic.json").read_text())
    doc["rows"].append({**doc["rows"][-1], "method": "failure_aware_ablation_2"})  # longer than any method name
    out = io.StringIO()
    print_summary(doc, Console(file=out, width=width, color_system=None))
    lines = out.getvalue().splitlines()
    assert max(len(line) for line in lines) <= width
    header = next(line for line in lines if line.split()[:2] == ["method", "seeds"])
    shown = [m for m in SHOWN if HEADINGS[m] in header]
    assert len(shown) >= (2 if width == 80 else 3)
    for row in doc["rows"]:
        line = next(line for line in lines if line.split() and line.split()[0] == row["method"])
        for m in shown:
            assert cell(row["metrics"][m]) in line, (row["method"], m)



@pytest.mark.parametrize("verbose", [False, True])
def test_quiet_libraries_silences_third_party_bars_and_future_warnings_unless_verbose(verbose):
    script = (f"from bench.progress import quiet_libraries; quiet_libraries({verbose}); "
              "import logging, warnings, tqdm; [i for i in tqdm.tqdm(range(3), mininterval=0)]; "
              "warnings.warn('old API', FutureWarning); "
              "logging.getLogger('bench').error('a real error')")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TQDM_", "PYTHONWARNINGS"))}
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode == 0, proc.stderr
    assert ("it/s]" in proc.stderr) is verbose and ("FutureWarning" in proc.stderr) is verbose
    assert "a real error" in proc.stderr  # levels, not hiding errors


def test_gpu_share_defaults_to_the_machines_gpus_shared_by_its_trials(monkeypatch):
    """Ray hides the GPUs from a trial that asks for none: unset, a GPU machine's trials share its GPUs; a CPU
    machine or a cluster (whose GPUs only the user knows) asks for none; an explicit share is kept."""
    monkeypatch.setenv("IRL_BENCH_CPUS", "8")
    monkeypatch.setattr(preview.torch.cuda, "device_count", lambda: 2)
    assert preview.gpu_share(None, None) == 0.25
    assert preview.gpu_share(0.0, None) == 0.0 and preview.gpu_share(0.5, None) == 0.5
    assert preview.gpu_share(None, "auto") == 0.0
    monkeypatch.setenv("IRL_BENCH_CPUS", "1")
    assert preview.gpu_share(None, None) == 1.0  # never more than one GPU per trial
    monkeypatch.setattr(preview.torch.cuda, "device_count", lambda: 0)
    assert preview.gpu_share(None, None) == 0.0


def test_trials_at_once_are_bounded_by_the_gpu_share(tmp_path, monkeypatch):
    """On one GPU at 0.25 per trial Ray runs 4 trials at once however many CPUs there are, so the estimate divides
    the trials' time by 4, not by the CPUs (an H200 with 16 CPUs was told 54 s for 4 re-alignments of 2 min each)."""
    monkeypatch.setenv("IRL_BENCH_CPUS", "16")
    monkeypatch.setattr(preview.torch.cuda, "device_count", lambda: 1)
    assert preview.trial_slots(request(tmp_path, gpus_per_trial=0.25)) == 4
    assert preview.trial_slots(request(tmp_path, gpus_per_trial=0)) == 16
    assert preview.trial_slots(request(tmp_path)) == 16  # the default share: 1/16 of the GPU each
    assert preview.trial_slots(request(tmp_path, address="auto")) is None
    for cpus in range(1, 200):  # the default share, 1/cpus of the GPU each, fills every CPU (93: not 92.999... -> 92)
        monkeypatch.setenv("IRL_BENCH_CPUS", str(cpus))
        assert preview.trial_slots(request(tmp_path)) == cpus
    monkeypatch.setenv("IRL_BENCH_CPUS", "16")
    monkeypatch.setattr(preview.torch.cuda, "device_count", lambda: 0)
    assert preview.trial_slots(request(tmp_path)) == 16
