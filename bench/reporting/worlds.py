"""The worlds matrix board: `<task>-worlds.{json,md,html}`, built only from stored runs of `bench worlds`
(bench/execution/worlds.py), so rebuilding it is exact.

Rows are methods, columns worlds. Per world and method: STARC and ROC-AUC on held-out test items with 95% CIs and
tie marks (paired comparison with the world's best, Holm over the methods), STARC over the world's broad pool, and
the seed ambiguity; per world the paired differences failure_aware − bradley_terry and failure_aware − max_margin,
Holm-corrected over the whole family of one metric (every world × both comparisons); and the verdicts of the
hypotheses stated before the run (leaderboards/hypotheses.md).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from threadpoolctl import threadpool_limits

from bench.reporting.document import load_trials
from bench.reporting.worlds_render import render_html, render_markdown
from bench.scoring.bootstrap import ALPHA, compare_to_best, holm, percentile_ci
from bench.scoring.null_starc import NULL_DISTANCE
from bench.scoring.scorer import data_counts
from bench.scoring.worlds import WORLD_METRICS, linear_floor, paired_difference, score_world
from bench.storage.artifacts import atomic_write_bytes, atomic_write_json

SCHEMA_VERSION = 1
FOCUS = "failure_aware"
REFERENCES = ("bradley_terry", "max_margin")
TRAINED = ("bradley_terry", "max_margin", "failure_aware")
WORLD_FILE = "world.json"  # beside selection.json: the world's one-line statement (written by bench worlds)

# id, claim, world ("*" = every world), metric, a, b, claimed sign of a − b (from leaderboards/hypotheses.md)
HYPOTHESES = [
    ("H1", "FA has lower STARC than BT", "clean", "starc", FOCUS, "bradley_terry", -1),
    ("H2", "FA has lower STARC than MM", "clean", "starc", FOCUS, "max_margin", -1),
    ("H3", "FA has higher ROC-AUC than BT", "clean", "roc_auc", FOCUS, "bradley_terry", +1),
    ("H4", "FA has lower STARC than BT", "imbalanced", "starc", FOCUS, "bradley_terry", -1),
    ("H5", "FA has higher ROC-AUC than BT", "imbalanced", "roc_auc", FOCUS, "bradley_terry", +1),
    ("H6", "FA has lower seed ambiguity than BT", "*", "seed_ambiguity", FOCUS, "bradley_terry", -1),
    ("H7", "FA has higher STARC than BT (FA worse)", "scarce", "starc", FOCUS, "bradley_terry", +1),
    ("H8", "FA has higher STARC than BT (FA worse)", "noisy", "starc", FOCUS, "bradley_terry", +1),
    ("H9", "FA has lower STARC than BT", "near-ties", "starc", FOCUS, "bradley_terry", -1),
    ("H10", "FA has higher STARC than BT (FA worse)", "small-data", "starc", FOCUS, "bradley_terry", +1),
]


def _estimate(point: float, replicates: np.ndarray) -> dict:
    lo, hi = percentile_ci(replicates)
    return {"mean": _clean(point), "ci": [_clean(lo), _clean(hi)]}


def score_group(group_dir: Path, n_boot: int | None = None) -> dict:
    """One world's column of the matrix, with the raw replicates kept under "_raw" for the cross-world family."""
    selection, data, ok, failures = load_trials(Path(group_dir))
    statement = json.loads((Path(group_dir) / WORLD_FILE).read_text())["stresses"]
    raw = score_world(ok, data, n_boot=n_boot or selection.bootstrap["resamples"], seed=selection.bootstrap["seed"])
    methods = {}
    for metric, direction in WORLD_METRICS.items():
        have = {m: r for m, r in raw.items() if metric in r["point"]}
        ties = compare_to_best({m: r["point"][metric] for m, r in have.items()},
                               {m: r["replicates"][metric] for m, r in have.items()}, direction)
        for m, r in have.items():
            cell = _estimate(r["point"][metric], r["replicates"][metric])
            cell["standing"] = "best" if ties[m]["best"] else "tied" if ties[m]["tied"] else ""
            methods.setdefault(m, {})[metric] = cell
    for m, r in raw.items():
        methods[m]["per_seed"] = {k: [_clean(v) for v in vals] for k, vals in r["per_seed"].items()}
        methods[m]["n_seeds"] = r["n_seeds"]
        methods[m]["failures"] = len(failures.get(m, []))
    coverage = {}
    for m in [m for m in TRAINED if m in raw and "pool_starc" in raw[m]["point"]]:
        d = raw[m]["replicates"]["pool_starc"] - raw[m]["replicates"]["starc"]  # independent resamples: conservative
        coverage[m] = {"diff": _clean(raw[m]["point"]["pool_starc"] - raw[m]["point"]["starc"]),
                       "ci": [_clean(x) for x in percentile_ci(d)]}
    return {
        "world": data.profile.removeprefix("world-"), "profile": data.profile, "stresses": statement,
        "data": data_counts(data) | {"pool_items": len(ok[next(iter(ok))][0]["rewards"].get("pool", [])) if ok else 0},
        "linear_floor": _clean(linear_floor(data)),
        "methods": methods,
        "tuning": {m: e.tuning for m, e in selection.methods.items()},
        "configs": {m: e.config for m, e in selection.methods.items()},
        "coverage": coverage | {"order_test": _order(raw, "starc"), "order_pool": _order(raw, "pool_starc")},
        "_raw": raw,
    }


