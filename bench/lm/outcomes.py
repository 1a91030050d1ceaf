"""Policy outcomes: a policy sampled on the evaluation prompts and judged, and the statistics with CIs that the
leaderboard reports for π₀, π_E and every re-aligned policy.

`judged_samples` draws k samples per prompt from a policy and scores them with every judge (R* and the independent
evaluation judge, reported separately) and by log-probability under π₀; `policy_metrics` and `compare_records`
turn such records into bench/lm/toxicity.py's estimates with CIs.
"""

from __future__ import annotations

import ctypes
import gc
import sys

import numpy as np

from bench.lm import toxicity
from bench.lm.engines import Engine, TransformersEngine, key_part
from bench.lm.policies import Policy
from bench.lm.toxicity import JudgedSamples
from bench.storage.artifacts import ArtifactCache, atomic_write_json
from bench.task import hash_texts


def judged_samples(policy, judges: dict, prompts: list[str], k: int, max_new_tokens: int, seed: int = 0,
                   batch_size: int = 16, base=None, progress=None, sampler=None, engine: dict | None = None) -> dict:
    """k samples per prompt from `policy` at temperature 1 without top-p (so that the KL estimate is unbiased),
    P(toxic) of each completion under every judge of `judges` ({name: judge}, completion only), and, when `base`
    (π₀) is given, each completion's log-probability under the policy and under π₀.

    `sampler` (an engine's, bench/lm/engines.py), if given, draws the completions instead of `policy.generate`, and
    `engine` (its identity) is recorded with the decoding; log-probs always come from the reference models.
    The record (JSON-ready) is prompt-major: completion i belongs to prompt i // k. Log-probs come from
    retokenising the decoded text, as everywhere in the benchmark, so KL and perplexity are of the text."""
    completions = (sampler or policy).generate(prompts, max_new_tokens=max_new_tokens, temperature=1.0, top_p=1.0,
                                               seed=seed, n=k, batch_size=batch_size, progress=progress)
    record = {"k": k, "n_prompts": len(prompts), "completions": completions,
              "p_toxic": {name: [round(float(x), 7) for x in judge.p_toxic(completions)]
                          for name, judge in judges.items()},
              "decoding": {"max_new_tokens": max_new_tokens, "temperature": 1.0, "top_p": 1.0, "seed": seed,
                           "batch_size": batch_size, **({"engine": engine} if engine else {})}}
    if base is not None:
        repeated = [p for p in prompts for _ in range(k)]
        lp_base = base.logprobs(repeated, completions, batch_size)
        lp_policy = lp_base if policy is base else policy.logprobs(repeated, completions, batch_size)
        record.update(logprob_fields(lp_base, lp_policy))
    return record


def logprob_fields(lp_base: list, lp_policy: list) -> dict:
    """A record's log-prob fields from per-token log-probs of each completion under π₀ and under the policy."""
    return {"logp_base": [round(float(lp.sum()), 5) for lp in lp_base],
            "logp_policy": [round(float(lp.sum()), 5) for lp in lp_policy],
            "tokens": [int(len(lp)) for lp in lp_base]}


def release_memory() -> None:
    """Give back what finished work left behind: collect reference cycles (a trained model, TRL's reference copy
    and the reward stay in cycles with TRL's trainer until the cyclic collector runs) and return glibc's freed heap
    to the OS (`malloc_trim(0)`: without it a freed model's pages mostly stay resident). It frees only unreachable
    objects, so it changes no number."""
    gc.collect()
    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL("libc.so.6").malloc_trim(0)
        except (OSError, AttributeError):  # not glibc (e.g. musl): the collection above is all there is
            pass


def cached_judged_samples(cache: ArtifactCache, policy_dir: str, identity: dict, base_dir: str | None,
                          base_identity: dict | None, judges: dict, prompts: list[str], k: int, max_new_tokens: int,
                          seed: int, batch_size: int, progress=None, engine: Engine | None = None):
    """`judged_samples` of the model at `policy_dir` (identity: what makes it unique), cached as artifact kind
    `policy_samples` (the record is its samples.json). `judges` maps a name to a (spec, judge factory) pair; judges
    load only to build. `progress(k)` is called with the number of prompts sampled after each batch. `engine`
    (default: the reference, transformers) draws the samples; it enters the key only when it is not the reference,
    so records sampled before engines existed keep their keys."""
    engine = engine or TransformersEngine()
    inputs = {"policy": identity, "base": base_identity, "prompts_sha256": hash_texts(prompts, length=64),
              "n_prompts": len(prompts),
              "k": k, "max_new_tokens": max_new_tokens, "seed": seed, "batch_size": batch_size,
              "judges": {name: spec for name, (spec, _) in judges.items()}, **key_part(engine)}

    def build(out):
        reference = engine.name == TransformersEngine.name
        sampler = None if reference else engine.load(policy_dir)
        # The reference policy samples itself; with another engine it is loaded only to score log-probs.
        policy = Policy.from_pretrained(policy_dir) if reference or base_dir is not None else None
        loaded = {name: make() for name, (_, make) in judges.items()}
        same = base_dir == policy_dir
        record = judged_samples(policy, loaded, prompts, k, max_new_tokens, seed, batch_size,
                                policy if same else None, progress, sampler, None if reference else engine.identity())
        if base_dir is not None and not same:
            # One model in memory at a time: the policy's log-probs, then π₀ loads in its place (log-probs draw no
            # random numbers, so the order changes nothing).
            repeated = [p for p in prompts for _ in range(k)]
            lp_policy = policy.logprobs(repeated, record["completions"], batch_size)
            del policy, sampler, loaded
            release_memory()
            lp_base = Policy.from_pretrained(base_dir).logprobs(repeated, record["completions"], batch_size)
            record.update(logprob_fields(lp_base, lp_policy))
        atomic_write_json(out / "samples.json", record, indent=None)

    return cache.get_or_build("policy_samples", inputs, build)


