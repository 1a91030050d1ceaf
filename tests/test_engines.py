"""bench/lm/engines.py: the ctranslate2 and transformers-bf16 engines sample the reference's (transformers')
distribution.

The model is a tiny GPT-2 trained for a few seconds on shuffled words of a small corpus, so that its samples are
real words with real entropy (a random model's byte soup retokenises into noise and hides every difference).

* Greedy decoding: float32 must give the reference's completion on every prompt (both compute the same fp32
  network; a flip would need two logits equal to ~1e-6). int8 quantises the weights, so it may flip near-ties only:
  wherever its completion differs, the reference's log-prob gap between the two tokens at the first difference is
  under 0.1 nats, and at least 80% of the completions are identical. transformers-bf16: its decoding loop on the
  float32 network gives every reference completion; in bfloat16, flips only at gaps under 0.05 nats (60% identical).
* Sampling: the reference log-probs (Policy.sum_logprobs) of engine samples and of reference samples come from
  the same distribution: a two-sided Mann-Whitney test at α = 0.001 does not reject, and the difference of means
  lies within its 99.9% normal CI. The same test does reject reference samples at temperature 0.9, so it has the
  power to see a 10% change of temperature. Seeds are fixed, so the outcome is deterministic on a given machine.
"""

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import TINY_LM_CORPUS
from scipy import stats

from bench.errors import BadInput
from bench.lm import outcomes
from bench.lm.bf16 import (
    BF16Linear,
    CastMemo,
    LoopSampler,
    PreallocatedLayer,
    cache_argument,
    fast_bf16_hardware,
    inverse_cdf,
    kv_cache,
    preallocate,
)
from bench.lm.compiled import CompiledSampler
from bench.lm.engines import (
    BF16Engine,
    CTranslate2Engine,
    TransformersEngine,
    ct2_installed,
    key_part,
    make_engine,
    model_dir_hash,
    resolve,
)
from bench.lm.policies import Policy
from bench.progress import Stages
from bench.storage.artifacts import ArtifactCache
from bench.task import hash_texts
from tasks.detox import stages
from tasks.detox.config import DetoxConfig
from tasks.detox.tiny_lm import train_tiny_lm

needs_ct2 = pytest.mark.skipif(not ct2_installed(), reason="ctranslate2 is not installed (pip install -e '.[fast]')")
ALPHA = 0.001
PROMPTS = [" ".join(s.split()[:j]) for s in TINY_LM_CORPUS for j in (1, 3, 6)]  # 1-token prompts included
N, TOKENS = 16, 10  # 18 prompts x 16 samples of 10 tokens per engine


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """(model directory, reference Policy, cache): a tiny GPT-2 trained 80 steps (~5 s)."""
    cache = ArtifactCache(tmp_path_factory.mktemp("engines"))
    rng = np.random.default_rng(0)
    corpus = TINY_LM_CORPUS + [" ".join(rng.permutation(s.split())) for s in TINY_LM_CORPUS for _ in range(10)]
    art = train_tiny_lm(corpus, 80, 0, cache, Stages(lambda *args: None))
    return str(art.path), Policy.from_pretrained(str(art.path)), cache


def reference_logprobs(policy, texts):
    return policy.sum_logprobs([p for p in PROMPTS for _ in range(N)], texts, batch_size=64)


def same_distribution(a, b) -> tuple[bool, float]:
    p = stats.mannwhitneyu(a, b, alternative="two-sided").pvalue
    se = np.sqrt(a.var(ddof=1) / len(a) + b.var(ddof=1) / len(b))
    return p > ALPHA and abs(a.mean() - b.mean()) < stats.norm.ppf(1 - ALPHA / 2) * se, p


def test_engine_names_resolve_and_only_other_engines_enter_keys():
    assert resolve("transformers") == "transformers"
    # the fastest engine measured to sample the reference's distribution (benchmarks/generation.py)
    native_bf16 = fast_bf16_hardware() and not torch.cuda.is_available()
    assert resolve("auto") == ("transformers-bf16" if native_bf16 else "transformers")
    assert resolve("ctranslate2-int8") == "ctranslate2-int8"
    with pytest.raises(BadInput, match="choose from"):
        make_engine("vllm")
    assert key_part(TransformersEngine()) == {}
    engine = CTranslate2Engine(ArtifactCache("unused"), "float32")
    if ct2_installed():
        assert key_part(engine)["engine"]["compute_type"] == "float32"
    with pytest.raises(BadInput, match="int8"):
        CTranslate2Engine(ArtifactCache("unused"), "float16")
    bf16 = make_engine("transformers-bf16")
    assert key_part(bf16) == {"engine": {"engine": "transformers-bf16", "dtype": "bfloat16", "variant": "linear",
                                         "decoder": "loop"}}
    assert key_part(BF16Engine("model")) != key_part(bf16)
    with pytest.raises(BadInput, match="linear, model"):
        BF16Engine("float16")


