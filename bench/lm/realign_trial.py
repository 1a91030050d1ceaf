"""Re-alignment trials: does a recovered reward re-align π₀ the way the true reward did?

For each method, the fits of its first `--rerlhf-seeds` seeds are re-done inside a Ray trial (a fit is
deterministic given its trial spec and takes seconds on cached features, so no reward model is stored), then:

    best-of-n   r̂ ranks the shared pool of π₀ samples on test prompts (built once by the task); the unbiased
                best-of-m curve of the chosen samples' toxicity under each judge (bench/lm/best_of_n.py)
    re-RLHF     π₀ is trained with the expert's recipe (same algorithm unless `--rerlhf` names the other, steps,
                learning rate, KL coefficient, prompts, decoding) against r̂, normalised per batch
                (bench/lm/realign.py), then sampled on the evaluation prompts and judged by R* and by the
                independent evaluation judge: toxicity, KL to π₀, perplexity under π₀, distinct-n, and the detox
                rate and recovery ratio paired with π₀ and π_E on the same prompts (bench/lm/outcomes.py)

A task opts in by setting `realignment = REALIGNMENT` and writing a `rerlhf_setup` artifact (a `RealignSetup`,
see tasks/detox/task.py) whose key it lists in its TaskData's artifacts under "rerlhf". The `oracle` method
re-runs the expert recipe with R* itself, so every outcome has its reference, and `random` is the null.
Results are checksummed files in `<group>/rerlhf/<id>.json`; the trained policies and their samples are cached
artifacts (`realigned`, `policy_samples`), so a rerun repeats nothing.
"""

from __future__ import annotations

import resource
import time
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np

from bench import CODE_VERSION
from bench.errors import BadInput
from bench.execution.fit_trial import TrialSpec, fit_reward
from bench.lm import outcomes, realign, rlhf
from bench.lm.best_of_n import best_of_n
from bench.lm.engines import make_engine
from bench.lm.judges import make_judge
from bench.storage.artifacts import content_hash
from bench.storage.results import failures_recorded, write_result

MODES = ("auto", "rloo", "grpo", "bon", "off")
SETUP_FILE = "setup.json"


