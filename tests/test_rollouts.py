"""bench/lm/rollouts.py: RL rollouts from a merged bfloat16 copy of the LoRA policy.

* The merge is peft's: after `refresh`, every linear layer of the copy holds the bfloat16 cast of the weight that
  `merge_and_unload` gives (bit for bit), Conv1D layers transposed.
* Greedy decoding agrees with the LoRA-wrapped model's `generate`: the copy multiplies in bfloat16, so a completion
  may differ only after a near-tie: at the first differing token, the LoRA model's own log-probs of the two tokens
  lie within 0.05 nats (the bound tests/test_engines.py uses for the bfloat16 engine), and most are identical.
* A rollout leaves the trained model untouched: parameters, adapters, trainability and outputs.
* In `train_policy` the rollouts come from the sampler, in TRL's format (new ids, cut after the first EOS), and the
  same recipe gives the same completions; the setting joins keys only when set.
"""

from __future__ import annotations

import copy
import json
import shutil
from dataclasses import replace
from types import SimpleNamespace

import pytest
import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM, AutoTokenizer

from bench import registry
from bench.errors import BadInput
from bench.lm import rlhf
from bench.lm.bf16 import BF16Linear
from bench.lm.rollouts import MergedSampler, check_generation, cut_at_end, group_size, merged_rollouts
from tasks.detox.config import recipe_settings

PROMPTS = ["the cat", "a quick brown", "we walked to the", "please", "the dog sat on", "once upon"]
NEAR_TIE = 0.05  # nats


@pytest.fixture(scope="module")
def lora_policy(tiny_lm_dir):
    """(peft model with non-zero adapters, tokenizer, MergedSampler of it)."""
    torch.manual_seed(1)
    tokenizer = AutoTokenizer.from_pretrained(tiny_lm_dir)
    tokenizer.pad_token = tokenizer.eos_token
    model = AutoModelForCausalLM.from_pretrained(tiny_lm_dir, dtype=torch.float32)
    model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules="all-linear",
                                             task_type="CAUSAL_LM"))
    with torch.no_grad():  # B starts at zero: give the adapters a real effect
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.3)
    sampler = MergedSampler(model, str(tiny_lm_dir), tokenizer, [tokenizer.eos_token_id])
    sampler.refresh()
    return model, tokenizer, sampler


def test_the_copy_holds_peft_s_merge(lora_policy):
    model, _, sampler = lora_policy
    merged = dict(copy.deepcopy(model).merge_and_unload().named_modules())
    adapted = 0
    for name, layer in sampler.policy.model.named_modules():
        if isinstance(layer, BF16Linear):
            weight = merged[name].weight
            weight = weight.t() if type(merged[name]).__name__ == "Conv1D" else weight
            assert torch.equal(layer.weight, weight.to(torch.bfloat16)), name
            adapted += hasattr(dict(model.get_base_model().named_modules())[name], "lora_A")
    assert adapted >= 8  # GPT-2's c_attn, c_proj, c_fc, mlp c_proj in each of 2 blocks


def test_greedy_completions_match_the_lora_model_but_for_near_ties(lora_policy):
    model, tokenizer, sampler = lora_policy
    ids = [tokenizer(p)["input_ids"] for p in PROMPTS]
    mine = sampler.sample(ids, 8, 0.0, 1.0, torch.Generator().manual_seed(0))
    identical = 0
    for row, got in zip(ids, mine):
        with torch.no_grad():
            mask = torch.ones(1, len(row), dtype=torch.long)
            out = model.generate(input_ids=torch.tensor([row]), attention_mask=mask,
                                 do_sample=False, max_new_tokens=8, pad_token_id=tokenizer.eos_token_id)
        want = cut_at_end(out[0, len(row):].tolist(), {tokenizer.eos_token_id})
        if got == want:
            identical += 1
            continue
        first = next(i for i, (a, b) in enumerate(zip(got, want)) if a != b)
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([row + want[:first]])).logits[0, -1].log_softmax(-1)
        assert float(logits[want[first]] - logits[got[first]]) < NEAR_TIE, (row, got, want)
    assert identical >= len(PROMPTS) // 2


def test_a_rollout_leaves_the_trained_model_untouched(lora_policy):
    model, tokenizer, sampler = lora_policy
    batch = tokenizer(["the cat sat on the mat"], return_tensors="pt")
    model.eval()  # GPT-2's dropout: outputs compared without it
    with torch.no_grad():
        before = model(**batch).logits
    model.train()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    trainable = {k for k, p in model.named_parameters() if p.requires_grad}
    sampler.refresh()
    sampler.sample([tokenizer(p)["input_ids"] for p in PROMPTS for _ in range(3)], 6, 1.0, 1.0,
                   torch.Generator().manual_seed(0))
    assert model.training and {k for k, p in model.named_parameters() if p.requires_grad} == trainable
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
    model.eval()
    with torch.no_grad():
        assert torch.equal(model(**batch).logits, before)


def test_rows_are_grouped_and_cut_as_trl_returns_them():
    assert group_size([[1], [1], [2], [2]]) == 2 and group_size([[1], [2], [1], [2]]) == 1
    assert group_size([[1], [1], [1], [1]]) == 4 and group_size([[1, 2]]) == 1
    assert cut_at_end([5, 6, 0, 7, 0], {0}) == [5, 6, 0] and cut_at_end([5, 6], {0}) == [5, 6]