@needs_ct2
@pytest.mark.parametrize("compute_type", ["float32", "int8"])
def test_greedy_decoding_gives_the_reference_completions(trained, compute_type):
    model_dir, policy, cache = trained
    reference = policy.generate(PROMPTS, max_new_tokens=12, temperature=0, batch_size=8)
    engine = make_engine("ctranslate2", cache, compute_type).load(model_dir)
    got = engine.generate(PROMPTS, max_new_tokens=12, temperature=0, batch_size=8)
    assert got == engine.generate(PROMPTS, max_new_tokens=12, temperature=0, batch_size=64)  # batching-free
    same = sum(a == b for a, b in zip(reference, got))
    if compute_type == "float32":
        assert same == len(PROMPTS)
        return
    assert same >= 0.8 * len(PROMPTS)
    tok = policy.tokenizer
    for prompt, ref, ours in zip(PROMPTS, reference, got):
        if ref == ours:
            continue
        ids_ref, ids_ours = (tok(t, add_special_tokens=False)["input_ids"] for t in (ref, ours))
        first = next(i for i, (x, y) in enumerate(zip(ids_ref, ids_ours)) if x != y)
        context = tok(prompt)["input_ids"] + ids_ref[:first]
        with torch.no_grad():
            logp = torch.log_softmax(policy.model(torch.tensor([context])).logits[0, -1], -1)
        assert float(logp[ids_ref[first]] - logp[ids_ours[first]]) < 0.1, (prompt, ref, ours)


@needs_ct2
@pytest.mark.parametrize("compute_type", ["float32", "int8"])
def test_samples_have_the_reference_distribution_of_reference_logprobs(trained, compute_type):
    model_dir, policy, cache = trained
    reference = reference_logprobs(policy, policy.generate(PROMPTS, max_new_tokens=TOKENS, seed=0, n=N,
                                                           batch_size=64))
    engine = make_engine("ctranslate2", cache, compute_type).load(model_dir)
    texts = engine.generate(PROMPTS, max_new_tokens=TOKENS, seed=0, n=N, batch_size=64)
    assert len(texts) == len(PROMPTS) * N and len(set(texts)) > len(texts) // 2
    ok, p = same_distribution(reference, reference_logprobs(policy, texts))
    assert ok, f"{compute_type} samples differ from the reference's (Mann-Whitney p={p:.2g})"
    # Power: the same test sees a 10% lower temperature.
    colder = policy.generate(PROMPTS, max_new_tokens=TOKENS, seed=1, n=N, batch_size=64, temperature=0.9)
    assert not same_distribution(reference, reference_logprobs(policy, colder))[0]
    # Nucleus sampling: the engine's top-p keeps the same tokens as transformers' (the one crossing p included).
    nucleus = reference_logprobs(policy, policy.generate(PROMPTS, max_new_tokens=TOKENS, seed=2, n=N, batch_size=64,
                                                         top_p=0.8))
    ok, p = same_distribution(nucleus, reference_logprobs(policy, engine.generate(
        PROMPTS, max_new_tokens=TOKENS, seed=2, n=N, batch_size=64, top_p=0.8)))
    assert ok, f"{compute_type} top-p samples differ from the reference's (Mann-Whitney p={p:.2g})"


@needs_ct2
def test_same_seed_same_samples_and_one_conversion_per_content(trained, tmp_path):
    model_dir, _, cache = trained
    engine = make_engine("ctranslate2", cache, "int8")
    a = engine.sample(model_dir, PROMPTS[:6], n=2, max_new_tokens=8, seed=3)
    assert a == engine.sample(model_dir, PROMPTS[:6], n=2, max_new_tokens=8, seed=3)
    other = engine.sample(model_dir, PROMPTS[:6], n=2, max_new_tokens=8, seed=4)
    assert sum(x != y for x, y in zip(a, other)) >= 6
    # A copy of the model elsewhere has the same content hash and reuses the conversion.
    copy = tmp_path / "copy"
    copy.mkdir()
    for f in Path(model_dir).iterdir():
        if f.is_file() and f.name != "manifest.json":
            (copy / f.name).write_bytes(f.read_bytes())
    assert model_dir_hash(str(copy)) == model_dir_hash(model_dir)
    assert engine.sample(str(copy), PROMPTS[:6], n=2, max_new_tokens=8, seed=3) == a
    kinds = [e for e in cache.entries() if e.kind == "ct2_model"]
    assert sorted(e.manifest["inputs"]["quantization"] for e in kinds) in (["int8"], ["float32", "int8"])
    with pytest.raises(BadInput, match="local HF model directory"):
        engine.sample("some/hub-id", ["a"])


