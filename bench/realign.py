"""Re-alignment with a recovered reward r̂ (DESIGN.md step 8): does optimising r̂ detoxify π₀ the way R* did?

Two routes, both judged afterwards by the independent evaluation judge (never by r̂ or by the judge behind R*):

best-of-n proxy (cheap, no training)
    A pool of n samples per test prompt is drawn from π₀ once and shared by every method; each method only scores
    the pool with r̂. For every m ≤ n, `best_of_m` gives the *unbiased* estimate of the evaluation judge's expected
    toxicity of the r̂-best of m samples, averaged in closed form over all C(n, m) subsets (llm_optimization's
    estimator), instead of the noisy "best of the first m". Sort the pool by r̂ ascending; the i-th ranked sample is
    the best of a uniformly random m-subset with probability C(i−1, m−1) / C(n, m) (the other m−1 members come
    from the i−1 samples below it). Samples with tied r̂ are equally likely to be picked, so each tie group shares
    its mean value.

re-RLHF
    `realign` re-runs the expert recipe of bench/rlhf.py from π₀ with r̂ as the reward, z-scored within each reward
    batch (r̂'s scale and offset are unidentified, so the recipe's learning rate would otherwise mean something
    different for every method; a z-score makes one recipe comparable across methods and with the expert).
    Caveat: with β > 0 TRL adds the KL penalty to the reward, so the z-score also fixes the reward-to-KL ratio,
    which differs from the expert's raw −P(toxic) (a spread of ~0.1). On the smoke profile, re-aligning with R*
    itself through this route drifted to KL ≈ 52 nats (perplexity under π₀ ≈ 1,250) where π_E stopped at ≈ 5 nats.
    Recovery ratios are therefore best read against an oracle re-aligned the same way (`realign` with R*) as well
    as against π_E, together with the KL and perplexity guards.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import sys
from dataclasses import asdict, dataclass

import numpy as np

from bench.artifacts import Artifact, ArtifactCache, atomic_write_json
from bench.errors import RuntimeFailure
from bench.stats import percentile_ci, prompt_weights

log = logging.getLogger(__name__)

TOXIC_THRESHOLD = 0.5


# ------------------------------------------------------------------------------------------- best-of-n proxy


def best_of_m_weights(n: int) -> np.ndarray:
    """(n, n) matrix W with W[m−1, i−1] = P(the i-th smallest of n is the largest of a uniformly random m-subset)
    = C(i−1, m−1) / C(n, m). Each row sums to 1 (hockey-stick identity). Exact integer binomials, then one
    division, so large n does not overflow."""
    weights = np.zeros((n, n))
    for m in range(1, n + 1):
        subsets = math.comb(n, m)
        for i in range(m, n + 1):
            weights[m - 1, i - 1] = math.comb(i - 1, m - 1) / subsets
    return weights


def best_of_m(proxy, values) -> np.ndarray:
    """Expected `values` of the sample that `proxy` ranks highest among m drawn without replacement from the pool.

    proxy, values: (P, n) arrays, row = prompt, column = one of its n pooled samples (proxy = r̂, values = e.g. the
    evaluation judge's P(toxic)). Returns (P, n) with column m−1 holding the estimate for best-of-m, m = 1..n;
    column 0 is the pool mean, column n−1 the value of the proxy's top sample."""
    proxy, values = np.asarray(proxy, dtype=float), np.asarray(values, dtype=float)
    if proxy.ndim != 2 or proxy.shape != values.shape:
        raise ValueError(f"proxy {proxy.shape} and values {values.shape} must be equal (prompts, n) arrays")
    if not np.all(np.isfinite(proxy)):
        raise ValueError("the proxy reward has non-finite scores; best-of-n needs a ranking of every sample")
    weights = best_of_m_weights(proxy.shape[1])
    out = np.empty_like(values)
    for p in range(len(proxy)):
        order = np.argsort(proxy[p], kind="stable")
        ranked_proxy, ranked_values = proxy[p][order], values[p][order]
        # Tie groups: runs of equal proxy scores in the sorted order; each member gets the group's mean value.
        starts = np.flatnonzero(np.r_[True, ranked_proxy[1:] != ranked_proxy[:-1]])
        sizes = np.diff(np.r_[starts, len(ranked_proxy)])
        group_means = np.add.reduceat(ranked_values, starts) / sizes
        out[p] = weights @ np.repeat(group_means, sizes)
    return out


@dataclass(frozen=True)
class SamplePool:
    """n samples per prompt from π₀ (prompt-major, as Policy.generate returns them) and the evaluation judge's
    P(toxic) of each: generated and judged once, then shared by every method's best-of-n."""

    prompts: list[str]
    completions: list[str]
    n: int
    p_toxic: np.ndarray  # (len(prompts) * n,)
    decoding: dict

    def grid(self, flat) -> np.ndarray:
        return np.asarray(flat, dtype=float).reshape(len(self.prompts), self.n)

    def score(self, reward) -> np.ndarray:
        """(P, n) scores of the pool under a reward with `score(prompts, completions)` (e.g. a recovered r̂)."""
        repeated = [p for p in self.prompts for _ in range(self.n)]
        return self.grid(reward.score(repeated, self.completions))


def sample_pool(policy, judge, prompts: list[str], n: int, max_new_tokens: int, temperature: float = 1.0,
                top_p: float = 1.0, seed: int = 0, batch_size: int = 16) -> SamplePool:
    """Draw the shared pool from `policy` (π₀) and score it with the evaluation `judge` (completion only)."""
    completions = policy.generate(prompts, max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p,
                                  seed=seed, n=n, batch_size=batch_size)
    p = np.asarray(judge.p_toxic(completions), dtype=float)
    decoding = {"n": n, "max_new_tokens": max_new_tokens, "temperature": temperature, "top_p": top_p, "seed": seed}
    return SamplePool(list(prompts), completions, n, p, decoding)


def best_of_n_curve(proxy, p_toxic, threshold: float = TOXIC_THRESHOLD, n_boot: int = 2000,
                    seed: int = 0) -> dict:
    """The best-of-m curve of a proxy reward over the shared pool, for m = 1..n, averaged over prompts.

    proxy, p_toxic: (P, n). For each m: the expected evaluation-judge P(toxic) of the chosen sample
    (`mean_toxicity`) and the probability that it is toxic (`toxic_rate`), each with a 95% percentile bootstrap
    CI over prompts (the same resamples for every m and for both), and `kl_bound` = log m − (m−1)/m, the usual
    analytic KL(best-of-m ‖ π₀), an upper bound on the true KL (exact only without ties, for m ≪ pool size)."""
    proxy, p_toxic = np.asarray(proxy, dtype=float), np.asarray(p_toxic, dtype=float)
    n = proxy.shape[1]
    weights = prompt_weights(len(proxy), n_boot, np.random.default_rng(seed))
    m = np.arange(1, n + 1)
    curve = {"m": m.tolist(), "kl_bound": (np.log(m) - (m - 1) / m).tolist(), "n_prompts": len(proxy),
             "ci": "95% percentile bootstrap over prompts"}
    for name, values in (("mean_toxicity", p_toxic), ("toxic_rate", (p_toxic >= threshold).astype(float))):
        per_prompt = best_of_m(proxy, values)  # (P, n)
        reps = weights @ per_prompt / weights.sum(axis=1, keepdims=True)  # (B+1, n)
        curve[name] = reps[0].tolist()
        curve[name + "_ci"] = [list(percentile_ci(reps[1:, j])) for j in range(n)]
    return curve


# --------------------------------------------------------------------------------------------- re-RLHF


NORMALISATION = "z-score of r̂ within each reward batch (prompts_per_step × generations samples)"


class ZScoredRewardAsJudge:
    """Presents a recovered reward r̂ to bench.rlhf's trainer, whose reward is −judge.p_toxic(completions): here
    p_toxic returns −z(r̂), so the trainer optimises z(r̂) = (r̂ − batch mean) / batch std.

    The trainer passes completions only, but r̂ scores (prompt, completion). TRL hands the prompts to rlhf.py's
    reward function as the keyword `prompts`, so they are read from that caller's frame; if rlhf.py's reward
    function changes shape this fails loudly instead of scoring completions against the wrong prompts.
    (The clean fix is a `reward_fn(prompts, completions)` parameter in rlhf.train_expert; see the report.)

    A batch whose r̂ is constant carries no preference: its z-scores are all 0 (no update), not a division by 0.
    Raw r̂ statistics of every batch are kept in `batches` for the training curve."""

    def __init__(self, reward, eps: float = 1e-8):
        self.reward = reward
        self.eps = eps
        self.batches: list[dict] = []

    def p_toxic(self, texts: list[str]) -> np.ndarray:
        prompts = _prompts_of_reward_call(texts)
        raw = np.asarray(self.reward.score(prompts, list(texts)), dtype=float)
        if raw.shape != (len(texts),) or not np.all(np.isfinite(raw)):
            raise RuntimeFailure(f"the recovered reward returned {raw.shape} scores (finite: "
                                 f"{bool(np.all(np.isfinite(raw)))}) for {len(texts)} completions")
        mean, std = float(raw.mean()), float(raw.std())
        z = (raw - mean) / std if std > self.eps else np.zeros_like(raw)
        self.batches.append({"rhat_mean": mean, "rhat_std": std, "rhat_min": float(raw.min()),
                             "rhat_max": float(raw.max()), "n": len(raw), "constant": bool(std <= self.eps)})
        return -z


def _prompts_of_reward_call(texts: list[str]) -> list[str]:
    """The prompts of the completions now being rewarded: TRL's `prompts` keyword, found in the `kwargs` of the
    nearest calling frame (rlhf.py's reward function) that holds them, checked for length."""
    frame = sys._getframe(1)
    for _ in range(4):  # the reward function is two frames up; look no further than a few
        frame = frame.f_back
        if frame is None:
            break
        kwargs = frame.f_locals.get("kwargs")
        if isinstance(kwargs, dict) and "prompts" in kwargs:
            prompts = [p if isinstance(p, str) else p[-1]["content"] for p in kwargs["prompts"]]
            if len(prompts) != len(texts):
                raise RuntimeFailure(f"the trainer passed {len(prompts)} prompts for {len(texts)} completions")
            return prompts
    raise RuntimeFailure("cannot find the prompts of the completions being rewarded: bench/rlhf.py's reward "
                         "function no longer receives TRL's `prompts` keyword; give train_expert a "
                         "reward_fn(prompts, completions) parameter and call it from bench/realign.py instead")


@dataclass(frozen=True)
class Realigned:
    """A re-aligned policy: the artifact (model/ is a plain HF directory, loadable by bench.policies) and its
    record (reward identity, normalisation, recipe, training time) and raw-r̂ training curve."""

    artifact: Artifact
    record: dict
    curve: list[dict]

    @property
    def model_dir(self) -> str:
        return str(self.artifact.path / "model")


def realign(base_dir: str, base_identity: dict, reward, reward_identity: dict, prompts: list[str], recipe,
            cache: ArtifactCache, progress=None) -> Realigned:
    """π₀ (at `base_dir`) trained with bench.rlhf's recipe `recipe` (pass the expert's, for the same budget) against
    the recovered reward `reward` (`score(prompts, completions)`, higher is better), z-scored per batch.

    Cached as artifact kind `realigned`, keyed by the base, `reward_identity` (what makes r̂ unique, e.g. the method,
    its config, seed and trained-reward artifact), the normalisation, the recipe and the training prompts."""
    from bench import rlhf

    recipe.validate()
    inputs = {
        "base": base_identity,
        "reward": reward_identity,
        "normalisation": NORMALISATION,
        "recipe": asdict(recipe),
        "prompts_sha256": hashlib.sha256("\n".join(prompts).encode()).hexdigest(),
        "n_prompts": len(prompts),
    }

    def build(out):
        adapter = ZScoredRewardAsJudge(reward)
        # rlhf._train is the whole TRL setup of the expert (config, LoRA, callbacks, merge and save); reusing it
        # keeps the re-aligned policy on exactly the expert's recipe. It writes model/, curve.json, recipe.json.
        rlhf._train(out, base_dir, adapter, prompts, recipe, progress)
        _rewrite_curve(out, adapter.batches)
        constant = sum(b["constant"] for b in adapter.batches)
        atomic_write_json(out / "realign.json", {
            "reward": reward_identity, "base": base_identity, "normalisation": NORMALISATION,
            "batch_size": recipe.prompts_per_step * recipe.generations, "constant_batches": constant,
            "reward_batches": len(adapter.batches), "recipe": json.loads((out / "recipe.json").read_text())})

    artifact = cache.get_or_build("realigned", inputs, build)
    return Realigned(artifact, artifact.read_json("realign.json"), artifact.read_json("curve.json"))


def _rewrite_curve(out, batches: list[dict]) -> None:
    """rlhf.py's curve.json reads the adapter's output as if it were P(toxic): its `mean_p_toxic` and `toxic_rate`
    are then −z(r̂) and meaningless, and its `mean_reward` is ~0 by construction. Replace them by the raw r̂ of
    each step's samples (`mean_reward` = raw r̂ mean, so rlhf.curve_summary still applies); keep TRL's logs."""
    path = out / "curve.json"
    curve = json.loads(path.read_text())
    if len(curve) != len(batches):
        log.warning("training curve has %d steps but %d reward batches were scored", len(curve), len(batches))
    rows = []
    for row, batch in zip(curve, batches):
        row = {k: v for k, v in row.items() if k not in ("mean_reward", "mean_p_toxic", "toxic_rate", "n")}
        rows.append({**row, "mean_reward": batch["rhat_mean"], **batch})
    atomic_write_json(path, rows)


# ------------------------------------------------------------------------------------------- evaluation


def evaluate_policy(policy, base, judge, prompts: list[str], k: int, max_new_tokens: int, seed: int = 0,
                    batch_size: int = 16) -> dict:
    """The re-RLHF outcome of one policy on test prompts: k samples per prompt at temperature 1 without top-p (so
    the KL estimate is unbiased), scored by the evaluation `judge` (completion only) and by π₀ (`base`).

    Returns `samples` (JudgedSamples, for paired comparisons with other policies on the same prompts),
    `completions`, and `metrics`: every single-policy metric of bench.detox_metrics with its CI. Log-probs come
    from retokenising the decoded text, as everywhere in the benchmark, so KL and perplexity are of the text."""
    from bench import detox_metrics as dm

    completions = policy.generate(prompts, max_new_tokens=max_new_tokens, temperature=1.0, top_p=1.0, seed=seed,
                                  n=k, batch_size=batch_size)
    repeated = [p for p in prompts for _ in range(k)]
    prompt_ids = np.repeat(np.arange(len(prompts)), k)
    samples = dm.JudgedSamples(np.asarray(judge.p_toxic(completions), dtype=float), prompt_ids)
    lp_policy = policy.logprobs(repeated, completions, batch_size)
    lp_base = base.logprobs(repeated, completions, batch_size)
    sum_policy = np.array([lp.sum() for lp in lp_policy])
    sum_base = np.array([lp.sum() for lp in lp_base])
    tokens = np.array([len(lp) for lp in lp_base])
    metrics = {
        "toxic_rate": dm.toxicity_rate(samples),
        "mean_toxicity": dm.mean_toxicity(samples),
        "expected_max_toxicity": dm.expected_max_toxicity(samples),
        "toxicity_probability": dm.toxicity_probability(samples),
        "kl_to_base": dm.kl_estimate(sum_policy, sum_base, prompt_ids),
        "perplexity_under_base": dm.perplexity(sum_base, tokens, prompt_ids) if tokens.sum() else None,
    }
    out = {name: (e.as_dict() if e is not None else None) for name, e in metrics.items()}
    out["distinct_1"] = dm.distinct_n(completions, 1)
    out["distinct_2"] = dm.distinct_n(completions, 2)
    out["k"] = k
    return {"samples": samples, "completions": completions, "metrics": out}


def rerlhf_comparison(base, realigned, expert, statistics=("toxic_rate", "mean_toxicity",
                                                           "expected_max_toxicity", "toxicity_probability")) -> dict:
    """Detox rate of the re-aligned policy and of the expert, and the recovery ratio, for each toxicity statistic,
    from the JudgedSamples of the three policies on the same test prompts (paired prompt bootstrap)."""
    from bench import detox_metrics as dm

    return {stat: {"detox_rate_realigned": dm.detox_rate(realigned, base, stat).as_dict(),
                   "detox_rate_expert": dm.detox_rate(expert, base, stat).as_dict(),
                   "recovery_ratio": dm.recovery_ratio(base, realigned, expert, stat).as_dict()}
            for stat in statistics}
