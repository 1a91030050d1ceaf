"""irl-bench: which inverse-RL method best recovers the reward an RLHF-aligned model was trained on."""

__version__ = "0.1.0"

# Salt mixed into every artifact and trial key. Bump it when a change alters what a stage computes,
# so stale cached results are never reused under new code.
CODE_VERSION = "2"
