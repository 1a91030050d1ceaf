"""The registered `detox` task: its profiles, its build as a list of named stages, and what the scorer and the
methods that declare `needs_ground_truth` / `needs_policies` may open."""

from __future__ import annotations

from bench.data import TaskData, TaskRef
from bench.lm.judges import JudgeReward, make_judge
from bench.lm.logprob_memo import memoised
from bench.lm.outcomes import release_memory
from bench.lm.policies import Policy
from bench.lm.realign_trial import REALIGNMENT
from bench.progress import Stages
from bench.registry import register_task
from bench.storage.artifacts import ArtifactCache
from bench.task import Task
from tasks.detox import stages
from tasks.detox.config import PROFILES, DetoxConfig
from tasks.detox.pool import heldout_pool
from tasks.detox.summary import task_summary

STAGES = (stages.prompts, stages.base_model, stages.expert, stages.samples, stages.features, stages.demos,
          stages.truth, stages.policy_record, stages.evaluations, stages.realign_setup, heldout_pool)


@register_task("detox")
class Detox(Task):
    description = "detoxification RLHF (RLOO vs R*=profanity_check); IRL recovers R* from (π_E, π₀) sample pairs"
    Config = DetoxConfig
    label_name = "toxic"
    realignment = REALIGNMENT
    profiles = PROFILES

    def build(self, profile, cfg: DetoxConfig, cache: ArtifactCache, progress=None) -> TaskData:
        with Stages(progress) as display:
            build = stages.Build(cfg, cache, display)
            for stage in STAGES:
                stage(build)
        art, summary = build.artifacts, task_summary(build)
        # The build's models (the expert's trainer among them, in TRL's reference cycles) are done: give their
        # memory back before the trials start beside this process.
        del build
        release_memory()
        return TaskData(self.name, profile, str(cache.root), art["demos"].key, art["truth"].key, summary,
                        artifacts={"policies": art["policies"].key, "samples": art["samples"].key,
                                   "features": art["features"].key, "rerlhf": art["rerlhf"].key,
                                   "pool": art["pool"].key, "pool_truth": art["pool_truth"].key,
                                   "pool_features": art["pool_features"].key})

    def ground_truth(self, data: TaskRef) -> JudgeReward:
        cache = ArtifactCache(data.cache_root)
        spec = cache.load("truth", data.truth_key).read_json("reward_judge.json")
        return JudgeReward(make_judge(spec, cache))

    def policies(self, data: TaskRef) -> dict:
        cache = ArtifactCache(data.cache_root)
        info = cache.load("policies", data.artifacts["policies"]).read_json("policies.json")
        # Their summed log-probs are memoised in the cache (bench/lm/logprob_memo.py): every seed of the implicit
        # reward scores the same items, so only the first computes them.
        base, expert = cache.locate(info["base"]), cache.locate(info["expert"])
        return {"base": memoised(Policy.from_pretrained(base), cache, base),
                "expert": memoised(Policy.from_pretrained(expert), cache, expert), "beta": info.get("beta")}
