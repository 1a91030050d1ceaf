"""An estimate with its 95% interval, and its one text form.

Every figure the harness reports is a point value with a CI. `Estimate` is the record for new code (policy
outcomes write it as {"value", "ci", "n", "ci_method", "note"}); the scorer's per-method metrics are stored as
{"mean", "ci"}, the leaderboard schema that committed results use. `format_estimate` reads either.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class Estimate:
    """A point estimate with its 95% interval, the number of units it rests on, and how the interval was made.
    `note` says why a value is NaN (e.g. a recovery ratio whose expert did not detoxify)."""

    value: float
    ci: tuple[float, float]
    n: int
    ci_method: str
    note: str = ""

    def as_dict(self) -> dict:
        d = asdict(self)
        d["ci"] = list(self.ci)
        return d


def format_estimate(estimate: dict | None, digits: int = 3) -> str:
    """"v [lo, hi]" ("–" when missing or undefined; " †" when the note marks the value unreliable)."""
    value = None if not estimate else estimate.get("mean", estimate.get("value"))
    if value is None or value != value:
        return "–"
    text = f"{value:.{digits}f}"
    ci = estimate.get("ci")
    if ci and ci[0] is not None and ci[0] == ci[0]:
        text += f" [{ci[0]:.{digits}f}, {ci[1]:.{digits}f}]"
    return text + (" †" if str(estimate.get("note", "")).startswith("unreliable") else "")
