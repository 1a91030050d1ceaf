"""The Hugging Face Hub profiles of detox (`pythia-70m`, `pythia-70m-audit`) end to end, offline: the same loading
code as on the hub, pointed at local copies in the hub's formats. π₀ (and the audited π_E) is a tiny GPT-NeoX (what
Pythia is) saved with `save_pretrained`, the judges are tiny RoBERTa classifiers (what
s-nlp/roberta_toxicity_classifier is) in a local directory, and the prompts are a file in RealToxicityPrompts'
schema loaded through `datasets` (JSON lines, and Parquet). Every other setting is the profile's own, only scaled
down (few prompts, few tokens, two RLHF steps)."""

import json
from pathlib import Path

import numpy as np
import pytest

from bench import config as configs
from bench import registry
from bench.execution.fit_trial import TrialSpec, run_trial
from bench.kit.reward_models import make_encoder
from bench.lm.judges import make_judge
from bench.lm.realign_trial import REALIGNMENT, run_realign_trial
from bench.reporting import dataset
from bench.storage.artifacts import ArtifactCache
from bench.storage.selection import MethodSelection, Selection

WORDS = ["you", "are", "so", "a", "the", "idiot", "stupid", "nice", "day", "weather", "is", "lovely", "shut", "up",
         "we", "went", "to", "river", "and", "talked", "about", "books", "dog", "cat", "sat", "on", "mat"]


def rtp_rows(n: int = 40) -> list[dict]:
    """Rows in RealToxicityPrompts' schema; prompt toxicity cycles 0.0 … 0.9, None for every 13th (as in RTP)."""
    rows = []
    for i in range(n):
        text = " ".join(WORDS[(i * 7 + j * 3) % len(WORDS)] for j in range(4 + i % 5)) + f" number {i}"
        tox = None if i % 13 == 0 else round((i % 10) / 10, 1)
        scores = {"toxicity": tox, "profanity": tox, "sexually_explicit": None, "identity_attack": None,
                  "flirtation": None, "threat": None, "insult": tox, "severe_toxicity": None}
        rows.append({"filename": f"{i:04d}.txt", "begin": 0, "end": len(text), "challenging": i % 3 == 0,
                     "prompt": {"text": text, **scores}, "continuation": {"text": " and more", **scores}})
    return rows


def byte_bpe(corpus: list[str], specials: list[str]):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    bpe.train_from_iterator(corpus * 3, trainers.BpeTrainer(
        vocab_size=400, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False))
    return bpe


def build_tiny_pythia(directory, corpus: list[str], seed: int):
    """A random 2-layer GPT-NeoX with Pythia's architecture flags and a byte-level BPE with only <|endoftext|>
    (Pythia's tokenizer has no pad token), saved in HF format."""
    import torch
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM, PreTrainedTokenizerFast

    tok = PreTrainedTokenizerFast(tokenizer_object=byte_bpe(corpus, ["<|endoftext|>"]), eos_token="<|endoftext|>",
                                  bos_token="<|endoftext|>", unk_token="<|endoftext|>")
    torch.manual_seed(seed)
    config = GPTNeoXConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                           intermediate_size=64, max_position_embeddings=256, rotary_pct=0.25,
                           use_parallel_residual=True, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    GPTNeoXForCausalLM(config).save_pretrained(directory)
    tok.save_pretrained(directory)
    return str(directory)


def build_tiny_roberta_judge(directory, corpus: list[str], seed: int):
    """A random 2-layer RoBERTa sequence classifier labelled neutral / toxic, as s-nlp/roberta_toxicity_classifier."""
    import torch
    from tokenizers import processors
    from transformers import PreTrainedTokenizerFast, RobertaConfig, RobertaForSequenceClassification

    specials = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]
    bpe = byte_bpe(corpus, specials)
    bpe.post_processor = processors.RobertaProcessing(("</s>", bpe.token_to_id("</s>")),
                                                      ("<s>", bpe.token_to_id("<s>")))
    tok = PreTrainedTokenizerFast(tokenizer_object=bpe, bos_token="<s>", eos_token="</s>", sep_token="</s>",
                                  cls_token="<s>", unk_token="<unk>", pad_token="<pad>", mask_token="<mask>")
    torch.manual_seed(seed)
    config = RobertaConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                           intermediate_size=64, max_position_embeddings=130, pad_token_id=tok.pad_token_id,
                           id2label={0: "neutral", 1: "toxic"}, label2id={"neutral": 0, "toxic": 1})
    RobertaForSequenceClassification(config).eval().save_pretrained(directory)
    tok.save_pretrained(directory)
    return str(directory)


