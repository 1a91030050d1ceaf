"""The committed leaderboards are exactly what the committed results rebuild to (CI fails on any drift)."""

from pathlib import Path

import pytest

from bench import leaderboard

REPO = Path(__file__).resolve().parent.parent
PUBLISHED = sorted(p.stem for p in (REPO / "leaderboards").glob("*.json"))


def test_every_published_leaderboard_has_its_results():
    assert PUBLISHED, "leaderboards/ holds no published leaderboard"
    for task in PUBLISHED:
        assert (REPO / "results" / task / "latest.json").exists(), f"results/{task} is missing"


@pytest.mark.parametrize("task", PUBLISHED)
def test_committed_leaderboard_rebuilds_byte_for_byte(task, tmp_path):
    doc = leaderboard.build(leaderboard.latest_group(REPO / "results", task))
    for path in leaderboard.write(doc, tmp_path):
        assert path.read_bytes() == (REPO / "leaderboards" / path.name).read_bytes(), f"{path.name} drifted"
