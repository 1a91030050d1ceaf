"""Typed, validated configs: every knob a dataclass field with a default, a valid range and a search space.

A config field is declared with `param(...)`; from that one declaration the harness derives validation of
user overrides (`--set key=value`), the Ray Tune search space of a sweep, and the provenance record.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

from bench.errors import BadInput


def param(default, *, low=None, high=None, choices=None, log=False, tune=True, search=None, help=""):
    """A config field: `low`/`high` bound numbers (inclusive), `choices` enumerates strings or bools.

    `tune=False` keeps a field out of the sweep search space (structural choices such as a dataset size).
    `search=(lo, hi)` narrows the sweep's range inside the valid one; `log=True` searches on a log scale.
    """
    meta = {"low": low, "high": high, "choices": choices, "log": log, "tune": tune, "search": search, "help": help}
    return dataclasses.field(default=default, metadata=meta)


def fields(config_cls) -> list[dataclasses.Field]:
    return list(dataclasses.fields(config_cls))


def to_dict(cfg) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def _coerce(name: str, raw: Any, default: Any) -> Any:
    """Turn a `--set` string (or a JSON value) into the type of the field's default."""
    kind = type(default)
    if not isinstance(raw, str):
        value = raw
    elif kind is bool:
        lowered = raw.strip().lower()
        if lowered not in ("true", "false", "1", "0", "yes", "no"):
            raise BadInput(f"{name} must be true or false, not {raw!r}; write {name}=true or {name}=false.")
        return lowered in ("true", "1", "yes")
    elif kind is int:
        try:
            value = int(raw)
        except ValueError:
            raise BadInput(f"{name} must be a whole number, not {raw!r}; write e.g. {name}={default}.") from None
    elif kind is float:
        try:
            value = float(raw)
        except ValueError:
            raise BadInput(f"{name} must be a number, not {raw!r}; write e.g. {name}={default}.") from None
    else:
        value = raw
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if kind is int and isinstance(value, float) and value.is_integer():
        value = int(value)
    if kind in (int, float) and (isinstance(value, bool) or not isinstance(value, (int, float))):
        raise BadInput(f"{name} must be a number, not {raw!r}; write e.g. {name}={default}.")
    return value


def check_value(name: str, value: Any, meta: dict) -> None:
    """Raise BadInput (one sentence, naming the valid range) when a value lies outside its declared domain."""
    if meta.get("choices") is not None:
        if value not in meta["choices"]:
            options = ", ".join(str(c) for c in meta["choices"])
            raise BadInput(f"{name}={value!r} is not allowed; choose one of: {options}.")
        return
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if isinstance(value, float) and not math.isfinite(value):
            raise BadInput(f"{name} must be a finite number, not {value!r}.")
        low, high = meta.get("low"), meta.get("high")
        if (low is not None and value < low) or (high is not None and value > high):
            raise BadInput(f"{name}={value} is out of range; use a value in [{low}, {high}].")


def build(config_cls, overrides: dict[str, Any] | None = None, *, owner: str = "config"):
    """Instantiate `config_cls` with overrides, coercing types and checking every field's declared range."""
    overrides = dict(overrides or {})
    known = {f.name: f for f in fields(config_cls)}
    unknown = sorted(set(overrides) - set(known))
    if unknown:
        raise BadInput(
            f"{owner} has no setting {unknown[0]!r}; its settings are: {', '.join(sorted(known))}."
        )
    values = {}
    for name, f in known.items():
        default = f.default
        value = _coerce(f"{owner}.{name}", overrides[name], default) if name in overrides else default
        check_value(f"{owner}.{name}", value, f.metadata)
        values[name] = value
    cfg = config_cls(**values)
    validate = getattr(cfg, "validate", None)
    if callable(validate):
        validate()  # cross-field checks; raises BadInput
    return cfg


def search_space(config_cls) -> dict[str, Any]:
    """The Ray Tune search space declared by a config's fields (only fields with tune=True and a domain)."""
    from ray import tune  # only sweeps need the search space; keeps configs free of Ray

    space = {}
    for f in fields(config_cls):
        meta = f.metadata
        if not meta.get("tune"):
            continue
        if meta.get("choices") is not None:
            space[f.name] = tune.choice(list(meta["choices"]))
        elif meta.get("low") is not None and meta.get("high") is not None:
            low, high = meta.get("search") or (meta["low"], meta["high"])
            if isinstance(f.default, int) and not isinstance(f.default, bool):
                space[f.name] = tune.lograndint(low, high + 1) if meta["log"] else tune.randint(low, high + 1)
            else:
                space[f.name] = tune.loguniform(low, high) if meta["log"] else tune.uniform(low, high)
    return space


def parse_assignments(assignments: list[str] | None) -> list[tuple[str, str]]:
    """Split `--set key=value` strings; a malformed one is bad input."""
    parsed = []
    for item in assignments or []:
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or not key or not value.strip():
            raise BadInput(f"--set {item!r} is malformed; write --set key=value, e.g. --set bradley_terry.lr=0.01.")
        parsed.append((key, value.strip()))
    return parsed