class LengthJudge:
    """A stand-in judge: longer completions are 'more toxic'."""

    def p_toxic(self, texts):
        return [min(1.0, len(t) / 40) for t in texts]


@needs_ct2
def test_judged_samples_record_the_engine_and_key_it_only_when_not_the_reference(trained):
    model_dir, _, cache = trained
    judges = {"len": ({"type": "length"}, LengthJudge)}
    args = (cache, model_dir, {"tiny": 1}, model_dir, {"tiny": 1}, judges, PROMPTS[:4], 2, 6, 0, 8)
    reference = outcomes.cached_judged_samples(*args)
    legacy_inputs = {"policy": {"tiny": 1}, "base": {"tiny": 1},
                     "prompts_sha256": hash_texts(PROMPTS[:4], 64),
                     "n_prompts": 4, "k": 2, "max_new_tokens": 6, "seed": 0, "batch_size": 8,
                     "judges": {"len": {"type": "length"}}}
    assert reference.key == cache.key("policy_samples", legacy_inputs)  # keys made before engines existed
    assert "engine" not in reference.read_json("samples.json")["decoding"]
    fast = outcomes.cached_judged_samples(*args, engine=make_engine("ctranslate2", cache, "int8"))
    assert fast.key != reference.key
    record = fast.read_json("samples.json")
    assert record["decoding"]["engine"]["engine"] == "ctranslate2" and len(record["completions"]) == 8
    # Log-probs still come from the reference model: rescoring the engine's texts gives the recorded values.
    policy = Policy.from_pretrained(model_dir)
    again = policy.sum_logprobs([p for p in PROMPTS[:4] for _ in range(2)], record["completions"], 8)
    assert np.allclose(again, record["logp_base"], atol=1e-4)


@needs_ct2
def test_detox_samples_stage_keys_the_engine_only_when_not_transformers(trained):
    model_dir, _, cache = trained
    splits = {"train": PROMPTS[:6], "val": PROMPTS[6:9], "test": PROMPTS[9:12]}
    built = {}
    for engine in ("transformers", "ctranslate2", "transformers-bf16"):
        cfg = DetoxConfig(gen_engine=engine, completions_per_prompt=2, max_new_tokens=6)  # default batch size
        build = stages.Build(cfg, cache, Stages(lambda *args: None))
        build.splits, build.base, build.expert = splits, (model_dir, {"tiny": 0}), (model_dir, {"tiny": 1})
        stages.samples(build)
        built[engine] = build.artifacts["samples"]
    legacy_decoding = {"completions_per_prompt": 2, "max_new_tokens": 6, "temperature": 1.0, "top_p": 1.0, "top_k": 0,
                       "seed": 0, "chat_template": False, "prompt_included_in_text": False}
    assert built["transformers"].key == cache.key("detox_samples", {
        "prompts": {s: hash_texts(p) for s, p in splits.items()}, "base": {"tiny": 0}, "expert": {"tiny": 1},
        "decoding": legacy_decoding})
    fast = built["ctranslate2"].read_json("samples.json")
    assert built["ctranslate2"].key != built["transformers"].key
    assert fast["decoding"]["engine"]["engine"] == "ctranslate2"
    assert all(len(fast["splits"][s][role]) == 2 * len(splits[s]) for s in splits for role in ("base", "expert"))
    assert len({built[engine].key for engine in built}) == 3
    bf16 = built["transformers-bf16"].read_json("samples.json")
    assert bf16["decoding"]["engine"]["variant"] == "linear" and len(bf16["splits"]["val"]["expert"]) == 6


# ---------------------------------------------------------------------------------------------- transformers-bf16