def _order(raw: dict, metric: str) -> list[str]:
    have = [m for m in TRAINED if m in raw and metric in raw[m]["point"]]
    return sorted(have, key=lambda m: raw[m]["point"][metric])


def build(group_dirs: list[Path], n_boot: int | None = None) -> dict:
    """The board document from the stored runs of the given worlds (single-threaded BLAS: stable digits)."""
    with threadpool_limits(limits=1):
        columns = [score_group(g, n_boot) for g in group_dirs]
    # paired differences, Holm over every (world, comparison) of one metric
    for metric in WORLD_METRICS:
        family = []
        for col in columns:
            raw = col["_raw"]
            for ref in REFERENCES:
                if FOCUS in raw and ref in raw:
                    d = paired_difference(raw[FOCUS], raw[ref], metric)
                    if d is not None:
                        family.append((col, f"{FOCUS} - {ref}", d))
        for (col, name, d), p_adj in zip(family, holm([d["p"] for _, _, d in family])):
            entry = {"diff": _clean(d["diff"]), "ci": [_clean(x) for x in d["ci"]], "p": _clean(d["p"]),
                     "p_holm": _clean(p_adj)}
            col.setdefault("differences", {}).setdefault(name, {})[metric] = entry
    for col in columns:
        col.pop("_raw")
        col["coverage"]["agree"] = col["coverage"]["order_test"] == col["coverage"]["order_pool"]
    doc = {
        "schema_version": SCHEMA_VERSION,
        "task": json.loads((Path(group_dirs[0]) / "selection.json").read_text())["task_data"]["task"],
        "worlds": columns,
        "conventions": {
            "alpha": ALPHA,
            "starc_null": f"a reward constant within every prompt scores {NULL_DISTANCE:.6f} (√2, the expected "
                          f"distance of an independent reward), never the 1.0 of the plain definition "
                          f"(bench/scoring/null_starc.py)",
            "ties": "paired bootstrap of the difference to the world's best method, Holm over the methods",
            "differences": "paired two-level bootstrap (shared seed × test-prompt resamples); Holm over every "
                           "world × {FA − BT, FA − MM} of one metric",
            "pool": "STARC over a broad pool: π₀, π_E, a sharper and a reversed tilt, ± a random reward direction "
                    "and uniform tokens, 2 completions each, on test prompts",
            "coverage": "pool − test STARC per trained method (independent resamples: a conservative CI)",
            "linear_floor": "STARC of the least-squares linear reward over token counts, fitted to R* on the test "
                            "items (the best a linear head can do)",
        },
    }
    doc["hypotheses"] = verdicts(doc)
    return doc


def _directional(entry: dict | None, sign: int) -> str:
    if entry is None or entry["p_holm"] is None:
        return "undecided"
    if entry["p_holm"] < ALPHA:
        return "supported" if np.sign(entry["diff"]) == sign else "contradicted"
    return "undecided"