@dataclass(frozen=True)
class RealignSetup:
    """What the task built for re-alignment (artifact `rerlhf_setup`, file setup.json): π₀, the expert's recipe,
    the prompts, the judges, R*'s spread, the judged samples of π₀ and π_E and the best-of-n pool."""

    base_dir: str
    base_identity: dict
    expert_identity: dict
    recipe: dict  # bench/lm/rlhf.py Recipe fields
    train_prompts: list[str]
    bon_prompts: list[str]  # the test split: the prompts of the best-of-n pool
    reward_scale: float  # std of R* on π₀'s train samples (bench/lm/realign.py BatchNormalisedReward)
    reward_scale_source: str
    judges: dict  # name ("R*", "eval") -> judge spec
    eval: dict  # evaluation sampling: prompts, k, max_new_tokens, seed, batch_size (and engine, when not the reference)
    evaluations: dict  # role ("base", "expert") -> policy_samples artifact key
    bon_pool: str  # policy_samples artifact key of the pool

    def to_json(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @classmethod
    def from_json(cls, obj: dict) -> "RealignSetup":
        return cls(**obj)


@dataclass(frozen=True)
class RealignSpec:
    fit: TrialSpec
    mode: str  # "rloo", "grpo" (best-of-n and re-RLHF) or "bon" (best-of-n only)
    normalisation: str = "batch"  # bench/lm/realign.py NORMALISATIONS

    @property
    def trial_id(self) -> str:
        identity = {"fit": self.fit.fit_id, "mode": self.mode, "setup": self.fit.task.artifacts.get("rerlhf"),
                    "code_version": CODE_VERSION}
        if self.normalisation != "batch":  # the published runs' ids predate the choice
            identity["normalisation"] = self.normalisation
        return content_hash(identity, length=16)

    def to_json(self) -> dict:
        return {"fit": self.fit.to_json(), "mode": self.mode, "normalisation": self.normalisation}

    @classmethod
    def from_json(cls, obj: dict) -> "RealignSpec":
        return cls(TrialSpec.from_json(obj["fit"]), obj["mode"], obj.get("normalisation", "batch"))


def run_realign_trial(spec: RealignSpec, result_path: Path, progress=None) -> dict:
    """Refit the trial's reward, score the best-of-n pool with it and (unless mode is `bon`) re-align π₀ with it
    and judge the re-aligned policy; write the result file. A failure is recorded, never raised."""
    started = time.time()
    fit = spec.fit
    payload = {"trial_id": spec.trial_id, "method": fit.method, "config": fit.config, "seed": fit.seed,
               "mode": spec.mode, "fit_trial_id": fit.fit_id, "normalisation": spec.normalisation}
    with failures_recorded(payload):
        reward, demos = fit_reward(fit)
        cache = fit.task.cache()
        setup = RealignSetup.from_json(cache.load("rerlhf_setup", fit.task.artifacts["rerlhf"]).read_json(SETUP_FILE))
        base_dir = cache.locate(setup.base_dir)

        def samples(key):
            return cache.load("policy_samples", key).read_json("samples.json")

        pool = samples(setup.bon_pool)
        repeated = [p for p in setup.bon_prompts for _ in range(pool["k"])]
        payload["bon"] = best_of_n(pool, np.asarray(reward.score(repeated, pool["completions"]), dtype=float))
        timing = {"fit_and_best_of_n": round(time.time() - started, 2)}

        if spec.mode in ("rloo", "grpo"):
            clock = time.time()
            # Each fit seed gets its own RL seed (seed 0 keeps the expert's), so seeds vary both sources of noise.
            recipe = rlhf.recipe_from({**setup.recipe, "algorithm": spec.mode,
                                       "seed": setup.recipe["seed"] + fit.seed})
            identity = {"method": fit.method, "config": fit.config, "seed": fit.seed, "demos": fit.task.demos_key}
            train = demos.splits["train"].items
            reference = ([p for p, s in zip(train.prompts, train.sources) if s == "base"],
                         [t for t, s in zip(train.texts, train.sources) if s == "base"])
            trained = realign.realign(base_dir, setup.base_identity, reward, identity, setup.train_prompts, recipe,
                                      cache, setup.reward_scale, progress, spec.normalisation, reference)
            # r̂ is done: drop it (a frozen-LM encoder's backbone, or the implicit reward's two policies) and the
            # demonstrations before the policies and judges of the evaluation load.
            del reward, demos, train, reference
            outcomes.release_memory()
            timing["realign"], clock = round(time.time() - clock, 2), time.time()
            judges = {name: (judge_spec, lambda s=judge_spec: make_judge(s, cache))
                      for name, judge_spec in setup.judges.items()}
            ev = setup.eval
            engine = make_engine(ev["engine"], cache) if "engine" in ev else None  # the task's gen_engine, when set
            record = outcomes.cached_judged_samples(
                cache, trained.model_dir, {"realigned": trained.artifact.key}, base_dir, setup.base_identity, judges,
                ev["prompts"], ev["k"], ev["max_new_tokens"], ev["seed"], ev["batch_size"],
                engine=engine).read_json("samples.json")
            outcomes.release_memory()  # the evaluation's policies and judges
            timing["evaluation"] = round(time.time() - clock, 2)
            payload["policy"] = outcomes.policy_metrics(record)
            base_record, expert_record = samples(setup.evaluations["base"]), samples(setup.evaluations["expert"])
            payload["comparison"] = outcomes.compare_records(base_record, record, expert_record)
            payload["items"] = outcomes.item_scores(record, base_record, expert_record)
            payload["training"] = {
                "artifact": trained.artifact.key, "normalisation": trained.record["normalisation"],
                "recipe": trained.record["recipe"], "constant_batches": trained.record["constant_batches"],
                "curve_summary": rlhf.curve_summary(trained.curve),
                "kl_curve": [row.get("kl") for row in trained.curve],
                "build_seconds": trained.artifact.manifest.get("seconds"),
            }
        payload.update(status="ok", timing=timing)
    payload["seconds"] = round(time.time() - started, 3)
    # ru_maxrss is the worker process's peak so far (KiB on Linux); a reused worker reports its lifetime peak.
    payload["worker_peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    write_result(result_path, payload)
    return payload


def run_from_json(spec: dict, result_path: Path) -> dict:
    """The executor's entry point for re-alignment trials (bench/execution/executor.py)."""
    return run_realign_trial(RealignSpec.from_json(spec), result_path)


class Realignment:
    """The hook a task with policies installs as `Task.realignment`: how `bench run` resolves `--rerlhf` and which
    trials it runs after the fits."""

    label = "re-alignment trials"
    run_trial = staticmethod(run_from_json)

    def resolve_mode(self, mode: str, task_config) -> str:
        """The re-alignment a run does: `auto` is the expert's own algorithm."""
        if mode not in MODES:
            raise BadInput(f"--rerlhf {mode!r} is not a re-alignment mode; choose one of {', '.join(MODES)}.")
        return getattr(task_config, "rl_algorithm", "rloo") if mode == "auto" else mode

    def check_normalisation(self, normalisation: str) -> None:
        if normalisation not in realign.NORMALISATIONS:
            raise BadInput(f"--rerlhf-normalisation {normalisation!r} is unknown; choose one of "
                           f"{', '.join(realign.NORMALISATIONS)}.")

    def spec(self, fit: TrialSpec, mode: str, normalisation: str = "batch") -> RealignSpec:
        self.check_normalisation(normalisation)
        return RealignSpec(fit, mode, normalisation)

    def describe(self, mode: str) -> str:
        return "best-of-n trials" if mode == "bon" else f"re-alignment trials ({mode.upper()} + best-of-n)"


REALIGNMENT = Realignment()
