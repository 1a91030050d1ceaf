"""Hostile or broken model files, judges and prompts: refused with a sentence naming the file, never code run,
never a silent number, nothing half-written."""

import ast
import json
import os
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from bench import config as configs
from bench.cli import main
from bench.errors import BadInput, RuntimeFailure
from bench.lm.assets import fetch_asset
from bench.lm.bilstm import BiLSTMJudge, KerasWordTokenizer
from bench.lm.judges import CheckedJudge, JudgeReward
from bench.lm.policies import Policy
from bench.storage.artifacts import ArtifactCache
from tasks.detox.config import DetoxConfig
from tasks.detox.prompts import load_prompts

REPO = Path(__file__).resolve().parent.parent


class _Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_pickled_weights_that_run_code_are_refused_naming_the_file(tiny_lm_dir, tmp_path):
    model = tmp_path / "m"
    shutil.copytree(tiny_lm_dir, model)
    from safetensors.torch import load_file

    weights = load_file(model / "model.safetensors")
    (model / "model.safetensors").unlink()
    marker = tmp_path / "code-ran"
    torch.save({"evil": _Evil(marker), **weights}, model / "pytorch_model.bin")
    with pytest.raises(RuntimeFailure, match=f"{model / 'pytorch_model.bin'} is a pickle that would run code"):
        Policy.from_pretrained(str(model))
    assert not marker.exists()


def test_truncated_safetensors_is_named(tiny_lm_dir, tmp_path):
    model = tmp_path / "m"
    shutil.copytree(tiny_lm_dir, model)
    data = (model / "model.safetensors").read_bytes()
    (model / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(RuntimeFailure, match=f"{model / 'model.safetensors'} is truncated or corrupt"):
        Policy.from_pretrained(str(model))


def test_custom_code_in_a_model_directory_never_runs(tiny_lm_dir, tmp_path):
    model = tmp_path / "m"
    shutil.copytree(tiny_lm_dir, model)
    marker = tmp_path / "code-ran"
    config = json.loads((model / "config.json").read_text())
    config.update(model_type="evil_arch", auto_map={"AutoConfig": "evil.C", "AutoModelForCausalLM": "evil.M"})
    (model / "config.json").write_text(json.dumps(config))
    (model / "evil.py").write_text(f"import pathlib\npathlib.Path({str(marker)!r}).touch()\n")
    with pytest.raises(RuntimeFailure, match="cannot load"):
        Policy.from_pretrained(str(model))
    assert not marker.exists()


def test_no_load_trusts_remote_code():
    """Every `Auto*.from_pretrained` in the project passes trust_remote_code=False explicitly (so a model directory's
    custom code never runs, whatever a library's default becomes), and no call anywhere passes anything else: a new
    load without the flag fails here. There is no user flag to trust remote code."""
    unsafe, missing, checked = [], [], 0
    for path in [*REPO.glob("bench/**/*.py"), *REPO.glob("tasks/**/*.py"), *REPO.glob("methods/**/*.py")]:
        for node in ast.walk(ast.parse(path.read_text())):
            if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)):
                continue
            where = f"{path.relative_to(REPO)}:{node.lineno}"
            flag = next((k.value for k in node.keywords if k.arg == "trust_remote_code"), None)
            if flag is not None and not (isinstance(flag, ast.Constant) and flag.value is False):
                unsafe.append(where)
            receiver = getattr(node.func.value, "id", "")
            if node.func.attr == "from_pretrained" and receiver.startswith("Auto"):
                checked += 1
                if flag is None:
                    missing.append(where)
    assert unsafe == [] and missing == []
    assert checked >= 12  # the walk sees the loads (policies, judges, engines, RLHF, features, the frozen encoder)


class _NaNJudge:
    name, version = "nan_judge", "test"

    def p_toxic(self, texts):
        return np.array([0.1, float("nan"), 0.2][: len(texts)])