def _across(verdicts: list[str]) -> str:
    if verdicts.count("supported") >= 5 and "contradicted" not in verdicts:
        return "supported"
    return "contradicted" if verdicts.count("contradicted") >= 5 else "undecided"


def verdicts(doc: dict) -> list[dict]:
    """Each pre-stated hypothesis marked supported / contradicted / undecided by the rules of hypotheses.md."""
    by_world = {c["world"]: c for c in doc["worlds"]}
    out = []
    for hid, claim, world, metric, a, b, sign in HYPOTHESES:
        worlds = list(by_world) if world == "*" else [world]
        found = {w: by_world[w].get("differences", {}).get(f"{a} - {b}", {}).get(metric)
                 for w in worlds if w in by_world}
        per = {w: _directional(e, sign) for w, e in found.items()}
        if not per:
            verdict = "not run"
        else:
            verdict = per[world] if world != "*" else _across(list(per.values()))
        evidence = "; ".join(f"{w}: {e['diff']:+.3f} [{e['ci'][0]:+.3f}, {e['ci'][1]:+.3f}], Holm p {e['p_holm']:.3g}"
                             for w, e in found.items() if e is not None)
        out.append({"id": hid, "claim": claim, "world": world, "metric": metric, "verdict": verdict,
                    "per_world": per, "evidence": evidence})
    out.append(_floor_hypothesis(by_world))
    out.append(_coverage_hypothesis(by_world))
    return out


def _floor_hypothesis(by_world: dict) -> dict:
    col = by_world.get("misspecified")
    entry = {"id": "H11", "claim": "every trained linear method stays above the linear head's STARC floor",
             "world": "misspecified", "metric": "starc", "per_world": {}}
    if col is None or col["linear_floor"] is None:
        return entry | {"verdict": "not run", "evidence": ""}
    floor = col["linear_floor"]
    cells = {m: col["methods"][m]["starc"] for m in TRAINED if m in col["methods"]}
    if any(c["mean"] < floor for c in cells.values()):
        verdict = "contradicted"
    else:
        verdict = "supported" if all(c["ci"][0] > floor for c in cells.values()) else "undecided"
    evidence = f"floor {floor:.3f}; " + "; ".join(f"{m} {c['mean']:.3f} [{c['ci'][0]:.3f}, {c['ci'][1]:.3f}]"
                                                  for m, c in cells.items())
    return entry | {"verdict": verdict, "evidence": evidence}


def _coverage_hypothesis(by_world: dict) -> dict:
    per = {}
    for w, col in by_world.items():
        cov = [col["coverage"][m] for m in TRAINED if m in col["coverage"]]
        if not cov:
            continue
        per[w] = ("supported" if all(c["ci"][0] > 0 for c in cov) else
                  "contradicted" if any(c["ci"][1] < 0 for c in cov) else "undecided")
    evidence = "; ".join(f"{w}: " + ", ".join(f"{m} {col['coverage'][m]['diff']:+.3f}" for m in TRAINED
                                             if m in col["coverage"]) for w, col in by_world.items() if w in per)
    return {"id": "H12", "claim": "every trained method's STARC over the broad pool exceeds its on-policy STARC",
            "world": "*", "metric": "pool_starc - starc", "per_world": per,
            "verdict": _across(list(per.values())) if per else "not run", "evidence": evidence}


def write(doc: dict, out_dir: Path, name: str) -> tuple[Path, Path, Path]:
    """<name>.json, .md and .html; the page is rendered first, so a plotting failure leaves old files intact."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    page, markdown = render_html(doc), render_markdown(doc)
    paths = out_dir / f"{name}.json", out_dir / f"{name}.md", out_dir / f"{name}.html"
    atomic_write_json(paths[0], doc, indent=1)
    atomic_write_bytes(paths[1], markdown.encode())
    atomic_write_bytes(paths[2], page.encode())
    return paths


def _clean(x, digits: int = 6):
    if x is None or not np.isfinite(x):
        return None
    return round(float(x), digits) + 0.0
