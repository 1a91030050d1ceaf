"""Re-RLHF outcomes (DESIGN.md step 8): does a recovered reward re-align π₀ the way the true reward did?

For each method, the fits of its first `--rerlhf-seeds` seeds are re-done inside a Ray trial (a fit is
deterministic given its trial spec and takes seconds on cached features, so no reward model is stored), then:

    best-of-n   r̂ ranks the shared pool of π₀ samples on test prompts (built once by the task); the unbiased
                best-of-m curve of the chosen samples' toxicity under each judge (bench/realign.py)
    re-RLHF     π₀ is trained with the expert's recipe (same algorithm unless `--rerlhf` names the other, steps,
                learning rate, KL coefficient, prompts, decoding) against r̂, normalised per batch
                (`realign.BatchNormalisedReward`), then sampled on the evaluation prompts and judged by R* and by
                the independent evaluation judge: toxicity, KL to π₀, perplexity under π₀, distinct-n, and the
                detox rate and recovery ratio paired with π₀ and π_E on the same prompts

A task opts in with `supports_rerlhf = True` and a `rerlhf` artifact in its TaskData (setup.json: π₀, the recipe,
training and evaluation prompts, judges, R*'s spread, the judged samples of π₀ and π_E and the best-of-n pool;
see tasks/detox.py). The `oracle` method re-runs the expert recipe with R* itself, so every outcome has its
reference, and `random` is the null.
Results are checksummed files in `<group>/rerlhf/<id>.json`; the trained policies and their samples are cached
artifacts (`realigned`, `policy_samples`), so a rerun repeats nothing.
"""

from __future__ import annotations

import resource
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bench import CODE_VERSION
from bench.artifacts import ArtifactCache, content_hash
from bench.errors import BadInput
from bench.runner import TrialSpec, fit_reward, write_result

MODES = ("auto", "rloo", "grpo", "bon", "off")


def resolve_mode(mode: str, task, task_config, explicit: bool) -> str:
    """The re-alignment a run does: `auto` is the expert's own algorithm on tasks with policies, else off."""
    if mode not in MODES:
        raise BadInput(f"--rerlhf {mode!r} is not a re-alignment mode; choose one of {', '.join(MODES)}.")
    if not task.supports_rerlhf:
        if explicit and mode != "off":
            raise BadInput(f"task {task.name!r} has no language-model policies to re-align; drop --rerlhf "
                           f"(or use --rerlhf off).")
        return "off"
    if mode == "auto":
        return getattr(task_config, "rl_algorithm", "rloo")
    return mode


@dataclass(frozen=True)
class RealignSpec:
    fit: TrialSpec
    mode: str  # "rloo", "grpo" (best-of-n and re-RLHF) or "bon" (best-of-n only)

    @property
    def trial_id(self) -> str:
        return content_hash({"fit": self.fit.trial_id, "mode": self.mode,
                             "setup": self.fit.task_data["artifacts"].get("rerlhf"), "code_version": CODE_VERSION},
                            length=16)

    def to_json(self) -> dict:
        return {"fit": self.fit.to_json(), "mode": self.mode}

    @classmethod
    def from_json(cls, d: dict) -> "RealignSpec":
        return cls(TrialSpec(**d["fit"]), d["mode"])


def run_realign_trial(spec: RealignSpec, result_path: Path, progress=None) -> dict:
    """Refit the trial's reward, score the best-of-n pool with it and (unless mode is `bon`) re-align π₀ with it
    and judge the re-aligned policy; write the result file. A failure is recorded, never raised."""
    from bench import realign, rlhf
    from bench.judges import make_judge

    started = time.time()
    fit = spec.fit
    payload = {"trial_id": spec.trial_id, "method": fit.method, "config": fit.config, "seed": fit.seed,
               "mode": spec.mode, "fit_trial_id": fit.trial_id}
    try:
        reward, data, _ = fit_reward(fit)
        cache = ArtifactCache(data.cache_root)
        setup = cache.load("rerlhf_setup", data.artifacts["rerlhf"]).read_json("setup.json")
        setup["base_dir"] = cache.locate(setup["base_dir"])
        samples = lambda key: cache.load("policy_samples", key).read_json("samples.json")  # noqa: E731

        pool = samples(setup["bon_pool"])
        repeated = [p for p in setup["bon_prompts"] for _ in range(pool["k"])]
        proxy = np.asarray(reward.score(repeated, pool["completions"]), dtype=float)
        payload["bon"] = realign.best_of_n(pool, proxy)
        timing = {"fit_and_best_of_n": round(time.time() - started, 2)}

        if spec.mode in ("rloo", "grpo"):
            clock = time.time()
            recipe = rlhf.recipe_from({**setup["recipe"], "algorithm": spec.mode})
            identity = {"method": fit.method, "config": fit.config, "seed": fit.seed, "demos": data.demos_key}
            trained = realign.realign(setup["base_dir"], setup["base_identity"], reward, identity,
                                      setup["train_prompts"], recipe, cache, setup["reward_scale"], progress)
            timing["realign"], clock = round(time.time() - clock, 2), time.time()
            judges = {name: (judge_spec, lambda s=judge_spec: make_judge(s, cache))
                      for name, judge_spec in setup["judges"].items()}
            ev = setup["eval"]
            record = realign.cached_judged_samples(
                cache, trained.model_dir, {"realigned": trained.artifact.key}, setup["base_dir"],
                setup["base_identity"], judges, ev["prompts"], ev["k"], ev["max_new_tokens"], ev["seed"],
                ev["batch_size"]).read_json("samples.json")
            timing["evaluation"] = round(time.time() - clock, 2)
            payload["policy"] = realign.policy_metrics(record)
            payload["comparison"] = realign.compare_records(samples(setup["evaluations"]["base"]), record,
                                                            samples(setup["evaluations"]["expert"]))
            payload["training"] = {
                "artifact": trained.artifact.key, "normalisation": trained.record["normalisation"],
                "recipe": trained.record["recipe"], "constant_batches": trained.record["constant_batches"],
                "curve_summary": rlhf.curve_summary(trained.curve),
                "kl_curve": [row.get("kl") for row in trained.curve],
                "build_seconds": trained.artifact.manifest.get("seconds"),
            }
        payload.update(status="ok", timing=timing)
    except Exception as exc:  # one method's failure must not take the others down
        payload.update(status="failed", error=f"{type(exc).__name__}: {exc}", traceback=traceback.format_exc())
    payload["seconds"] = round(time.time() - started, 3)
    # ru_maxrss is the worker process's peak so far (KiB on Linux); a reused worker reports its lifetime peak.
    payload["worker_peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    write_result(result_path, payload)
    return payload
