"""The Python API (`bench.run`, `bench.load_leaderboard`): the README's example as written, `import bench` stays
light, and a run never touches the committed-style `leaderboards/` of the directory it runs in."""

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import bench
from bench.cli import main
from bench.errors import BadInput

REPO = Path(__file__).resolve().parent.parent


def python(code: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "IRL_BENCH_CACHE"} | {"OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-c", code], cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


def test_import_bench_loads_neither_ray_nor_torch(tmp_path):
    probe = ("import sys, bench\n"
             "heavy = lambda: [m for m in ('ray', 'torch') if m in sys.modules]\n"
             "assert heavy() == [], heavy()\n"
             f"doc = bench.load_leaderboard({str(REPO / 'leaderboards/synthetic.json')!r})\n"
             "assert heavy() == [], heavy()\n"
             "print('ROWS', len(doc['rows']))\n")
    done = python(probe, tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    assert f"ROWS {len(json.loads((REPO / 'leaderboards/synthetic.json').read_text())['rows'])}" in done.stdout


def test_bad_options_are_bad_input_before_anything_is_written(tmp_path):
    with pytest.raises(BadInput, match="unknown option 'nosuch'; use one of"):
        bench.run("synthetic", runs_dir=tmp_path / "runs", nosuch=1)
    with pytest.raises(BadInput, match="--seeds 1 or more"):
        bench.run("synthetic", seeds=0, runs_dir=tmp_path / "runs")
    with pytest.raises(BadInput, match="out of range"):
        bench.run("synthetic", methods=["bradley_terry"], settings={"bradley_terry.lr": 7}, runs_dir=tmp_path / "r")
    assert not list(tmp_path.iterdir())


@pytest.mark.slow  # a real run through Ray: about 40 s on 2 busy cores
def test_the_readme_api_example_works_and_leaves_the_committed_leaderboards_alone(tmp_path, monkeypatch):
    """The README's "Python API" snippet, executed as written in a directory that holds a committed-style
    `leaderboards/`: the run returns the document, writes its own board under runs/leaderboards, and neither it nor
    `bench leaderboard` from runs/ changes a byte of leaderboards/."""
    readme = (REPO / "README.md").read_text()
    section = readme[readme.index("## Python API"):]
    snippet = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    shutil.copytree(REPO / "leaderboards", tmp_path / "leaderboards")
    committed = {p.name: p.read_bytes() for p in (tmp_path / "leaderboards").iterdir()}

    done = python(snippet + "\nimport json\njson.dump({'board': board, 'same': same}, open('out.json', 'w'))\n",
                  tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    out = json.loads((tmp_path / "out.json").read_text())
    board = out["board"]
    rows = {r["method"]: r for r in board["rows"]}
    assert set(rows) == {"random", "oracle"} and board["profile"] == "tiny" and board["provenance"]["seeds"] == [0, 1]
    assert all(r["n_seeds"] == 2 and not r["failures"] for r in rows.values())
    assert rows["oracle"]["metrics"]["roc_auc"]["mean"] == pytest.approx(1.0)
    assert rows["oracle"]["metrics"]["starc"]["mean"] == pytest.approx(0.0, abs=1e-6)
    low, high = rows["random"]["metrics"]["roc_auc"]["ci"]
    assert low < 0.5 < high < 1.0  # the null at chance
    assert out["same"]["rows"] == board["rows"]  # load_leaderboard reads back what run returned
    assert "random" in done.stdout and "ROC-AUC" in done.stdout

    local = tmp_path / "runs/leaderboards"
    assert sorted(p.name for p in local.iterdir()) == ["synthetic-tiny.html", "synthetic-tiny.json",
                                                       "synthetic-tiny.md"]
    written = {p.name: p.read_bytes() for p in local.iterdir()}
    monkeypatch.chdir(tmp_path)
    assert main(["leaderboard"]) == 0  # rebuilds runs/ into runs/leaderboards, byte for byte
    assert {p.name: p.read_bytes() for p in local.iterdir()} == written
    assert {p.name: p.read_bytes() for p in (tmp_path / "leaderboards").iterdir()} == committed
