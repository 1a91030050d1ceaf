"""bench.lm.logprob_memo: the summed log-probs of a cached model, memoised per scoring batch, on a tiny random GPT-2:
bit-identical to the policy's own numbers, computed once across calls, instances and processes, never shared between
models, and a store `bench cache verify` accepts."""

import multiprocessing
import random
import shutil

import numpy as np
import pytest
import torch
from conftest import TINY_LM_CORPUS
from transformers import AutoModelForCausalLM

from bench import registry
from bench.data import TaskRef
from bench.lm.logprob_memo import KIND, LogprobMemo, memoised
from bench.lm.policies import Policy
from bench.storage.artifacts import ArtifactCache, atomic_write_json
from bench.storage.cache_admin import command
from methods.implicit import ImplicitReward

WORDS = " ".join(TINY_LM_CORPUS).split()


def items(n: int, seed: int, min_words: int = 0, max_words: int = 10, prompt_words: int = 1) -> tuple[list[str],
                                                                                                      list[str]]:
    rng = random.Random(seed)
    prompts = [" ".join(rng.choices(WORDS, k=rng.randint(prompt_words, prompt_words + 7))) for _ in range(n)]
    completions = [" " + " ".join(rng.choices(WORDS, k=rng.randint(min_words, max_words))) for _ in range(n)]
    return prompts, completions


def model_artifact(cache: ArtifactCache, source, name: str, noise: float = 0.0):
    """The tiny LM as an artifact of `cache` (its key from `name`), its weights shifted by seeded noise if asked."""

    def build(out):
        shutil.copytree(source, out, dirs_exist_ok=True)
        if noise:
            model = AutoModelForCausalLM.from_pretrained(out)
            torch.manual_seed(1)
            with torch.no_grad():
                for weight in model.parameters():
                    weight.add_(noise * torch.randn_like(weight))
            model.save_pretrained(out)

    return cache.get_or_build("tiny_lm", {"name": name, "noise": noise}, build)


@pytest.fixture()
def store(tiny_lm_dir, tmp_path):
    """(cache, model directory inside it, plain policy loaded from it, counter of its model's forward calls)."""
    cache = ArtifactCache(tmp_path / "runs" / "cache")
    path = str(model_artifact(cache, tiny_lm_dir, "a").path)
    policy = Policy.from_pretrained(path, device="cpu")
    calls = []
    policy.model.register_forward_hook(lambda *args: calls.append(1))
    return cache, path, policy, calls


def test_memo_gives_the_policys_exact_numbers_and_computes_each_batch_once(store):
    cache, path, policy, calls = store
    prompts, completions = items(100, seed=0)
    plain = policy.sum_logprobs(prompts, completions)
    # Batch composition changes the last bits (why the store is keyed per batch): a row scored alone differs.
    alone = np.array([policy.sum_logprobs([p], [c])[0] for p, c in zip(prompts, completions)])
    assert np.allclose(alone, plain, atol=1e-4) and np.any(alone != plain)

    cold = memoised(policy, cache, path)
    assert isinstance(cold, LogprobMemo) and cold.tokenizer is policy.tokenizer  # the rest is the policy's
    calls.clear()
    np.testing.assert_array_equal(cold.sum_logprobs(prompts, completions), plain)
    assert cold.computed == 100 and len(calls) == 7  # ceil(100 / 16) batches, one forward pass each

    warm = memoised(policy, cache, path)  # a new instance (another trial) reads what the first stored
    calls.clear()
    np.testing.assert_array_equal(warm.sum_logprobs(prompts, completions), plain)
    assert warm.computed == 0 and calls == []

    # A call that shares only some batches: longer extra items leave the first six batches of 16 as they were.
    extra_p, extra_c = items(20, seed=1, min_words=12, max_words=14, prompt_words=10)
    both_p, both_c = prompts + extra_p, completions + extra_c
    np.testing.assert_array_equal(warm.sum_logprobs(both_p, both_c), policy.sum_logprobs(both_p, both_c))
    assert warm.computed == 120 - 96
    # Input order is kept, whatever order the batches were scored in.
    order = list(reversed(range(100)))
    np.testing.assert_array_equal(warm.sum_logprobs([prompts[i] for i in order], [completions[i] for i in order]),
                                  policy.sum_logprobs([prompts[i] for i in order], [completions[i] for i in order]))
    assert warm.sum_logprobs([], []).shape == (0,)
    with pytest.raises(ValueError, match="2 prompts but 1 completions"):
        warm.sum_logprobs(prompts[:2], completions[:1])


