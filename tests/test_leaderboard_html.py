"""Leaderboard files (JSON, Markdown, HTML) from hand-made trial results on the synthetic task: their content,
byte-identical rebuilds, and the HTML page rendered by a real headless browser. The slow test does the same from a
real `bench run`."""

import base64
import io
import json
import re
import shutil
import subprocess
import sys
import tempfile

import numpy as np
import pytest
from PIL import Image

from bench.reporting import document as leaderboard
from bench.reporting.markdown import COLUMNS
from bench.scoring.scorer import METRICS, load_eval_sets
from bench.storage.selection import Selection

SEEDS = [0, 1, 2, 3, 4]
NOISE = {"oracle": 0.0, "good": 0.4, "also_good": 0.42, "noisy": 3.0, "random": None}


def hand_made_trials(data):
    """Rewards with a known quality order: R* itself, R* + small noise (two methods), R* + large noise, noise."""
    sets = load_eval_sets(data)
    ok, failures = {}, {}
    for i, (method, noise) in enumerate(NOISE.items()):
        for seed in SEEDS:
            rng = np.random.default_rng(100 * i + seed)
            rewards = {}
            for split in ("val", "test"):
                truth = sets[split].reward
                rewards[split] = (rng.normal(size=len(truth)) if noise is None
                                  else truth + noise * rng.normal(size=len(truth))).tolist()
            ok.setdefault(method, []).append({"seed": seed, "rewards": rewards, "status": "ok"})
    failures["noisy"] = [{"trial_id": "t-noisy-5", "seed": 5, "error": "simulated failure"}]
    selection = {
        "task_data": data.to_json(),
        "task_config": {"profile": "tiny"},
        "seeds": SEEDS,
        "methods": {m: {"config": {}, "trial_ids": [f"t-{m}-{s}" for s in SEEDS]} for m in NOISE},
        "bootstrap": {"resamples": 300, "seed": 0},
        "provenance": {"git_commit": "test", "versions": {"python": "3"}, "hardware": "test",
                       "started": "2026-01-01T00:00:00Z"},
    }
    return Selection.from_json(selection), data, ok, failures


@pytest.fixture(scope="module")
def boards(synthetic_tiny, tmp_path_factory):
    """The leaderboard built twice, independently, into two directories: (doc, dir1, dir2)."""
    _, data = synthetic_tiny
    dirs = [tmp_path_factory.mktemp("boards1"), tmp_path_factory.mktemp("boards2")]
    for d in dirs:
        doc = leaderboard.assemble(*hand_made_trials(data))
        leaderboard.write(doc, d)
    return doc, dirs[0], dirs[1]


def test_rebuilds_are_byte_identical(boards):
    _, a, b = boards
    for suffix in ("json", "md", "html"):
        assert (a / f"synthetic.{suffix}").read_bytes() == (b / f"synthetic.{suffix}").read_bytes(), suffix


def test_json_document_carries_tests_ties_and_normalised_scores(boards):
    _, d, _ = boards
    doc = json.loads((d / "synthetic.json").read_text())
    assert doc["schema_version"] == 3 and doc["task"] == "synthetic" and doc["profile"] == "tiny"
    assert doc["bootstrap"]["resamples"] == 300
    rows = {r["method"]: r for r in doc["rows"]}
    for r in doc["rows"]:
        for m in METRICS:
            assert set(r["metrics"][m]) == {"mean", "ci"}
    for m in METRICS:
        assert sum(r["comparison"][m]["best"] for r in doc["rows"]) == 1  # exactly one best per metric
    assert rows["oracle"]["comparison"]["roc_auc"]["best"]
    assert not rows["random"]["comparison"]["roc_auc"]["tied"]  # a null reward is separated from R*
    assert rows["random"]["comparison"]["roc_auc"]["p_holm"] < 0.05
    # power: a detectable difference is positive and smaller than the gap the test did detect
    mde = rows["random"]["comparison"]["roc_auc"]["mde"]
    assert 0 < mde < abs(rows["random"]["comparison"]["roc_auc"]["diff"])
    assert doc["data"]["test_items"] > doc["data"]["bad_test_items"] > 0
    # two near-identical methods cannot be told apart on the centred correlation
    best = next(r for r in doc["rows"] if r["comparison"]["centred_pearson"]["best"])["method"]
    if best in ("good", "also_good"):
        other = "also_good" if best == "good" else "good"
        assert rows[other]["comparison"]["centred_pearson"]["tied"]
    assert rows["oracle"]["normalised"]["roc_auc"]["mean"] == 1.0
    assert rows["random"]["normalised"]["roc_auc"]["mean"] == 0.0
    assert 0 < rows["good"]["normalised"]["centred_pearson"]["mean"] < 1
    scatter = doc["figures"]["scatter"]
    assert set(scatter["methods"]) == set(NOISE)
    assert all(len(v["reward"]) == len(scatter["truth"]) for v in scatter["methods"].values())
    assert rows["noisy"]["failures"][0]["error"] == "simulated failure"


