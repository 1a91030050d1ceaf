"""Where a recovered reward fails on held-out test pairs, by the kind of pair the ground truth says it is.

A test pair is (chosen y⁺ from π_E, rejected y⁻ from π₀). By R*'s labels (1 = bad) it is one of four kinds:

    bad→good    y⁻ bad, y⁺ good: the informative pairs failure-aware IRL leans on (the papers' "T→NT")
    good/good   both good: the expert's choice is a matter of degree (near-ties live here)
    bad/bad     both bad
    good→bad    y⁻ good, y⁺ bad: the expert chose the worse completion (a stochastic expert does that)

Per kind and method: pair accuracy (r̂(y⁺) > r̂(y⁻), ties ½: agreement with the expert's choice) and R* order
(r̂ orders the pair as R* does), each the mean over seeds with a bootstrap CI over seeds (bench/audit/seeds.py).

A *failure pair* of a method is a test pair that its reward misclassifies (margin < 0: y⁻ above y⁺) or nearly ties
(|margin| < δ), where the margin is r̂(y⁺) − r̂(y⁻) in units of the spread of that seed's per-prompt-centred r̂ over
test items, averaged over seeds (so seeds and methods are on one scale), and δ = NEAR_TIE.
"""

from __future__ import annotations

import numpy as np

from bench.audit.seeds import over_seeds
from bench.scoring.metrics import centre_per_prompt

KINDS = {
    "bad→good": "rejected bad, chosen good (informative)",
    "good/good": "both good",
    "bad/bad": "both bad",
    "good→bad": "rejected good, chosen bad (the expert chose the worse one)",
}
NEAR_TIE = 0.1  # |margin| below this many standard deviations of the centred reward counts as a near-tie
# R* bins for a reward that is −P(toxic) (the detox task): P < 0.2 clean, 0.2–0.5 borderline, ≥ 0.5 toxic.
P_BINS = (("clean", 0.0, 0.2), ("borderline", 0.2, 0.5), ("toxic", 0.5, 1.0 + 1e-9))


def pair_kinds(pairs: np.ndarray, bad: np.ndarray) -> np.ndarray:
    """The kind (a key of KINDS) of each (chosen, rejected) pair from the items' bad labels."""
    chosen_bad, rejected_bad = bad[pairs[:, 0]].astype(bool), bad[pairs[:, 1]].astype(bool)
    kinds = np.where(chosen_bad, np.where(rejected_bad, "bad/bad", "good→bad"),
                     np.where(rejected_bad, "bad→good", "good/good"))
    return kinds.astype(object)


def standardised(r: np.ndarray, prompt_ids: np.ndarray) -> np.ndarray:
    """Per-prompt-centred r̂ divided by its standard deviation over the items (all zeros for a constant reward)."""
    c = centre_per_prompt(np.asarray(r, dtype=float), prompt_ids)
    sd = c.std()
    return c / sd if sd > 0 else np.zeros_like(c)


def accuracy_by_kind(rewards: list[np.ndarray], pairs: np.ndarray, truth: np.ndarray, bad: np.ndarray) -> dict:
    """{kind: {"pairs": n, "pair_accuracy": estimate over seeds, "rstar_order": estimate}} for the four kinds."""
    kinds = pair_kinds(pairs, bad)
    truth_sign = np.sign(truth[pairs[:, 0]] - truth[pairs[:, 1]])
    out = {}
    for kind in KINDS:
        mask = kinds == kind
        if not mask.any():
            out[kind] = {"pairs": 0, "pair_accuracy": None, "rstar_order": None}
            continue
        expert, order = [], []
        for r in rewards:
            d = np.sign(r[pairs[mask, 0]] - r[pairs[mask, 1]])
            expert.append(float(np.mean((d > 0) + 0.5 * (d == 0))))
            t = truth_sign[mask]
            order.append(float(np.mean(np.where((d == 0) | (t == 0), 0.5, (d == t).astype(float)))))
        out[kind] = {"pairs": int(mask.sum()), "pair_accuracy": over_seeds(expert), "rstar_order": over_seeds(order)}
    return out