def test_another_model_never_reads_the_first_ones_entries(store, tiny_lm_dir):
    cache, path, policy, _ = store
    prompts, completions = items(40, seed=2)
    first = memoised(policy, cache, path)
    first.sum_logprobs(prompts, completions)
    other_path = str(model_artifact(cache, tiny_lm_dir, "b", noise=0.05).path)
    other_policy = Policy.from_pretrained(other_path, device="cpu")
    other = memoised(other_policy, cache, other_path)
    assert other.key != first.key and other.inputs["model"]["key"] != first.inputs["model"]["key"]
    sums = other.sum_logprobs(prompts, completions)
    assert other.computed == 40
    np.testing.assert_array_equal(sums, other_policy.sum_logprobs(prompts, completions))
    assert not np.allclose(sums, first.sum_logprobs(prompts, completions), atol=1e-3)
    assert sorted(p.name for p in (cache.root / KIND).iterdir() if not p.name.startswith(".")) == sorted(
        [first.key, other.key])
    # A model without a stable key (a directory outside the cache, a hub id) gets no memo.
    assert memoised(policy, cache, str(tiny_lm_dir)) is policy
    assert memoised(policy, cache, "EleutherAI/pythia-70m") is policy


def score_in_worker(path: str, cache_root: str, shared: tuple, own: tuple, barrier, results) -> None:
    import torch

    torch.set_num_threads(1)
    cache = ArtifactCache(cache_root)
    memo = memoised(Policy.from_pretrained(path, device="cpu"), cache, path)
    barrier.wait()  # both start scoring the shared items at the same moment
    shared_sums = memo.sum_logprobs(*shared)
    own_sums = memo.sum_logprobs(*own)
    results.put((memo.computed, shared_sums.tolist(), own_sums.tolist()))


def test_two_processes_at_once_compute_shared_items_once_and_lose_no_entries(store):
    cache, path, policy, _ = store
    shared, own = items(64, seed=3), [items(32, seed=4 + k, min_words=11, max_words=13) for k in range(2)]
    context = multiprocessing.get_context("spawn")
    barrier, results = context.Barrier(2), context.Queue()
    workers = [context.Process(target=score_in_worker, args=(path, str(cache.root), shared, own[k], barrier, results))
               for k in range(2)]
    for worker in workers:
        worker.start()
    outcomes = [results.get(timeout=300) for _ in workers]
    for worker in workers:
        worker.join()
    assert all(worker.exitcode == 0 for worker in workers)
    # The lock makes one compute the shared items while the other waits and then reads them.
    assert sorted(computed for computed, *_ in outcomes) == [32, 64 + 32]
    expected = policy.sum_logprobs(*shared)
    for _, shared_sums, _ in outcomes:
        np.testing.assert_array_equal(shared_sums, expected)
    # Both workers' own items survived the concurrent writes; a fresh reader computes nothing.
    reader = memoised(policy, cache, path)
    for k in range(2):
        np.testing.assert_array_equal(reader.sum_logprobs(*own[k]), policy.sum_logprobs(*own[k]))
    reader.sum_logprobs(*shared)
    assert reader.computed == 0
    lines, code = command("verify", [cache.root.parent])
    assert code == 0, lines


def test_a_corrupted_shard_is_reported_by_verify_then_ignored_and_replaced(store):
    cache, path, policy, _ = store
    prompts, completions = items(30, seed=9)
    memo = memoised(policy, cache, path)
    plain = memo.sum_logprobs(prompts, completions)
    (shard,) = memo.directory.glob("batches-*.json")
    shard.write_text(shard.read_text().replace("-", "+", 1))
    lines, code = command("verify", [cache.root.parent])
    assert code == 1 and any(f"{KIND}/{memo.key}" in line for line in lines)
    again = memoised(policy, cache, path)
    np.testing.assert_array_equal(again.sum_logprobs(prompts, completions), plain)
    assert again.computed == 30  # and its shard rewritten: the same numbers, so the same name
    assert command("verify", [cache.root.parent])[1] == 0


def test_detox_policies_are_memoised_and_give_the_same_implicit_reward(store, tiny_lm_dir):
    cache, path, policy, _ = store
    expert_path = str(model_artifact(cache, tiny_lm_dir, "expert", noise=0.05).path)
    record = {"base": path, "expert": expert_path, "beta": 0.1}
    art = cache.get_or_build("policies", {"test": 1}, lambda out: atomic_write_json(out / "policies.json", record))
    ref = TaskRef("detox", "smoke", str(cache.root), "", "", {"policies": art.key})
    policies = registry.get_task("detox").policies(ref)
    assert isinstance(policies["base"], LogprobMemo) and isinstance(policies["expert"], LogprobMemo)
    prompts, completions = items(50, seed=5)
    plain = ImplicitReward(policy, Policy.from_pretrained(expert_path, device="cpu"), 0.1).score(prompts, completions)
    assert np.all(plain != 0)  # two different models
    for _ in range(2):  # computed, then read back
        memo = ImplicitReward(policies["base"], policies["expert"], 0.1).score(prompts, completions)
        np.testing.assert_array_equal(memo, plain)
    assert policies["base"].computed == policies["expert"].computed == 50
