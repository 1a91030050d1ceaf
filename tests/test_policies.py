"""bench.lm.policies: loading, seeded batched generation and batched log-probs, on a tiny random GPT-2; the real
SmolLM2 GGUF (98 MB download, ~30 s conversion) only under -m slow."""

import json

import numpy as np
import pytest
import torch

from bench.errors import BadInput, RuntimeFailure
from bench.lm.policies import gguf_to_hf, load_policy, pick_device

PROMPTS = ["the cat sat", "please pass the salt and the pepper", "a", "we walked along the river and"]
COMPLETIONS = [" on the mat", " to me", " quick brown fox jumps over the lazy dog", " talked"]


@pytest.fixture(scope="module")
def policy(tiny_lm_dir):
    return load_policy({"type": "hf", "model": str(tiny_lm_dir)}, device="cpu")


def test_same_seed_same_completions_other_seed_different(policy):
    a = policy.generate(PROMPTS, max_new_tokens=10, seed=3, batch_size=2)
    b = policy.generate(PROMPTS, max_new_tokens=10, seed=3, batch_size=2)
    c = policy.generate(PROMPTS, max_new_tokens=10, seed=4, batch_size=2)
    assert a == b
    assert len(a) == len(PROMPTS) and all(isinstance(t, str) and t for t in a)
    assert sum(x != y for x, y in zip(a, c)) >= 3  # a random 320-token model: different seeds, different samples


def test_batched_left_padded_greedy_equals_one_prompt_at_a_time(policy):
    """Left padding, length sorting and batching must not change what the model sees: greedy decoding of a padded
    batch gives exactly what plain unpadded `model.generate` gives for each prompt, without the prompt text."""
    batched = policy.generate(PROMPTS, max_new_tokens=8, temperature=0, batch_size=4)
    for prompt, completion in zip(PROMPTS, batched):
        ids = policy.tokenizer(prompt, return_tensors="pt")["input_ids"]
        ref = policy.model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=8, do_sample=False,
                                    pad_token_id=policy.tokenizer.pad_token_id)
        assert completion == policy.tokenizer.decode(ref[0, ids.shape[1]:], skip_special_tokens=True)


def test_n_samples_are_prompt_major(policy):
    greedy = policy.generate(PROMPTS, max_new_tokens=6, temperature=0)
    repeated = policy.generate(PROMPTS, max_new_tokens=6, temperature=0, n=3, batch_size=6)
    assert repeated == [g for g in greedy for _ in range(3)]
    sampled = policy.generate(PROMPTS[:2], max_new_tokens=10, n=4, seed=0)
    assert len(sampled) == 8 and len(set(sampled[:4])) > 1  # the n samples of one prompt differ


def test_left_padded_batched_logprobs_equal_unbatched(policy):
    batched = policy.logprobs(PROMPTS, COMPLETIONS, batch_size=4)
    for prompt, completion, lp in zip(PROMPTS, COMPLETIONS, batched):
        (single,) = policy.logprobs([prompt], [completion])
        n_tokens = len(policy.tokenizer(completion, add_special_tokens=False)["input_ids"])
        assert lp.shape == single.shape == (n_tokens,)
        np.testing.assert_allclose(lp, single, atol=1e-4)
        assert np.all(lp < 0)
    sums = policy.sum_logprobs(PROMPTS, COMPLETIONS, batch_size=3)
    np.testing.assert_allclose(sums, [lp.sum() for lp in batched], atol=1e-4)