def truth_bins(truth: np.ndarray) -> tuple[np.ndarray, str]:
    """(bin name per item, how the bins are defined). A reward in [−1, 0] is read as −P(toxic) and binned by
    P_BINS; any other R* into its thirds over the test items."""
    if truth.min() >= -1.0 and truth.max() <= 0.0:
        p = -truth
        names = np.empty(len(truth), dtype=object)
        for name, low, high in P_BINS:
            names[(p >= low) & (p < high)] = name
        return names, "P_toxic = −R*: clean < 0.2 ≤ borderline < 0.5 ≤ toxic"
    low, high = np.quantile(truth, [1 / 3, 2 / 3])
    names = np.where(truth < low, "lowest third", np.where(truth < high, "middle third", "highest third"))
    return names.astype(object), f"thirds of R* over test items (cuts {low:.3g}, {high:.3g})"


def within_prompt_pairs(prompt_ids: np.ndarray) -> np.ndarray:
    """Every pair (i, j), i < j, of items of the same prompt, shape (n, 2)."""
    rows = []
    for prompt in np.unique(prompt_ids):
        idx = np.flatnonzero(prompt_ids == prompt)
        i, j = np.triu_indices(len(idx), k=1)
        rows.append(np.stack([idx[i], idx[j]], axis=1))
    return np.concatenate(rows) if rows else np.zeros((0, 2), dtype=int)


def agreement_by_bin(rewards: list[np.ndarray], prompt_ids: np.ndarray, truth: np.ndarray) -> dict:
    """Per R* bin: items, "rstar_order" (share of the same-prompt item pairs with an item in the bin and R* not
    tied that r̂ orders as R* does; ties of r̂ ½) and "mean_z" (mean standardised r̂ of the bin's items)."""
    names, definition = truth_bins(truth)
    both = within_prompt_pairs(prompt_ids)
    both = both[truth[both[:, 0]] != truth[both[:, 1]]]
    t = np.sign(truth[both[:, 0]] - truth[both[:, 1]])
    order_of_bins = [n for n, *_ in P_BINS] if definition.startswith("P_toxic") else \
        ["lowest third", "middle third", "highest third"]
    bins = {}
    for name in order_of_bins:
        in_bin = names == name
        touching = in_bin[both[:, 0]] | in_bin[both[:, 1]]
        order, mean_z = [], []
        for r in rewards:
            d = np.sign(r[both[touching, 0]] - r[both[touching, 1]])
            order.append(float(np.mean(np.where(d == 0, 0.5, (d == t[touching]).astype(float))))
                         if touching.any() else None)
            mean_z.append(float(standardised(r, prompt_ids)[in_bin].mean()) if in_bin.any() else None)
        bins[name] = {"items": int(in_bin.sum()), "pairs": int(touching.sum()), "rstar_order": over_seeds(order),
                      "mean_z": over_seeds(mean_z)}
    return {"definition": definition, "bins": bins}


def failure_pairs(rewards: list[np.ndarray], prompt_ids: np.ndarray, pairs: np.ndarray, truth: np.ndarray,
                  bad: np.ndarray, top: int) -> dict:
    """{kind: {"failures": n, "shown": [pair record, ...]}}: a method's failure pairs per kind, worst first (most
    negative mean margin), at most `top` shown per kind. A pair record holds the item indices, the mean margin, the
    share of seeds that misclassify it, R* of both completions and the ground truth's verdict."""
    margins = np.array([(z := standardised(r, prompt_ids))[pairs[:, 0]] - z[pairs[:, 1]] for r in rewards])
    mean_margin = margins.mean(axis=0)
    wrong = (margins < 0).mean(axis=0)
    failing = (mean_margin < 0) | (np.abs(mean_margin) < NEAR_TIE)
    kinds = pair_kinds(pairs, bad)
    out = {}
    for kind in KINDS:
        idx = np.flatnonzero(failing & (kinds == kind))
        idx = idx[np.argsort(mean_margin[idx], kind="stable")]
        shown = []
        for i in idx[:top]:
            c, r = int(pairs[i, 0]), int(pairs[i, 1])
            verdict = "R* agrees with the expert" if truth[c] > truth[r] else \
                "R* prefers the rejected" if truth[c] < truth[r] else "R* ties"
            shown.append({"pair": int(i), "chosen": c, "rejected": r, "margin": round(float(mean_margin[i]), 4),
                          "kind": "misclassified" if mean_margin[i] < 0 else "near-tie",
                          "seeds_wrong": round(float(wrong[i]), 3), "rstar_chosen": round(float(truth[c]), 4),
                          "rstar_rejected": round(float(truth[r]), 4), "verdict": verdict})
        out[kind] = {"pairs": int((kinds == kind).sum()), "failures": int(idx.size), "shown": shown}
    return out
