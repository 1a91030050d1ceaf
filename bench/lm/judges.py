"""Toxicity judges: P(toxic | text), batched, with a name and version for provenance.

A judge scores a text on its own; a task decides what it scores (for `detox`, the completion without the prompt,
as RealToxicityPrompts does). `JudgeReward` turns a judge into a `RewardFunction` (reward = −P(toxic)).

Implementations:
  profanity_check   alt-profanity-check: calibrated linear SVM on TF-IDF unigrams (Jigsaw + Davidson et al.)
  bilstm            the Jigsaw-trained BiLSTM of toxic-comment-classifier, rebuilt in PyTorch (no TensorFlow)
  hf_classifier     any Hugging Face sequence-classification model (hub id or local directory)
  detoxify          a detoxify checkpoint, loaded through the package's offline route (a local checkpoint)

A judge that cannot load raises `RuntimeFailure`; it never falls back to constant scores, because a judge that
silently returns zeros would make every policy look perfectly detoxified. Likewise a judge that answers NaN or a
number outside [0, 1] raises (`checked_p_toxic`, applied to every judge `make_judge` builds and to `JudgeReward`).
Weights load as weights only (safetensors, or `torch.load(weights_only=True)`); remote code is never trusted.
"""

from __future__ import annotations

import hashlib
import inspect
import pickle
from importlib import metadata
from pathlib import Path
from typing import Callable, Protocol

import numpy as np
import torch

from bench.errors import BadInput, RuntimeFailure
from bench.lm.assets import fetch_asset
from bench.lm.bilstm import BiLSTMJudge
from bench.lm.policies import load_problem, pick_device
from bench.storage.artifacts import ArtifactCache, file_sha256


class Judge(Protocol):
    name: str
    version: str

    def p_toxic(self, texts: list[str]) -> np.ndarray: ...


def checked_p_toxic(judge: Judge, texts: list[str]) -> np.ndarray:
    """`judge.p_toxic(texts)`, refused unless it is one probability in [0, 1] per text: a NaN (overflowing weights,
    a corrupt checkpoint) or a wrong count raises RuntimeFailure naming the judge, never a silent number."""
    p = np.asarray(judge.p_toxic(texts), dtype=np.float64)
    if p.shape != (len(texts),):
        raise RuntimeFailure(f"the {judge.name} judge returned {p.shape} scores for {len(texts)} texts; it is broken: "
                             f"fix or replace it.")
    bad = np.flatnonzero(~((p >= 0) & (p <= 1)))  # NaN fails both comparisons
    if bad.size:
        i = int(bad[0])
        raise RuntimeFailure(f"the {judge.name} judge ({judge.version}) returned {p[i]} for text {i} "
                             f"({str(texts[i])[:60]!r}), and {bad.size} of {len(texts)} scores are not probabilities "
                             f"in [0, 1]; the judge is broken (check its weights and device dtype), fix or replace it.")
    return p


class CheckedJudge:
    """A judge whose every answer passes `checked_p_toxic`; other attributes are the wrapped judge's."""

    def __init__(self, judge: Judge):
        self.judge = judge

    def __getattr__(self, name: str):
        if name.startswith("__") or name == "judge":  # unpickling looks these up before `judge` is set
            raise AttributeError(name)
        return getattr(self.judge, name)

    def p_toxic(self, texts: list[str]) -> np.ndarray:
        return checked_p_toxic(self.judge, list(texts))


class JudgeReward:
    """R(x, y) = −P(toxic | y): a judge as a `RewardFunction` (higher is better), scoring the completion only."""

    def __init__(self, judge: Judge):
        self.judge = judge

    def score(self, prompts: list[str], completions: list[str]) -> np.ndarray:
        return -checked_p_toxic(self.judge, list(completions))


def _package_version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "unknown"


# ---------------------------------------------------------------------------------------------------- profanity


class ProfanityCheckJudge:
    name = "profanity_check"

    def __init__(self):
        try:
            # Importing loads the pickled vectorizer and model (about 3 s), so do it only when the judge is built.
            from profanity_check import predict_prob  # loads scikit-learn and the model (seconds)
        except Exception as exc:  # ImportError, or a pickle that does not match the installed scikit-learn
            raise RuntimeFailure(
                f"the alt-profanity-check judge cannot load ({type(exc).__name__}: {exc}); "
                f"install it with `pip install alt-profanity-check==1.9.1`."
            ) from exc
        self._predict_prob = predict_prob
        self.version = f"alt-profanity-check=={_package_version('alt-profanity-check')}"

    def p_toxic(self, texts: list[str]) -> np.ndarray:
        if len(texts) == 0:
            return np.zeros(0)
        return np.asarray(self._predict_prob(list(texts)), dtype=np.float64)


# ------------------------------------------------------------------------------------------------------- BiLSTM

TOXIC_LABEL_NAMES = ("toxic", "toxicity")


