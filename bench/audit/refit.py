"""The token view of a bag-of-tokens task: refit each trial's reward, probe its per-token weights, compare them with
the ground truth's (bench/audit/attribution.py says how). Refits run single-threaded, a few seconds each on the
synthetic task; a refit whose test rewards differ from the stored ones is reported (`refit_max_abs_diff`)."""

from __future__ import annotations

import numpy as np

from bench import registry
from bench.audit.attribution import (
    agreement,
    least_squares_weights,
    most_penalised,
    probe_token_weights,
    standardised_weights,
)
from bench.data import TaskData
from bench.execution.fit_trial import TrialSpec, fit_reward
from bench.storage.selection import Selection

WHY = ("token probe (refit): the task's encoder is bag-of-tokens counts, so each trial's reward is refitted "
       "(deterministic; checked against its stored test rewards: refit_drift) and probed token by token: "
       "w_t = r̂(x, 't') − r̂(x, ''), exactly the head's weight for a linear head over counts")


DRIFT = 1e-3


def token_view(selection: Selection, data: TaskData, trials: dict[str, list[dict]], k: int) -> dict:
    """{"attribution", "k", "vocab_size", "chance_precision", "truth_top": [[token, θ], ...], "methods": {method:
    {"how", "top_tokens", "precision_at_k", "spearman", "stored_least_squares", "refit_drift", "reproduced"}}}.
    stored_least_squares: the same agreement of least-squares weights from the stored test rewards (what the
    leaderboard scored; exact for a linear head, a linear projection otherwise). refit_drift: the max over
    seeds of max |refit − stored| / sd(stored) on test items (float32 rounding gives ~1e-7); above DRIFT the refit
    is not the stored reward (reproduced false) and its weights describe the refit. A method whose reward cannot be
    refitted from what is stored gets least-squares weights from its stored test rewards."""
    demos = data.demos()
    vocab = list(demos.encoder["vocab"])
    items = demos.splits["test"].items
    prompt = items.prompts[0]
    truth = probe_token_weights(registry.get_task(data.task).ground_truth(data.ref), prompt, vocab)
    methods = {}
    for method, results in trials.items():
        results = sorted(results, key=lambda t: t["seed"])
        per_seed, drift, how = [], 0.0, "refit"
        try:
            for result in results:
                reward, _ = fit_reward(TrialSpec(method, selection.methods[method].config, result["seed"], data.ref))
                rescored = np.asarray(reward.score(items.prompts, items.texts), dtype=float)
                kept = np.asarray(result["rewards"]["test"])
                drift = max(drift, float(np.max(np.abs(rescored - kept)) / (kept.std() or 1.0)))
                per_seed.append(probe_token_weights(reward, prompt, vocab))
        except Exception as exc:  # e.g. `implicit` needs the policies artifact, which results/ does not carry
            how = f"least squares on stored test rewards (cannot refit: {type(exc).__name__}: {exc})"
            per_seed, drift = None, None
        prompt_ids = np.asarray(items.prompt_ids)
        stored = [least_squares_weights(np.asarray(r["rewards"]["test"]), prompt_ids, items.texts, vocab)
                  for r in results]
        per_seed = per_seed or stored
        mean = np.mean([standardised_weights(w) for w in per_seed], axis=0)
        methods[method] = {
            "seeds": len(per_seed),
            "how": how,
            "top_tokens": [[vocab[i], round(float(mean[i]), 4)] for i in most_penalised(mean, k)] if np.ptp(mean) > 0
            else [],  # a reward that weighs every token alike penalises none of them
            **agreement(per_seed, truth, k),
            "stored_least_squares": agreement(stored, truth, k),
            "refit_drift": None if drift is None else float(f"{drift:.3g}"),
            "reproduced": None if drift is None else drift <= DRIFT,
        }
    return {
        "attribution": "token probe (refit)",
        "why": WHY,
        "k": k,
        "vocab_size": len(vocab),
        "chance_precision": round(k / len(vocab), 4),
        "reference": "R* probed the same way (the task's ground truth)",
        "truth_top": [[vocab[i], round(float(truth[i]), 4)] for i in most_penalised(truth, k)],
        "methods": methods,
    }
