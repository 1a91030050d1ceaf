"""Trial results: one checksummed JSON file per trial, written atomically, so the runs directory is the source of
truth. While running, a missing, truncated or altered file reads as absent (with a warning naming it): its trial
runs again (`read_result`). A leaderboard rebuilt from stored runs cannot rerun anything, so there a damaged file is
an error naming it (`read_selected`)."""

from __future__ import annotations

import contextlib
import json
import logging
import traceback
from pathlib import Path

from bench.errors import RuntimeFailure
from bench.storage.artifacts import atomic_write_json, content_hash

log = logging.getLogger(__name__)


def write_result(path: Path, payload: dict) -> None:
    atomic_write_json(path, {"payload": payload, "sha256": content_hash(payload, length=64)}, indent=None)


def damage(path: Path) -> tuple[dict | None, str | None]:
    """(stored payload, None), or (None, what is wrong) if the file is missing, truncated or altered."""
    try:
        stored = json.loads(path.read_bytes())
        payload = stored["payload"]
        if content_hash(payload, length=64) != stored["sha256"]:
            return None, "its checksum does not match its contents"
    except FileNotFoundError:
        return None, "it is missing"
    except (ValueError, KeyError, TypeError) as exc:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        return None, f"it is unreadable ({type(exc).__name__})"
    return payload, None


def read_result(path: Path) -> dict | None:
    """The stored payload, or None (with a warning naming the file) if it is missing, truncated or altered."""
    payload, problem = damage(path)
    if problem is not None and path.exists():
        log.warning("trial result %s is corrupted (%s); the trial will run again", path, problem)
    return payload


def read_selected(paths: list[Path]) -> list[dict]:
    """The payloads of the result files a run recorded in its selection, in order. Raises RuntimeFailure naming
    every missing, truncated or altered file: a leaderboard is never built around a hole. (A trial that failed is
    no damage: its file is intact, with status "failed", and the leaderboard lists it.)"""
    payloads, damaged = [], []
    for path in paths:
        payload, problem = damage(path)
        if problem is None:
            payloads.append(payload)
        else:
            damaged.append(f"{path} ({problem})")
    if damaged:
        raise RuntimeFailure(
            f"{len(damaged)} stored trial result(s) are missing or corrupted: {'; '.join(damaged)}; restore them "
            f"(e.g. `git checkout` for committed results) or rerun the `bench run` command that wrote them, which "
            f"runs exactly those trials again."
        )
    return payloads


def unfinished(specs: list, results_dir: Path) -> list:
    """The specs (anything with a `trial_id`) whose result is missing, corrupted or failed."""
    return [s for s in specs
            if (r := read_result(results_dir / f"{s.trial_id}.json")) is None or r["status"] != "ok"]


@contextlib.contextmanager
def failures_recorded(payload: dict):
    """Run a trial's body; an exception becomes status "failed" with its error and traceback in `payload`, so one
    failing trial never takes the others down."""
    try:
        yield
    except Exception as exc:
        payload.update(status="failed", error=f"{type(exc).__name__}: {exc}", traceback=traceback.format_exc())


def record_failures(specs: list, results_dir: Path, causes: dict[str, str]) -> None:
    """For each spec (with `trial_id` and `to_json`) whose trial failed outside its own code (`causes`: result path
    -> why, e.g. its worker was killed, or its result could not be written) and left no readable result, a result
    with status "failed" and that cause: the run finishes, the leaderboard lists the failure under its method, and
    the next run retries it (`unfinished`)."""
    for spec in specs:
        path = results_dir / f"{spec.trial_id}.json"
        if str(path) not in causes or read_result(path) is not None:
            continue
        described = spec.to_json()
        fit = described.get("fit", described)  # a re-alignment spec holds the fit it re-does
        payload = {"trial_id": spec.trial_id, "method": fit.get("method"), "config": fit.get("config"),
                   "seed": fit.get("seed"), **{k: v for k, v in described.items() if k not in ("fit", "task")},
                   "status": "failed", "error": causes[str(path)]}
        log.warning("trial %s failed: %s", spec.trial_id, payload["error"])
        write_result(path, payload)