def toxic_label_index(id2label: dict, label: str | None = None) -> int:
    """The output index whose label is `label` (or, if not given, 'toxic'/'toxicity', case-insensitive)."""
    names = {int(i): str(n) for i, n in id2label.items()}
    wanted = [label.lower()] if label else list(TOXIC_LABEL_NAMES)
    for want in wanted:
        hits = [i for i, n in names.items() if n.lower() == want]
        if hits:
            return hits[0]
    raise BadInput(
        f"the classifier's labels are {sorted(names.values())}, none of them "
        f"{'is ' + repr(label) if label else 'is named toxic/toxicity'}; name the toxic one with the judge's "
        f"`label` setting."
    )


def _load_error(what: str, exc: Exception, fix: str) -> RuntimeFailure:
    return RuntimeFailure(f"the {what} cannot load ({type(exc).__name__}: {str(exc).splitlines()[0][:300]}); {fix}")


class HFClassifierJudge:
    """Any `AutoModelForSequenceClassification` (hub id or local directory). P(toxic) is the toxic label's softmax
    probability for single-label models and its sigmoid for multi-label ones (`problem_type`) or one-logit ones."""

    name = "hf_classifier"

    def __init__(self, model: str, label: str | None = None, device: str | None = None, batch_size: int = 32,
                 max_length: int = 512):
        from transformers import AutoModelForSequenceClassification, AutoTokenizer  # only for hub classifiers

        try:
            self.tokenizer = AutoTokenizer.from_pretrained(model, trust_remote_code=False)
            self.model = AutoModelForSequenceClassification.from_pretrained(model, dtype=torch.float32,
                                                                            trust_remote_code=False)
        except Exception as exc:
            raise RuntimeFailure(
                f"the classifier {model!r} cannot load ({load_problem(model, exc)}); "
                "give a local directory holding the model and tokenizer, or a hub id when the Hugging Face Hub is "
                "reachable (HF_HUB_OFFLINE unset)."
            ) from exc
        if self.tokenizer.pad_token is None:  # e.g. GPT-2-style classifiers; padded positions are masked anyway
            self.tokenizer.pad_token = self.tokenizer.eos_token or self.tokenizer.unk_token
        self.tokenizer.padding_side = "right"
        cfg = self.model.config
        if cfg.pad_token_id is None:
            cfg.pad_token_id = self.tokenizer.pad_token_id
        self.multi_label = cfg.num_labels == 1 or cfg.problem_type == "multi_label_classification"
        self.index = 0 if cfg.num_labels == 1 else toxic_label_index(cfg.id2label, label)
        self.device = pick_device(device)
        self.model.to(self.device).eval()
        self.batch_size, self.max_length = batch_size, max_length
        self.version = f"{model}@{_model_revision(model, cfg)}"

    @torch.no_grad()
    def p_toxic(self, texts: list[str]) -> np.ndarray:
        out = np.zeros(len(texts))
        for start in range(0, len(texts), self.batch_size):
            chunk = list(texts[start : start + self.batch_size])
            enc = self.tokenizer(chunk, return_tensors="pt", padding=True, truncation=True, max_length=self.max_length)
            logits = self.model(**enc.to(self.device)).logits.float()
            probs = torch.sigmoid(logits) if self.multi_label else torch.softmax(logits, dim=-1)
            out[start : start + len(chunk)] = probs[:, self.index].double().cpu().numpy()
        return out


def _model_revision(model: str, cfg) -> str:
    """The hub commit when loaded from the hub, else a hash of the local weight files (so retrained weights in the
    same directory get a different version)."""
    commit = getattr(cfg, "_commit_hash", None)
    if commit:
        return commit[:12]
    local = Path(model)
    if local.is_dir():
        digest = hashlib.sha256()
        for weights in sorted(local.glob("*.safetensors")) + sorted(local.glob("*.bin")):
            digest.update(file_sha256(weights).encode())
        return "local:" + digest.hexdigest()[:12]
    return "unknown"


# ----------------------------------------------------------------------------------------------------- detoxify


