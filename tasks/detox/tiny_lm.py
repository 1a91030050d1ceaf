"""The smoke profile's π₀: a tiny GPT-2 trained here, in seconds, on the prompt texts."""

from __future__ import annotations

from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

from bench.progress import Stages
from bench.storage.artifacts import ArtifactCache, atomic_write_json
from bench.task import hash_texts


def train_tiny_lm(corpus: list[str], steps: int, seed: int, cache: ArtifactCache, stages: Stages):
    """A ~150k-parameter GPT-2 (byte-level BPE, n_embd 64, 2 layers) trained briefly on `corpus` so that it emits
    text in the corpus' style: a real (if weak) π₀ for the smoke profile, trained in seconds."""
    inputs = {"corpus": hash_texts(corpus), "steps": steps, "seed": seed, "vocab_size": 512,
              "arch": {"n_embd": 64, "n_layer": 2, "n_head": 2, "n_positions": 128}, "batch": 32, "lr": 3e-3,
              "window": 64, "packing": "newline-joined stream"}
    return cache.get_or_build("tiny_lm", inputs, lambda d: _train_tiny(d, corpus, inputs, stages))


def _train_tiny(out: Path, corpus: list[str], inputs: dict, stages: Stages) -> None:
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=inputs["vocab_size"], special_tokens=["<|endoftext|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    bpe.train_from_iterator(corpus, trainer)
    tok = PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token="<|endoftext|>", bos_token="<|endoftext|>",
                                  pad_token="<|endoftext|>")
    torch.manual_seed(inputs["seed"])
    arch = inputs["arch"]
    config = GPT2Config(vocab_size=len(tok), n_positions=arch["n_positions"], n_embd=arch["n_embd"],
                        n_layer=arch["n_layer"], n_head=arch["n_head"], bos_token_id=tok.eos_token_id,
                        eos_token_id=tok.eos_token_id, pad_token_id=tok.eos_token_id)
    model = GPT2LMHeadModel(config)
    # One packed stream of all texts (newline-separated, no EOS), trained on random windows: after a prompt the
    # model continues with more text of the corpus' style instead of stopping.
    stream = torch.tensor(tok("\n".join(corpus))["input_ids"])
    window = inputs["window"]
    optimiser = torch.optim.AdamW(model.parameters(), lr=inputs["lr"])
    generator = torch.Generator().manual_seed(inputs["seed"])
    advance = stages.stage("tiny π₀: language-model training", inputs["steps"])
    model.train()
    for _ in range(inputs["steps"]):
        starts = torch.randint(len(stream) - window, (inputs["batch"],), generator=generator)
        ids = torch.stack([stream[s : s + window] for s in starts.tolist()])
        loss = model(input_ids=ids, labels=ids).loss
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        advance()
    model.eval()
    model.save_pretrained(out)
    tok.save_pretrained(out)
    atomic_write_json(out / "training.json", {**inputs, "final_loss": float(loss.detach())})
