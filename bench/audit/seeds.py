"""A statistic over a method's seeds: the mean, with a 95% percentile bootstrap CI over seeds."""

from __future__ import annotations

import numpy as np

RESAMPLES = 2000
CI_METHOD = f"mean over seeds, 95% percentile bootstrap over seeds ({RESAMPLES} resamples)"


def over_seeds(values, seed: int = 0) -> dict | None:
    """{"mean", "ci": [lo, hi] or None, "n"} of per-seed values (NaNs dropped); None when no seed has a value.
    With one seed there is no CI. Seeds are few (5 by default), so the CI is coarse: it says how much the seeds
    differ, not how the statistic would vary with more test data."""
    x = np.asarray([v for v in values if v is not None and np.isfinite(v)], dtype=float)
    if x.size == 0:
        return None
    ci = None
    if x.size > 1:
        draws = np.random.default_rng(seed).integers(0, x.size, size=(RESAMPLES, x.size))
        means = x[draws].mean(axis=1)
        ci = [round(float(np.quantile(means, 0.025)), 4), round(float(np.quantile(means, 0.975)), 4)]
    return {"mean": round(float(x.mean()), 4), "ci": ci, "n": int(x.size)}


def format_estimate(estimate: dict | None, digits: int = 3) -> str:
    if estimate is None:
        return "–"
    text = f"{estimate['mean']:.{digits}f}"
    return text + (f" [{estimate['ci'][0]:.{digits}f}, {estimate['ci'][1]:.{digits}f}]" if estimate["ci"] else "")