class DetoxifyJudge:
    """A detoxify checkpoint; P(toxic) is its 'toxicity' output.

    detoxify downloads its checkpoint from GitHub and the matching config + tokenizer from the Hub, neither
    reachable offline. With `checkpoint` (a detoxify `.ckpt`) and `hf_dir` (a directory with the base model's
    config.json and tokenizer files) we take the package's offline route: the checkpoint's `model_type` is pointed at
    `hf_dir` before detoxify builds the model, so nothing is fetched. With `model_type` alone we call
    `Detoxify(model_type)`, which works where GitHub and the Hub are reachable (or already cached)."""

    name = "detoxify"

    def __init__(self, model_type: str = "original", checkpoint: str | None = None, hf_dir: str | None = None,
                 device: str | None = None, batch_size: int = 32):
        try:
            from detoxify import Detoxify  # optional judge; its package may be absent
            from detoxify.detoxify import get_model_and_tokenizer
        except ImportError as exc:
            raise RuntimeFailure("the detoxify judge needs the detoxify package; "
                                 "`pip install detoxify==0.5.4`.") from exc
        self.device = pick_device(device)
        try:
            if checkpoint is not None:
                # weights only: a checkpoint is a dict of settings and tensors; a pickle that would run code is refused
                loaded = torch.load(checkpoint, map_location="cpu", weights_only=True)
                args = dict(loaded["config"]["arch"]["args"])
                if hf_dir is not None:
                    args["model_type"] = str(hf_dir)
                self.model, self.tokenizer = get_model_and_tokenizer(**args, state_dict=loaded["state_dict"])
                classes = list(loaded["config"]["dataset"]["args"]["classes"])
                source = f"{Path(checkpoint).name}:{file_sha256(Path(checkpoint))[:12]}"
            else:
                detox = Detoxify(model_type, device="cpu")
                self.model, self.tokenizer, classes = detox.model, detox.tokenizer, detox.class_names
                source = model_type
        except pickle.UnpicklingError as exc:
            raise RuntimeFailure(
                f"the detoxify checkpoint {checkpoint} is a pickle that would run code when loaded, so weights-only "
                f"loading refused it; save its config and state_dict as plain dicts and tensors (torch.save) from a "
                f"copy you trust."
            ) from exc
        except Exception as exc:
            raise _load_error(
                f"detoxify judge ({checkpoint or model_type})", exc,
                "pass `checkpoint` (a detoxify .ckpt) and `hf_dir` (its base model's config and tokenizer files) "
                "to load "
                "it offline.",
            ) from exc
        # detoxify renames the original Jigsaw labels; accept both spellings.
        names = [{"toxic": "toxicity"}.get(c, c) for c in classes]
        if "toxicity" not in names:
            raise RuntimeFailure(f"the detoxify checkpoint has no toxicity output (classes: {classes}).")
        self.index = names.index("toxicity")
        self.model.to(self.device).eval()
        self.batch_size = batch_size
        self.version = f"detoxify-{_package_version('detoxify')}/{source}"

    @torch.no_grad()
    def p_toxic(self, texts: list[str]) -> np.ndarray:
        out = np.zeros(len(texts))
        for start in range(0, len(texts), self.batch_size):
            chunk = list(texts[start : start + self.batch_size])
            enc = self.tokenizer(chunk, return_tensors="pt", padding=True, truncation=True)
            logits = self.model(**enc.to(self.device))[0]
            out[start : start + len(chunk)] = torch.sigmoid(logits[:, self.index]).double().cpu().numpy()
        return out


# ----------------------------------------------------------------------------------------------------- registry

JUDGES: dict[str, Callable[[dict, ArtifactCache | None], Judge]] = {}


def register_judge(kind: str):
    def decorate(factory):
        JUDGES[kind] = factory
        return factory

    return decorate


def make_judge(spec: dict, cache: ArtifactCache | None = None) -> Judge:
    """Build a judge from a config entry such as {"type": "bilstm"} or
    {"type": "hf_classifier", "model": "s-nlp/roberta_toxicity_classifier"}. Judges whose files are pinned assets
    (bilstm) fetch them into `cache`. Every score it returns is checked (`checked_p_toxic`)."""
    kind = spec.get("type")
    if kind not in JUDGES:
        raise BadInput(f"unknown judge type {kind!r}; choose from: {', '.join(sorted(JUDGES))}.")
    options = {k: v for k, v in spec.items() if k != "type"}
    return CheckedJudge(JUDGES[kind](options, cache))


def _construct(cls, options: dict, *args):
    """`cls(*args, **options)`, reporting an unknown or missing option as bad input rather than a TypeError."""
    try:
        inspect.signature(cls).bind(*args, **options)
    except TypeError as exc:
        raise BadInput(f"bad settings for the {cls.name} judge {options}: {exc}.") from exc
    return cls(*args, **options)


@register_judge("profanity_check")
def _profanity_check(options: dict, cache) -> Judge:
    return _construct(ProfanityCheckJudge, options)


@register_judge("bilstm")
def _bilstm(options: dict, cache) -> Judge:
    if "weights_h5" in options or "tokenizer_pickle" in options:
        return _construct(BiLSTMJudge, options)
    if cache is None:
        raise BadInput("the bilstm judge needs an artifact cache to fetch its weights, or weights_h5 + "
                       "tokenizer_pickle.")
    art = fetch_asset("toxic-comment-classifier", cache)
    return _construct(BiLSTMJudge, options, art.file("model.weights.h5"), art.file("tokenizer.pickle"))


@register_judge("hf_classifier")
def _hf_classifier(options: dict, cache) -> Judge:
    return _construct(HFClassifierJudge, options)


@register_judge("detoxify")
def _detoxify(options: dict, cache) -> Judge:
    return _construct(DetoxifyJudge, options)
