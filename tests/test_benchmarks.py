"""The benchmark suite (benchmarks/__main__.py): it names every part, and a cheap part run through it on the
synthetic task's tiny world writes well-formed results and the index. Content only: timing goals live in the
benchmarks themselves, never here."""

import json
import os
import subprocess
import sys
from pathlib import Path

from benchmarks.__main__ import PARTS

REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def suite(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "benchmarks", *args], cwd=REPO, env=ENV, capture_output=True,
                          text=True, timeout=300)


def test_list_names_every_part_and_a_bad_name_is_refused():
    listed = suite("--list")
    assert listed.returncode == 0, listed.stderr
    names = [line.split()[0] for line in listed.stdout.splitlines() if line.strip()]
    assert names == list(PARTS)
    assert {"fit_scaling", "judges", "reward_trainer", "generation", "detox_default", "rl_step"} <= set(names)
    for name, part in PARTS.items():  # every part runs a module here
        assert (REPO / "benchmarks" / f"{part.script}.py").exists(), name
    bad = suite("--only", "fit_scaling,nope")
    assert bad.returncode == 2 and "unknown part(s) nope" in bad.stderr


def test_fit_scaling_through_the_suite_writes_results_and_the_index(tmp_path):
    run = suite("--only", "fit_scaling", "--quick", "--results", str(tmp_path))
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    result = json.loads((tmp_path / "fit_scaling.json").read_text())
    assert result["profile"] == "tiny" and result["repeats"] >= 3
    assert result["sizes"] == [250, 500, 1000] and result["methods"] == ["bradley_terry", "max_margin"]
    assert len(result["rows"]) == 6
    for row in result["rows"]:
        for key in ("seconds_per_epoch", "fit_seconds"):
            s = row[key]
            assert len(s["all"]) == result["repeats"] and s["min"] <= s["median"] <= s["max"]
            assert all(v > 0 for v in s["all"])
    for method in result["methods"]:
        slope = result["slopes"][method]["seconds_per_epoch"]
        assert slope["ci95"][0] <= slope["slope"] <= slope["ci95"][1]
        assert slope["points"] == 3 * result["repeats"]
    assert len(result["host"]["load_average_before"]) == 3
    assert "| bradley_terry | 1000 |" in (tmp_path / "fit_scaling.md").read_text()
    index = (tmp_path / "README.md").read_text()
    assert "[fit_scaling](fit_scaling.md)" in index and "pairs^" in index
    assert "| judges |" in index and "not measured yet" in index  # parts without results are still listed
    assert json.loads((tmp_path / "runs.json").read_text())["fit_scaling"]["status"] == "ok"


def test_gpu_script_parses_and_its_steps_fit_in_ten_minutes():
    script = REPO / "benchmarks" / "gpu.sh"
    assert subprocess.run(["bash", "-n", str(script)]).returncode == 0
    text = script.read_text()
    limits = {name: int(text.split(f"{name}=${{{name}:-")[1].split("}")[0]) for name in
              ("T_COLD", "T_GEN", "T_WARM", "T_RUN")}
    assert sum(limits.values()) <= 570, limits  # the rest of the 600 s: preflight, copies, the summary
    assert "--gpus-per-trial" in text and "--rerlhf-methods all" in text  # trials get the GPU; every method re-RLHF'd
