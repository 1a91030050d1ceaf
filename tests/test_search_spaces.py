"""A method's search space holds only settings its fit reads: every registered method is fitted on the tiny
synthetic task with a config that records which of its fields are read, once at its defaults and once for every
other choice of each categorical setting (some settings are read only under one choice, e.g. the slopes of a
max-margin base), and every searched setting must have been read in one of those fits."""

from dataclasses import dataclass

import pytest

from bench import config as C
from bench import registry
from bench.config import param
from bench.errors import BadInput
from bench.execution.fit_trial import TrialSpec, run_trial
from bench.kit.interface import IRLMethod


class RecordsReads:
    """Stands in for a config object and records the name of every attribute a fit reads."""

    def __init__(self, cfg, read: set):
        object.__setattr__(self, "_cfg", cfg)
        object.__setattr__(self, "_read", read)

    def __getattr__(self, name):  # only called for names not on the recorder itself, i.e. the config's
        value = getattr(self._cfg, name)
        self._read.add(name)
        return value

    def __setattr__(self, name, value):
        raise AttributeError(f"a fit must not change its config ({name})")


def settings(config_cls) -> list[dict]:
    """The defaults, and each other choice of every categorical setting, one at a time."""
    variants = [{}]
    for f in C.fields(config_cls):
        for choice in f.metadata.get("choices") or []:
            if choice != f.default:
                variants.append({f.name: choice})
    return variants


def fields_read(name: str, data, tmp_path, monkeypatch) -> tuple[set, set, list]:
    """(fields read over the settings that fitted, fields of the config, the settings that fitted) for a registered
    method. A choice this task refuses as bad input (e.g. a head that needs a language model) is left out, with
    whatever its refused fit read; the defaults must fit."""
    cls = registry.methods()[name]
    real = cls.Config
    read: set = set()
    fitted = []
    for k, overrides in enumerate(settings(real)):
        this: set = set()
        monkeypatch.setattr(cls, "Config", staticmethod(lambda **values: RecordsReads(real(**values), this)))
        spec = TrialSpec(name, C.to_dict(C.build(real, overrides)), 0, data.ref)
        result = run_trial(spec, tmp_path / f"{name}-{k}.json", splits=("val",))
        if overrides and result["status"] != "ok" and result.get("error", "").startswith("BadInput"):
            continue
        assert result["status"] == "ok", (name, overrides, result.get("error"))
        read |= this
        fitted.append(overrides)
    monkeypatch.setattr(cls, "Config", real)
    return read, {f.name for f in C.fields(real)}, fitted


@pytest.mark.parametrize("name", sorted(registry.methods()))
def test_every_searched_setting_is_read_by_the_fit(name, synthetic_tiny, tmp_path, monkeypatch):
    _, data = synthetic_tiny
    read, declared, fitted = fields_read(name, data, tmp_path, monkeypatch)
    config_cls = registry.methods()[name].Config
    space = set(C.search_space(config_cls))
    assert space <= read, f"{name} searches {sorted(space - read)} but never reads them (settings: {fitted})"
    # and no setting at all is declared that the fit never reads (tune=False ones included)
    assert declared <= read, f"{name} declares {sorted(declared - read)} but never reads them"


@dataclass
class _UnreadConfig:
    used: float = param(1.0, low=0.0, high=2.0, help="read by the fit")
    unused: float = param(1.0, low=0.0, high=2.0, help="never read")
    mode: str = param("a", choices=["a", "b", "c"], help="'b' reads `only_b`; this task refuses 'c'")
    only_b: float = param(1.0, low=0.0, high=2.0, help="read only when mode is b")


class _Unread(IRLMethod):
    Config = _UnreadConfig

    def fit(self, train, model, cfg, ctx):
        if cfg.mode == "b":
            assert cfg.only_b > 0
        if cfg.mode == "c" and cfg.unused:  # a refused setting's reads do not count
            raise BadInput("mode c needs another task.")
        return registry.get_method("random").fit(train, model, None, ctx) if cfg.used else None


def test_the_check_finds_an_unread_setting_and_follows_choices(synthetic_tiny, tmp_path, monkeypatch):
    registry.register_method("_unread")(_Unread)
    try:
        read, declared, fitted = fields_read("_unread", synthetic_tiny[1], tmp_path, monkeypatch)
    finally:
        registry._METHODS.pop("_unread", None)
    assert fitted == [{}, {"mode": "b"}]  # mode c was refused
    assert declared - read == {"unused"}  # only_b is read under mode b