def test_a_judge_answering_nan_raises_instead_of_scoring():
    with pytest.raises(RuntimeFailure, match=r"nan_judge judge \(test\) returned nan for text 1 \('b'\)"):
        JudgeReward(_NaNJudge()).score(["p"] * 3, ["a", "b", "c"])
    with pytest.raises(RuntimeFailure, match="not probabilities"):
        CheckedJudge(_NaNJudge()).p_toxic(["a", "b"])
    with pytest.raises(RuntimeFailure, match=r"returned \(3,\) scores for 4 texts"):
        CheckedJudge(_NaNJudge()).p_toxic(["a", "b", "c", "d"])
    assert CheckedJudge(_NaNJudge()).p_toxic(["a"]).tolist() == [0.1]


@pytest.mark.parametrize("content, fragment", [
    (b"", "is empty"),
    (b"  \n\t\n\x00\x1b\r\n\xe2\x80\x8b\n", "holds nothing but whitespace and control characters"),
])
def test_an_empty_or_blank_prompts_file_is_refused_before_anything_is_written(content, fragment, tmp_path, capsys):
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_bytes(content)
    runs = tmp_path / "runs"
    args = ["run", "--task", "detox", "--profile", "smoke", "--methods", "random", "--set", f"task.prompts={prompts}",
            "--runs-dir", str(runs), "--leaderboards-dir", str(tmp_path / "lb")]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert f"prompts file {prompts} {fragment}; write one prompt per row" in err and len(err.splitlines()) == 1
    assert not runs.exists() and not (tmp_path / "lb").exists()


def test_a_prompt_dataset_of_blank_and_control_only_prompts_is_refused_naming_it(tmp_path):
    """Rows that parse but whose prompts are empty, blank, control or zero-width characters only: a BadInput naming
    the dataset and its field, raised by the first stage, before any artifact is written."""
    prompts = tmp_path / "prompts.jsonl"
    rows = ["", "   ", "\x00\x1b\x07", "\u200b\u200b", "\t\r\n"]
    prompts.write_text("".join(json.dumps({"prompt": {"text": t, "toxicity": 0.9}}) + "\n" for t in rows))
    cfg = configs.build(DetoxConfig, {"prompts": str(prompts)})  # the file is not blank: its JSON passes
    cache = ArtifactCache(tmp_path / "cache")
    with pytest.raises(BadInput, match=f"prompt dataset '{prompts}' gives no usable prompt in its field "
                                       f"'prompt.text'.*set prompt_field"):
        load_prompts(cfg, cache)
    assert not cache.root.exists()
    with pytest.raises(BadInput, match="gives no usable prompt"):  # a field that no row has
        load_prompts(configs.build(DetoxConfig, {"prompts": str(prompts), "prompt_field": "text"}), cache)
    # usable prompts survive, stripped; the blank and control-only ones are dropped
    prompts.write_text("".join(json.dumps({"prompt": {"text": t}}) + "\n" for t in [*rows, " a cat\x07 ", "b"]))
    assert load_prompts(cfg, cache) == ["a cat\x07", "b"]


def test_a_bilstm_tokenizer_pickle_that_would_run_code_is_refused(tmp_path, asset_cache):
    """The BiLSTM judge unpickles its Keras tokenizer through an allow-list: a pickle calling os.system is refused,
    naming the file, and the command never runs; the real tokenizer's globals are all allowed."""
    marker = tmp_path / "code-ran"
    evil = tmp_path / "tokenizer.pickle"
    evil.write_bytes(pickle.dumps({"word_index": {"a": 1}, "payload": _Evil(marker)}))
    with pytest.raises(RuntimeFailure, match=f"tokenizer pickle {evil} is refused: global (os|posix).system is not "
                                             f"allowed"):
        BiLSTMJudge(tmp_path / "model.weights.h5", evil)
    assert not marker.exists()
    # the real tokenizer (a Keras class, OrderedDict, defaultdict(int)) still loads through the allow-list
    real = KerasWordTokenizer(fetch_asset("toxic-comment-classifier", asset_cache).file("tokenizer.pickle"))
    assert real.num_words and len(real.word_index) > 1000