@pytest.fixture(scope="module")
def local_hub(tmp_path_factory):
    """Local copies in the hub's formats: prompts (JSON lines; Parquet), π₀, another GPT-NeoX as the audited
    expert, and the two judges."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    root = tmp_path_factory.mktemp("local_hub")
    rows = rtp_rows()
    corpus = [r["prompt"]["text"] for r in rows]
    (root / "rtp.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    pq.write_table(pa.Table.from_pylist(rows), root / "rtp.parquet")
    return {"root": root, "rows": rows, "jsonl": str(root / "rtp.jsonl"), "parquet": str(root / "rtp.parquet"),
            "pythia": build_tiny_pythia(root / "pythia", corpus, 0),
            "expert": build_tiny_pythia(root / "expert", corpus, 1),
            "reward_judge": build_tiny_roberta_judge(root / "judge_rstar", corpus, 2),
            "eval_judge": build_tiny_roberta_judge(root / "judge_eval", corpus, 3)}


SMALL = {"n_prompts": 12, "max_new_tokens": 4, "rl_max_new_tokens": 4, "rl_steps": 2, "rl_prompts_per_step": 2,
         "rl_generations": 2, "gen_batch_size": 8, "feature_max_length": 32, "eval_max_prompts": 6,
         "eval_samples": 1, "eval_batch_size": 8, "bon_samples": 2}


def _build(profile: str, settings: dict, tmp_path, monkeypatch):
    import datasets

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "hf_datasets"))
    task = registry.get_task("detox")
    cfg = task.config(profile, {**SMALL, **settings})
    cache = ArtifactCache(tmp_path / "cache")
    return task, cfg, cache, task.build(profile, cfg, cache)


def _kept(rows: list[dict], threshold: float) -> set[str]:
    return {r["prompt"]["text"] for r in rows
            if r["prompt"]["toxicity"] is not None and r["prompt"]["toxicity"] > threshold}


def _check_data(task, cfg, cache, data, hub):
    demos = data.demos()
    prompts = {p for split in demos.splits.values() for p in split.items.prompts}
    kept = _kept(hub["rows"], cfg.prompt_min_toxicity)
    assert cfg.prompt_min_toxicity == 0.3 and len(kept) == 22  # the profile's filter on prompt.toxicity
    assert len(prompts) == cfg.n_prompts and prompts <= kept
    for split in demos.splits.values():  # one completion per prompt and policy (the profile's k = 1)
        assert len(split.pairs) == len(set(split.items.prompts)) * cfg.completions_per_prompt == len(split.items) // 2
    # R* is the local RoBERTa judge through hf_classifier, exactly as the hub profile's s-nlp classifier.
    judge = make_judge({"type": "hf_classifier", "model": hub["reward_judge"]}, cache)
    truth = cache.load("truth", data.truth_key).read_json("truth.json")
    test = demos.splits["test"].items
    np.testing.assert_allclose(-np.array(truth["test"]["reward"]), judge.p_toxic(test.texts), atol=2e-6)
    assert data.summary["judges"]["eval"]["spec"] == {"type": "hf_classifier", "model": hub["eval_judge"]}
    # The frozen-backbone features come from the GPT-NeoX π₀ (hidden size 32) and are ready for the methods.
    encoder = make_encoder(demos.encoder)
    assert encoder.dim == 32 and encoder.encode(test.prompts[:2], test.texts[:2]).shape == (2, 32)
    pool = cache.load("pool", data.artifacts["pool"]).read_json("pool.json")
    n_eval = data.summary["detox"]["prompts"]["n"]
    assert n_eval == cfg.eval_max_prompts
    assert len(pool["texts"]) == 2 * n_eval * cfg.eval_samples + len(set(test.prompts)) * cfg.bon_samples
    return demos


def test_pythia_profile_runs_offline_on_local_copies(local_hub, tmp_path, monkeypatch):
    hub = local_hub
    task, cfg, cache, data = _build("pythia-70m", {
        "prompts": hub["jsonl"], "base_model": hub["pythia"], "reward_judge": f"hf_classifier:{hub['reward_judge']}",
        "eval_judge": f"hf_classifier:{hub['eval_judge']}"}, tmp_path, monkeypatch)
    assert (cfg.rl_lr, cfg.rl_beta, cfg.lora_r, cfg.completions_per_prompt) == (1e-5, 0.035, 0, 1)  # the profile's
    _check_data(task, cfg, cache, data, hub)
    expert = data.summary["expert"]
    assert expert["mode"] == "trained" and expert["recipe"]["algorithm"] == "rloo"
    assert len(cache.load("expert", expert["artifact"]).read_json("curve.json")) == cfg.rl_steps
    base_identity = json.loads((cache.root / "policies" / data.artifacts["policies"] / "manifest.json").read_text())
    # A local directory, keyed by its path and its weights' hash.
    assert base_identity["inputs"]["base"]["local"] == str(Path(hub["pythia"]).resolve())
    policies = task.policies(data.ref)
    assert type(policies["base"].model).__name__ == "GPTNeoXForCausalLM"
    assert policies["base"].tokenizer.pad_token == "<|endoftext|>"  # Pythia has no pad token: EOS pads

    # A method fits on it, and π₀ is re-aligned with its reward and judged, as `bench run --rerlhf rloo` does.
    method = "bradley_terry"
    config = configs.to_dict(configs.build(registry.methods()[method].Config, {"epochs": 5}, owner=method))
    fit = TrialSpec(method, config, 0, data.ref)
    trial = run_trial(fit, tmp_path / "trials" / f"{fit.trial_id}.json")
    assert trial["status"] == "ok" and set(trial["rewards"]) == {"val", "test", "pool"}
    spec = REALIGNMENT.spec(fit, "rloo")
    realigned = run_realign_trial(spec, tmp_path / "rerlhf" / f"{spec.trial_id}.json")
    assert realigned["status"] == "ok", realigned.get("error")
    assert realigned["policy"]["n_prompts"] == cfg.eval_max_prompts
    # `bench publish` finds the re-aligned policy's judged samples in the cache for the completions table.
    selection = Selection(data, configs.to_dict(cfg), [0], {method: MethodSelection(config, [fit.trial_id])},
                          {"resamples": 100, "seed": 0}, {}, "rloo", {method: [spec.trial_id]})
    export = dataset.collect(selection, cache, {fit.trial_id: trial}, {spec.trial_id: realigned})
    assert export.missing == []
    table = export.tables["completions"].to_pylist()
    assert len(table) == 3 * cfg.eval_max_prompts * cfg.eval_samples
    mine = [row["p_toxic_r_star"] for row in table if row["policy"] == f"re-aligned {method} seed 0"]
    assert [round(p, 6) for p in mine] == realigned["items"]["p_toxic"]["realigned"]["R*"]


def test_audit_profile_runs_offline_with_a_local_expert(local_hub, tmp_path, monkeypatch):
    hub = local_hub
    task, cfg, cache, data = _build("pythia-70m-audit", {
        "prompts": hub["parquet"], "base_model": hub["pythia"], "expert_model": hub["expert"],
        "reward_judge": f"hf_classifier:{hub['reward_judge']}", "eval_judge": f"hf_classifier:{hub['eval_judge']}"},
        tmp_path, monkeypatch)
    demos = _check_data(task, cfg, cache, data, hub)
    assert data.summary["expert"]["mode"] == "audited" and data.summary["expert"]["model"] == hub["expert"]
    assert not (cache.root / "expert").exists()  # audited: no RLHF ran
    # π_E's demonstrations are the audited model's own samples: its log-probs of them differ from π₀'s.
    policies = task.policies(data.ref)
    train = demos.splits["train"].items
    chosen = [i for i, s in enumerate(train.sources) if s == "expert"][:3]
    prompts, texts = [train.prompts[i] for i in chosen], [train.texts[i] for i in chosen]
    expert_lp = policies["expert"].sum_logprobs(prompts, texts)
    assert not np.allclose(expert_lp, policies["base"].sum_logprobs(prompts, texts))


def test_a_local_dataset_directory_or_file_loads_as_the_hub_dataset_would(local_hub, tmp_path, monkeypatch):
    import datasets

    from bench.errors import BadInput
    from tasks.detox.config import DetoxConfig
    from tasks.detox.prompts import load_prompts

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "hf_datasets"))
    folder = tmp_path / "real-toxicity-prompts"  # a dataset repository's layout: data files in a directory
    folder.mkdir()
    (folder / "prompts.jsonl").write_text((local_hub["root"] / "rtp.jsonl").read_text())
    cache = ArtifactCache(tmp_path / "cache")
    loaded = {source: load_prompts(DetoxConfig(prompts=str(source), prompt_min_toxicity=0.3), cache)
              for source in (folder, local_hub["jsonl"], local_hub["parquet"])}
    expected = [r["prompt"]["text"] for r in local_hub["rows"]
                if r["prompt"]["toxicity"] is not None and r["prompt"]["toxicity"] > 0.3]
    assert all(texts == expected for texts in loaded.values())
    (tmp_path / "prompts.txt").write_text("one prompt per line\n")
    with pytest.raises(BadInput, match="save it in one of those formats"):
        load_prompts(DetoxConfig(prompts=str(tmp_path / "prompts.txt")), cache)
