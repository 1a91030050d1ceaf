"""Registries: built-ins, unknown names, and third-party plugins through entry points."""

import sys
import textwrap

import pytest

from bench import registry
from bench.errors import BadInput


def test_builtin_methods_and_tasks():
    assert {"max_margin", "bradley_terry", "failure_aware", "random", "oracle", "implicit", "length"} <= set(
        registry.methods())
    assert "synthetic" in registry.tasks()
    assert [n for n, c in registry.methods().items() if c.needs_ground_truth] == ["oracle"]


def test_unknown_names_are_bad_input():
    with pytest.raises(BadInput, match="unknown method 'nosuch'.*bench ls methods"):
        registry.resolve_methods("bradley_terry,nosuch")
    with pytest.raises(BadInput, match="unknown task 'nosuch'"):
        registry.get_task("nosuch")
    assert registry.resolve_methods("random, oracle,random") == ["random", "oracle"]


def test_entry_point_plugin_registers_a_method(tmp_path, monkeypatch):
    """A separately installed package adds a method through the `irl_bench.methods` entry-point group."""
    (tmp_path / "my_irl_plugin.py").write_text(textwrap.dedent('''
        from dataclasses import dataclass
        from bench.registry import register_method
        from bench.kit.training import IRLMethod

        @dataclass
        class Config:
            pass

        @register_method("plugin_constant")
        class Constant(IRLMethod):
            description = "a plugin"
            Config = Config
    '''))
    dist = tmp_path / "my_irl_plugin-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: my-irl-plugin\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text("[irl_bench.methods]\nplugin_constant = my_irl_plugin\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(registry, "_loaded", False)
    try:
        assert "plugin_constant" in registry.methods()
        assert registry.methods()["plugin_constant"].description == "a plugin"
    finally:
        registry._METHODS.pop("plugin_constant", None)
        sys.modules.pop("my_irl_plugin", None)