def test_inverse_cdf_draws_each_token_with_its_probability():
    """1000 rows of one distribution over 300 tokens (not a multiple of the 256-token block; zeros included): the
    counts fit the probabilities (chi-square p > 0.001) and a token of probability 0 is never drawn."""
    probs = torch.softmax(torch.linspace(0, 6, 300), -1)
    probs[::7] = 0
    probs /= probs.sum()
    draws = torch.cat([inverse_cdf(probs.expand(1000, -1), torch.Generator().manual_seed(s), block=64)
                       for s in range(20)])
    counts = np.bincount(draws.numpy(), minlength=300)
    assert counts[::7].sum() == 0
    keep = probs.numpy() > 0
    assert stats.chisquare(counts[keep], probs.numpy()[keep] * len(draws)).pvalue > ALPHA
    # The block at the end of the row and a one-hot row
    one_hot = torch.zeros(2, 300)
    one_hot[:, 299] = 1
    assert inverse_cdf(one_hot, torch.Generator().manual_seed(0)).tolist() == [299, 299]


@pytest.fixture(scope="module", params=["linear", "compiled"])
def bf16(trained, request):
    """Each transformers-bf16 variant that should pass the sameness tests; `compiled` (bench/lm/compiled.py)
    compiles two graphs here (8 and 64 rows), ~1 min on 2 cores."""
    model_dir, _, _ = trained
    return make_engine("transformers-bf16", compute_type=request.param).load(model_dir)


def test_loop_sampler_in_float32_gives_the_reference_greedy_completions(trained):
    """The decoding loop on the reference network itself: greedy completions identical to `Policy.generate`'s."""
    model_dir, policy, _ = trained
    reference = policy.generate(PROMPTS, max_new_tokens=12, temperature=0, batch_size=8)
    assert LoopSampler(policy, model_dir).generate(PROMPTS, max_new_tokens=12, temperature=0, batch_size=8) == reference


def test_bf16_greedy_completions_differ_only_at_near_ties(trained, bf16):
    """bfloat16 keeps 8 significant bits, so logits move by a few hundredths of a nat and greedy decoding flips the
    near-ties (on SmolLM2 at gaps up to 0.15 nats, benchmarks/results/generation.md): where a completion differs, the
    reference's log-prob gap between its token and the engine's at the first difference is under 0.05 nats. This
    model, trained on shuffled words, is full of near-ties (6 of its 18 greedy paths cross one under 0.02 nats), so
    the identical share asked is 60%; the gap is the real criterion."""
    _, policy, _ = trained
    reference = policy.generate(PROMPTS, max_new_tokens=12, temperature=0, batch_size=8)
    got = bf16.generate(PROMPTS, max_new_tokens=12, temperature=0, batch_size=8)
    assert sum(a == b for a, b in zip(reference, got)) >= 0.6 * len(PROMPTS)
    tok = policy.tokenizer
    for prompt, ref, ours in zip(PROMPTS, reference, got):
        if ref == ours:
            continue
        ids_ref, ids_ours = (tok(t, add_special_tokens=False)["input_ids"] for t in (ref, ours))
        first = next(i for i, (x, y) in enumerate(zip(ids_ref, ids_ours)) if x != y)
        context = tok(prompt)["input_ids"] + ids_ref[:first]
        with torch.no_grad():
            logp = torch.log_softmax(policy.model(torch.tensor([context])).logits[0, -1], -1)
        assert float(logp[ids_ref[first]] - logp[ids_ours[first]]) < 0.05, (prompt, ref, ours)


@pytest.mark.parametrize("top_p", [1.0, 0.8])
def test_bf16_samples_have_the_reference_distribution_of_reference_logprobs(trained, bf16, top_p):
    """As for ctranslate2: the reference log-probs of bf16 samples and of reference samples are not told apart
    (the test rejects a 10% colder temperature, test_samples_have_the_reference_distribution_of_reference_logprobs)."""
    _, policy, _ = trained
    reference = reference_logprobs(policy, policy.generate(PROMPTS, max_new_tokens=TOKENS, seed=0, n=N,
                                                           batch_size=64, top_p=top_p))
    texts = bf16.generate(PROMPTS, max_new_tokens=TOKENS, seed=0, n=N, batch_size=64, top_p=top_p)
    assert len(texts) == len(PROMPTS) * N and len(set(texts)) > len(texts) // 2
    assert texts == bf16.generate(PROMPTS, max_new_tokens=TOKENS, seed=0, n=N, batch_size=64, top_p=top_p)
    ok, p = same_distribution(reference, reference_logprobs(policy, texts))
    assert ok, f"bf16 samples (top_p={top_p}) differ from the reference's (Mann-Whitney p={p:.2g})"
    colder = bf16.generate(PROMPTS, max_new_tokens=TOKENS, seed=1, n=N, batch_size=64, temperature=0.9,
                           top_p=top_p)
    assert not same_distribution(reference, reference_logprobs(policy, colder))[0]