def test_markdown_marks_best_and_ties_with_a_legend(boards):
    doc, d, _ = boards
    md = (d / "synthetic.md").read_text()
    assert "≈: tied with the best" in md and "## Normalised scores" in md
    table = [line for line in md.splitlines() if line.startswith("| ")]
    oracle = next(line for line in table if line.startswith("| oracle |"))
    roc_column = table[0].split(" | ").index("ROC-AUC ↑")
    assert oracle.split(" | ")[roc_column].startswith("**1.000")
    tied = sum(r["comparison"][m]["tied"] for r in doc["rows"] for m in COLUMNS)
    assert md.count(" ≈ |") == tied > 0  # a tied cell reads "mean [lo, hi] ≈"


def pngs_in(page: str) -> list[bytes]:
    return [base64.b64decode(s) for s in re.findall(r'<img [^>]*src="data:image/png;base64,([^"]+)"', page)]


def distinct_colours(image: Image.Image) -> int:
    return len(np.unique(np.asarray(image.convert("RGB")).reshape(-1, 3), axis=0))


def test_html_is_one_self_contained_page_with_decodable_figures(boards):
    _, d, _ = boards
    page = (d / "synthetic.html").read_text()
    assert page.startswith("<!DOCTYPE html>") and "<style>" in page
    assert not re.search(r'(src|href)="(?!data:)', page)  # no external files or URLs
    assert "<script" not in page
    images = pngs_in(page)
    assert len(images) == page.count("<img ") == 3  # bars, scatter, seed stability
    for png in images:
        assert png.startswith(b"\x89PNG\r\n\x1a\n")
        image = Image.open(io.BytesIO(png))
        image.load()
        assert image.width > 300 and image.height > 200
        assert distinct_colours(image) > 50  # actual plots, not a blank canvas
    for method in NOISE:
        assert f"<td>{method}</td>" in page
    assert 'class="best"' in page and 'class="tied"' in page


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
BROWSER_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
PROBE = """<script>
window.addEventListener("load", function () {
  var images = Array.prototype.slice.call(document.images);
  var decoded = images.filter(function (i) { return i.complete && i.naturalWidth > 0; });
  document.body.setAttribute("data-images", images.length + "/" + decoded.length);
});
</script>"""


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (apt-get install -y chromium)")
def test_html_renders_in_headless_chromium_with_visible_plots(boards, tmp_path):
    _, d, _ = boards
    page = (d / "synthetic.html").read_text()
    # the page itself has no scripts; a copy with a probe reports whether the browser decoded every image
    probe = tmp_path / "probe.html"
    probe.write_text(page.replace("</body>", PROBE + "</body>"))
    with tempfile.TemporaryDirectory() as profile:
        dom = subprocess.run([CHROMIUM, *BROWSER_FLAGS, f"--user-data-dir={profile}", "--virtual-time-budget=10000",
                              "--dump-dom", probe.as_uri()], capture_output=True, text=True, timeout=120).stdout
    assert 'data-images="3/3"' in dom
    shot = tmp_path / "shot.png"
    with tempfile.TemporaryDirectory() as profile:
        subprocess.run([CHROMIUM, *BROWSER_FLAGS, f"--user-data-dir={profile}", f"--screenshot={shot}",
                        "--window-size=1400,2000", (d / "synthetic.html").as_uri()], capture_output=True, timeout=120)
    image = Image.open(shot).convert("RGB")
    assert image.size == (1400, 2000)
    assert distinct_colours(image) > 500  # text, table shading and plotted points, not a blank page
    pixels = np.asarray(image)
    assert (pixels < 250).any(axis=2).mean() > 0.05  # a real share of the page is not white


@pytest.mark.slow
def test_bench_run_then_rebuild_gives_identical_bytes(tmp_path):
    """End to end: the files `bench run` writes equal those of two later `bench leaderboard` calls (separate
    processes, so no state is shared between builds)."""
    bench = [sys.executable, "-c", "import sys; from bench.cli import main; sys.exit(main())"]

    def call(*args):
        done = subprocess.run([*bench, *args], cwd=tmp_path, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stderr[-2000:]

    call("run", "--task", "synthetic", "--profile", "tiny", "--seeds", "5", "--methods",
         "random,oracle,bradley_terry", "--bootstrap", "200")
    boards = tmp_path / "runs/leaderboards"  # the profile is in the name: a local board
    names = ["synthetic-tiny.json", "synthetic-tiny.md", "synthetic-tiny.html"]
    first = {n: (boards / n).read_bytes() for n in names}
    for _ in range(2):
        call("leaderboard")
        assert {n: (boards / n).read_bytes() for n in names} == first
    doc = json.loads(first["synthetic-tiny.json"])
    assert doc["schema_version"] == 3 and [r["n_seeds"] for r in doc["rows"]] == [5, 5, 5]
    assert doc["normalisation"]["available"]