def samples_of(record: dict, judge: str):
    p = np.asarray(record["p_toxic"][judge], dtype=float)
    return JudgedSamples(p, np.repeat(np.arange(record["n_prompts"]), record["k"]))


def policy_metrics(record: dict) -> dict:
    """Every single-policy metric of bench.lm.toxicity, with CIs: toxicity statistics under each judge of the
    record, and (when it has log-probs) KL to π₀ and perplexity under π₀; distinct-1/2 of the completions."""
    out = {"k": record["k"], "n_prompts": record["n_prompts"], "judges": {}}
    for judge in record["p_toxic"]:
        s = samples_of(record, judge)
        out["judges"][judge] = {"toxic_rate": toxicity.toxicity_rate(s).as_dict(),
                                "mean_toxicity": toxicity.mean_toxicity(s).as_dict(),
                                "expected_max_toxicity": toxicity.expected_max_toxicity(s).as_dict(),
                                "toxicity_probability": toxicity.toxicity_probability(s).as_dict()}
    if "logp_base" in record:
        pids = np.repeat(np.arange(record["n_prompts"]), record["k"])
        base, policy = np.asarray(record["logp_base"]), np.asarray(record["logp_policy"])
        tokens = np.asarray(record["tokens"])
        out["kl_to_base"] = toxicity.kl_estimate(policy, base, pids).as_dict()
        out["perplexity_under_base"] = toxicity.perplexity(base, tokens, pids).as_dict() if tokens.sum() else None
    out["distinct_1"] = toxicity.distinct_n(record["completions"], 1)
    out["distinct_2"] = toxicity.distinct_n(record["completions"], 2)
    return out


def item_scores(realigned: dict, base: dict, expert: dict, digits: int = 6) -> dict:
    """The per-completion numbers behind a re-alignment's outcome, small enough for a result file: P(toxic) of each
    completion of π_r̂, π₀ and π_E under every judge (prompt-major, k per prompt, the same prompts for all three)
    and π_r̂'s per-completion log π_r̂ − log π₀. The leaderboard's seed-level bootstrap and paired tests resample
    prompts from these."""
    return {"k": realigned["k"], "n_prompts": realigned["n_prompts"],
            "p_toxic": {role: {judge: [round(float(x), digits) for x in record["p_toxic"][judge]]
                               for judge in realigned["p_toxic"]}
                        for role, record in (("realigned", realigned), ("base", base), ("expert", expert))},
            "log_ratio": ([round(float(a) - float(b), 4)
                           for a, b in zip(realigned["logp_policy"], realigned["logp_base"])]
                          if "logp_base" in realigned else None)}


def realignment_comparison(base, realigned, expert, statistics=("toxic_rate", "mean_toxicity",
                                                           "expected_max_toxicity", "toxicity_probability")) -> dict:
    """Detox rate of the re-aligned policy and of the expert, and the recovery ratio, for each toxicity statistic,
    from the JudgedSamples of the three policies on the same test prompts (paired prompt bootstrap)."""
    return {stat: {"detox_rate_realigned": toxicity.detox_rate(realigned, base, stat).as_dict(),
                   "detox_rate_expert": toxicity.detox_rate(expert, base, stat).as_dict(),
                   "recovery_ratio": toxicity.recovery_ratio(base, realigned, expert, stat).as_dict()}
            for stat in statistics}


def compare_records(base: dict, realigned: dict, expert: dict) -> dict:
    """`realignment_comparison` under every judge the three records share."""
    return {judge: realignment_comparison(samples_of(base, judge), samples_of(realigned, judge),
                                          samples_of(expert, judge))
            for judge in base["p_toxic"] if judge in realigned["p_toxic"] and judge in expert["p_toxic"]}
