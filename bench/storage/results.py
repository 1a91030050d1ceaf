"""Trial results: one checksummed JSON file per trial, written atomically, so the runs directory is the source of
truth. A missing, truncated or altered file reads as absent (with a warning naming it): its trial runs again."""

from __future__ import annotations

import contextlib
import json
import logging
import traceback
from pathlib import Path

from bench.storage.artifacts import atomic_write_json, content_hash

log = logging.getLogger(__name__)


def write_result(path: Path, payload: dict) -> None:
    atomic_write_json(path, {"payload": payload, "sha256": content_hash(payload, length=64)}, indent=None)


def read_result(path: Path) -> dict | None:
    """The stored payload, or None (with a warning naming the file) if it is missing, truncated or altered."""
    if not path.exists():
        return None
    try:
        stored = json.loads(path.read_text())
        payload = stored["payload"]
        if content_hash(payload, length=64) != stored["sha256"]:
            raise ValueError("checksum mismatch")
    except (ValueError, KeyError, TypeError) as exc:
        log.warning("trial result %s is corrupted (%s); the trial will run again", path, exc)
        return None
    return payload


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