def test_logprobs_are_the_models_next_token_probabilities(policy):
    """Against a direct computation: log softmax of the unpadded sequence's logits, read at the completion tokens."""
    prompt, completion = PROMPTS[1], COMPLETIONS[1]
    p_ids = policy.tokenizer(prompt)["input_ids"]
    c_ids = policy.tokenizer(completion, add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        logits = policy.model(torch.tensor([p_ids + c_ids])).logits[0]
    expected = [torch.log_softmax(logits[len(p_ids) + t - 1], -1)[tok].item() for t, tok in enumerate(c_ids)]
    np.testing.assert_allclose(policy.logprobs([prompt], [completion])[0], expected, atol=1e-5)


def test_chat_policy_scores_and_samples_in_the_same_context(tiny_lm_dir):
    chat = load_policy({"type": "hf", "model": str(tiny_lm_dir), "chat": True}, device="cpu")
    assert chat.format_prompt("hi") == "<user> hi\n<assistant> "
    plain = load_policy(str(tiny_lm_dir), device="cpu")
    # Scoring " on the mat" after the wrapped prompt is the same as scoring it after the literal wrapped text.
    np.testing.assert_allclose(chat.logprobs(["hi"], [" on the mat"])[0],
                               plain.logprobs(["<user> hi\n<assistant> "], [" on the mat"])[0], atol=1e-5)


def test_bad_specs_and_unloadable_models(tmp_path):
    with pytest.raises(RuntimeFailure, match="cannot load"):
        load_policy({"type": "hf", "model": str(tmp_path / "no-such-model")})
    with pytest.raises(BadInput, match="unknown policy type"):
        load_policy({"type": "onnx", "model": "x"})
    with pytest.raises(BadInput, match="does not exist"):
        load_policy({"type": "gguf", "file": str(tmp_path / "missing.gguf")}, cache=object())


def test_device_is_chosen_at_run_time():
    assert pick_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    if not torch.cuda.is_available():
        with pytest.raises(BadInput, match="no CUDA GPU"):
            pick_device("cuda")


def write_tiny_llama_gguf(path, tokenizer_dir):
    """A random 2-layer Llama in an F32 GGUF file, with the tiny LM's byte-level BPE as its tokenizer (the layout of
    the SmolLM2 GGUF: llama architecture, 'gpt2' tokenizer model)."""
    import gguf

    bpe = json.loads((tokenizer_dir / "tokenizer.json").read_text())["model"]
    tokens = sorted(bpe["vocab"], key=bpe["vocab"].get)
    eos = bpe["vocab"]["<|endoftext|>"]
    dim, ff, layers, heads = 32, 64, 2, 2
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_block_count(layers)
    w.add_context_length(64)
    w.add_embedding_length(dim)
    w.add_feed_forward_length(ff)
    w.add_head_count(heads)
    w.add_head_count_kv(heads)
    w.add_rope_freq_base(10000.0)
    w.add_rope_dimension_count(dim // heads)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_vocab_size(len(tokens))
    w.add_tokenizer_model("gpt2")
    w.add_token_list(tokens)
    w.add_token_types([3 if t == "<|endoftext|>" else 1 for t in tokens])
    w.add_token_merges([m if isinstance(m, str) else " ".join(m) for m in bpe["merges"]])
    w.add_bos_token_id(eos)
    w.add_eos_token_id(eos)
    w.add_pad_token_id(eos)
    w.add_add_bos_token(False)
    rng = np.random.default_rng(0)

    def rand(*shape):
        return (rng.standard_normal(shape) * 0.1).astype(np.float32)

    w.add_tensor("token_embd.weight", rand(len(tokens), dim))
    for i in range(layers):
        w.add_tensor(f"blk.{i}.attn_norm.weight", np.ones(dim, np.float32))
        for name in ("q", "k", "v", "output"):
            w.add_tensor(f"blk.{i}.attn_{name}.weight", rand(dim, dim))
        w.add_tensor(f"blk.{i}.ffn_norm.weight", np.ones(dim, np.float32))
        w.add_tensor(f"blk.{i}.ffn_gate.weight", rand(ff, dim))
        w.add_tensor(f"blk.{i}.ffn_up.weight", rand(ff, dim))
        w.add_tensor(f"blk.{i}.ffn_down.weight", rand(dim, ff))
    w.add_tensor("output_norm.weight", np.ones(dim, np.float32))
    w.add_tensor("output.weight", rand(len(tokens), dim))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def test_gguf_is_converted_once_to_safetensors_and_reused(tmp_path, tiny_lm_dir, monkeypatch):
    import transformers

    from bench.storage.artifacts import ArtifactCache

    gguf_file = tmp_path / "gguf" / "tiny.gguf"
    gguf_file.parent.mkdir()
    write_tiny_llama_gguf(gguf_file, tiny_lm_dir)
    cache = ArtifactCache(tmp_path / "cache")
    policy = load_policy({"type": "gguf", "file": str(gguf_file)}, cache, "cpu")
    (converted,) = [a for a in cache.entries() if a.kind == "gguf_model"]
    assert (converted.path / "model.safetensors").exists() and "quantization_config" not in converted.read_json(
        "config.json")

    # The cached safetensors model is the GGUF model: same tokenizer ids, same logits.
    direct_tok = transformers.AutoTokenizer.from_pretrained(gguf_file.parent, gguf_file=gguf_file.name)
    direct = transformers.AutoModelForCausalLM.from_pretrained(gguf_file.parent, gguf_file=gguf_file.name,
                                                               dtype=torch.float32)
    ids = direct_tok("the cat sat on the mat", return_tensors="pt")["input_ids"]
    assert ids.tolist() == policy.tokenizer("the cat sat on the mat", return_tensors="pt")["input_ids"].tolist()
    with torch.no_grad():
        torch.testing.assert_close(policy.model(ids).logits, direct(ids).logits, rtol=0, atol=1e-6)

    # Second load: the same artifact, and the GGUF file is never read again (any GGUF load would fail now).
    real_from_pretrained = transformers.AutoModelForCausalLM.from_pretrained

    def refuse_gguf(*args, **kwargs):
        assert "gguf_file" not in kwargs, "the GGUF file was converted a second time"
        return real_from_pretrained(*args, **kwargs)

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", refuse_gguf)
    again = load_policy({"type": "gguf", "file": str(gguf_file)}, cache, "cpu")
    assert [a.path for a in cache.entries() if a.kind == "gguf_model"] == [converted.path]
    assert again.generate(PROMPTS, max_new_tokens=6, temperature=0) == policy.generate(
        PROMPTS, max_new_tokens=6, temperature=0)


@pytest.mark.slow
def test_smollm2_gguf_is_converted_once_and_reused(asset_cache, monkeypatch):
    policy = load_policy({"type": "gguf", "asset": "smollm2-135m-instruct-gguf", "chat": True}, asset_cache, "cpu")
    assert policy.model.num_parameters() > 130e6 and len(policy.tokenizer) == 49152
    converted = [a for a in asset_cache.entries() if a.kind == "gguf_model"]
    assert len(converted) == 1 and (converted[0].path / "model.safetensors").exists()
    (answer,) = policy.generate(["What is the capital of France?"], max_new_tokens=12, temperature=0)
    assert "Paris" in answer

    # A second load must reuse the cached safetensors: make any GGUF read fail, and load again.
    import transformers

    def no_gguf(*args, **kwargs):
        raise AssertionError("the GGUF file was read again")

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", no_gguf)
    from bench.lm.assets import fetch_asset

    art = fetch_asset("smollm2-135m-instruct-gguf", asset_cache)
    gguf_name = next(n for n in art.manifest["files"] if n.endswith(".gguf"))
    again = gguf_to_hf(art.file(gguf_name), asset_cache, art.manifest["files"][gguf_name])
    assert again.path == converted[0].path
    monkeypatch.undo()
    reloaded = load_policy({"type": "gguf", "asset": "smollm2-135m-instruct-gguf", "chat": True}, asset_cache, "cpu")
    assert reloaded.generate(["What is the capital of France?"], max_new_tokens=12, temperature=0) == [answer]
