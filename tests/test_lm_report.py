"""The detox report sections' offline-metric vs re-alignment-outcome table, on hand-made rows."""

import pytest

from bench.lm.report import OFFLINE, offline_vs_outcome, outcome_lines


def rows_and_realigned(outcomes, roc):
    rows, realigned = [], []
    for i, (outcome, auc) in enumerate(zip(outcomes, roc)):
        per_seed = {m: [auc if m == "roc_auc" else 0.5 + 0.01 * ((i * 7) % 5)] for m in OFFLINE}
        per_seed["starc"] = [1.0 - auc]
        rows.append({"method": f"m{i}", "seeds": [0], "per_seed": per_seed})
        realigned.append({"method": f"m{i}", "seed": 0,
                          "bon": {"eval": {"mean_toxicity": {"value": 0.2 - 0.1 * auc}}},
                          "comparison": {"eval": {"mean_toxicity": {"recovery_ratio": {"value": outcome}}}}})
    return rows, realigned


def test_a_metric_that_orders_the_outcomes_gets_rho_one_and_its_mirror_minus_one():
    rows, realigned = rows_and_realigned([0.1, 0.4, 0.5, 0.9, 1.2, 0.7], [0.5, 0.6, 0.65, 0.8, 0.95, 0.7])
    table = offline_vs_outcome(rows, realigned, n_boot=300)
    assert table["n"] == 6
    assert table["metrics"]["roc_auc"]["value"] == pytest.approx(1.0)
    assert table["metrics"]["starc"]["value"] == pytest.approx(-1.0)
    assert table["metrics"]["best_of_n_toxicity"]["value"] == pytest.approx(-1.0)
    lo, hi = table["metrics"]["roc_auc"]["ci"]
    assert lo <= 1.0 <= hi
    assert any("ρ with recovery" in line for line in outcome_lines(table))


def test_too_few_rows_or_undefined_outcomes_give_no_correlation():
    rows, realigned = rows_and_realigned([0.1, float("nan"), 0.5, 0.9], [0.5, 0.6, 0.65, 0.8])
    table = offline_vs_outcome(rows, realigned)
    assert table["n"] == 3 and table["metrics"] == {}
    assert outcome_lines(table) == []