def test_settings_the_sampler_would_ignore_are_refused():
    args = SimpleNamespace(top_k=0, min_p=None, repetition_penalty=1.0, generation_kwargs=None)
    check_generation(SimpleNamespace(args=args, use_vllm=False))
    for change in ({"top_k": 50}, {"repetition_penalty": 1.2}, {"generation_kwargs": {"min_new_tokens": 2}}):
        with pytest.raises(BadInput, match="rollouts='trl'"):
            check_generation(SimpleNamespace(args=SimpleNamespace(**{**vars(args), **change}), use_vllm=False))


def test_the_setting_joins_keys_only_when_set():
    cfg = registry.get_task("detox").config("default")
    recipe = rlhf.recipe_from(recipe_settings(cfg))
    assert "rollouts" not in rlhf.recipe_key(recipe)
    assert rlhf.recipe_key(replace(recipe, rollouts="merged-bf16"))["rollouts"] == "merged-bf16"
    cfg.rl_rollouts = "merged-bf16"
    assert rlhf.recipe_from(recipe_settings(cfg)).rollouts == "merged-bf16"
    with pytest.raises(BadInput, match="rollouts 'vllm'"):
        rlhf.recipe_from({"rollouts": "vllm"})


def test_train_policy_samples_its_rollouts_from_the_merged_copy(tiny_lm_dir, tmp_path, monkeypatch):
    returned = []

    def spy(cls):
        trainer_cls = merged_rollouts(cls, str(tiny_lm_dir), 0)
        sample = trainer_cls._generate_single_turn

        def recorded(self, *args, **kwargs):
            out = sample(self, *args, **kwargs)
            returned.append((out, type(self._merged_sampler).__name__))
            return out

        trainer_cls._generate_single_turn = recorded
        return trainer_cls

    monkeypatch.setattr(rlhf, "merged_rollouts", lambda cls, base_dir, seed: spy(cls))
    recipe = rlhf.Recipe(steps=2, learning_rate=1e-2, beta=0.1, prompts_per_step=2, generations=2,
                         max_completion_length=5, lora_r=4, lora_alpha=8, rollouts="merged-bf16")
    seen = []

    def reward(prompts, completions):
        seen.append(completions)
        return [float(len(c)) for c in completions]

    runs = []
    for run in range(2):
        seen.clear()
        logged = rlhf.train_policy(tmp_path / str(run), str(tiny_lm_dir), reward, PROMPTS[:4], recipe)
        runs.append([list(c) for c in seen])
        assert len(logged) == 2 and all(row["kl"] == row["kl"] for row in logged)
    assert len(returned) == 4  # one generation per step, two runs
    eos = AutoTokenizer.from_pretrained(tiny_lm_dir).eos_token_id
    for completions, sampler in returned:
        assert sampler == "MergedSampler" and len(completions) == 4
        assert all(isinstance(t, int) for row in completions for t in row)
        assert all(1 <= len(row) <= 5 and eos not in row[:-1] for row in completions)
    assert runs[0] == runs[1]  # seeded: the same recipe gives the same rollouts
    assert json.loads((tmp_path / "0" / "recipe.json").read_text())["rollouts"] == "merged-bf16"


def test_one_policy_pass_trains_the_same_weights_with_one_forward_less(tiny_lm_dir, tmp_path, monkeypatch):
    """bench/lm/policy_pass.py: the loss reuses the reward's policy pass; same log-probs, KL, loss and weights."""
    from trl import RLOOTrainer

    no_dropout = tmp_path / "lm"  # dropout would make any two passes differ
    shutil.copytree(tiny_lm_dir, no_dropout)
    config = json.loads((no_dropout / "config.json").read_text())
    (no_dropout / "config.json").write_text(json.dumps({**config, "resid_pdrop": 0.0, "embd_pdrop": 0.0,
                                                        "attn_pdrop": 0.0}))
    forwards = []
    original = RLOOTrainer._get_per_token_logps_and_entropies

    def counted(self, *args, **kwargs):
        forwards.append(torch.is_grad_enabled())
        return original(self, *args, **kwargs)

    monkeypatch.setattr(RLOOTrainer, "_get_per_token_logps_and_entropies", counted)
    trained, logs = {}, {}
    for one_pass in (False, True):
        forwards.clear()
        recipe = rlhf.Recipe(steps=2, learning_rate=1e-2, beta=0.1, prompts_per_step=2, generations=2,
                             max_completion_length=5, lora_r=4, lora_alpha=8, one_policy_pass=one_pass)
        out = tmp_path / str(one_pass)
        logged = rlhf.train_policy(out, str(no_dropout), lambda p, c: [float(len(x)) for x in c], PROMPTS[:4], recipe)
        logs[one_pass] = [row[k] for row in logged for k in ("loss", "kl", "entropy", "grad_norm")]
        trained[one_pass] = AutoModelForCausalLM.from_pretrained(out / "model").state_dict()
        # per step: policy (no grad), reference (no grad), loss (grad); fused: policy (grad), reference only
        assert forwards == ([False, False, True] * 2 if not one_pass else [True, False] * 2)
    assert logs[True] == pytest.approx(logs[False], rel=1e-5, abs=1e-7)
    assert all(torch.allclose(trained[True][k], v, atol=1e-6) for k, v in trained[False].items())
    assert rlhf.recipe_key(rlhf.Recipe(one_policy_pass=True))["one_policy_pass"] is True
    with pytest.raises(BadInput, match="RLOO only"):
        rlhf.recipe_from({"algorithm": "grpo", "one_policy_pass": True})