def test_preallocated_cache_gives_exactly_the_concatenating_caches_logits(trained):
    """Prefill 5 prompts, repeat each prompt's cache 3 times, decode 6 steps in float32 with transformers' growing
    (concatenating) cache and with `preallocate`'s buffers: the logits are identical at every step, every layer
    was swapped, and the sampler gives the same samples either way."""
    model_dir, policy, _ = trained
    ids, mask = policy._left_pad(policy._prompt_ids(PROMPTS[:5]))
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    logits, caches = [], []
    with torch.no_grad():
        for swap in (False, True):
            out = policy.model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True)
            cache, rows = kv_cache(out), mask.repeat_interleave(3, 0)
            cache.batch_repeat_interleave(3)
            if swap:
                preallocate(cache, 6)
            token, steps = out.logits[:, -1].argmax(-1).repeat_interleave(3, 0), []
            for step in range(6):
                rows = torch.cat([rows, torch.ones_like(rows[:, :1])], 1)
                step_logits = policy.model(input_ids=(token + step)[:, None], attention_mask=rows,
                                           position_ids=rows.sum(-1, keepdim=True) - 1, use_cache=True,
                                           **cache_argument(policy.model, cache)).logits[:, -1]
                steps.append(step_logits)
                token = step_logits.argmax(-1)
            logits.append(torch.stack(steps))
            caches.append(cache)
    assert all(isinstance(layer, PreallocatedLayer) for layer in caches[1].layers)
    assert caches[1].get_seq_length() == caches[0].get_seq_length() == ids.shape[1] + 6
    assert torch.equal(logits[0], logits[1])
    with pytest.raises(Exception, match="preallocated KV cache holds"):
        caches[1].layers[0].update(*(2 * [caches[1].layers[0].keys[..., :1, :]]))
    grown, allocated = (LoopSampler(policy, model_dir, preallocate=flag) for flag in (False, True))
    assert grown.generate(PROMPTS, max_new_tokens=8, seed=3, n=4, batch_size=16) == \
        allocated.generate(PROMPTS, max_new_tokens=8, seed=3, n=4, batch_size=16)


def test_compiled_loop_in_float32_gives_the_reference_greedy_completions_without_recompiling(trained):
    """The compiled decoding step (static cache under a mask, padded last batch, grouped attention) on the float32
    network: greedy completions identical to `Policy.generate`'s, over 3 batches whose last one has 2 rows of 8;
    a second call with other prompts of the same cache shape runs the same graph (a recompilation would raise)."""
    model_dir, policy, _ = trained
    sampler = CompiledSampler(Policy.from_pretrained(model_dir), model_dir)
    reference = policy.generate(PROMPTS, max_new_tokens=12, temperature=0, batch_size=8)
    assert sampler.generate(PROMPTS, max_new_tokens=12, temperature=0, batch_size=8) == reference
    assert list(sampler.compile_seconds) == [(8, 32)]
    with torch._dynamo.config.patch(error_on_recompile=True):
        again = sampler.generate(PROMPTS[::-1][:9], max_new_tokens=12, temperature=0, batch_size=8)
    assert again == reference[::-1][:9]
    with pytest.raises(BadInput, match="variant"):
        make_engine("transformers-bf16", compute_type="compiled-model")


def test_cast_memo_reuses_a_cast_only_for_the_same_unmodified_tensor():
    memo, x = CastMemo(), torch.randn(4, 8)
    first = memo.bf16(x)
    assert memo.bf16(x) is first and torch.equal(first, x.to(torch.bfloat16))
    assert memo.bf16(x.clone()) is not first  # another tensor object
    x.add_(1.0)  # same object, modified in place
    assert torch.equal(memo.bf16(x), x.to(torch.bfloat16))
    with torch.inference_mode():
        y = torch.randn(4, 8)
        assert torch.equal(memo.bf16(y), y.to(torch.bfloat16))


def test_packed_bf16_linear_computes_the_plain_bfloat16_product():
    """The oneDNN-packed weight gives exactly F.linear's bfloat16 product, for any number of rows and for a
    non-contiguous input; the bias is added in the input's dtype."""
    weight, bias = torch.randn(48, 32), torch.randn(48)
    layer = BF16Linear(weight, bias)
    for x in (torch.randn(1, 32), torch.randn(5, 3, 32), torch.randn(32, 70).t()):
        expected = F.linear(x.to(torch.bfloat16), weight.to(torch.bfloat16)).float() + bias
        assert torch.equal(layer(x), expected)
