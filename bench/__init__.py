"""irl-bench: which inverse-RL method best recovers the reward an RLHF-aligned model was trained on."""

import importlib

__version__ = "0.1.0"

# Salt mixed into every artifact and trial key. Bump it when a change alters what a stage computes,
# so stale cached results are never reused under new code.
CODE_VERSION = "2"

# The Python API (bench/api.py), loaded on first use (PEP 562) so that `import bench` never loads Ray or torch and
# `bench.load_leaderboard` only the reporting layer. A lazy importlib call, not an import statement: this package
# is the lowest layer, and tests/test_architecture.py reads import statements.
_LAZY = {"run": "bench.api", "load_leaderboard": "bench.reporting.compare"}


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'bench' has no attribute {name!r}")


def __dir__():
    return sorted([*globals(), *_LAZY])
