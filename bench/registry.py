"""Registries of IRL methods and tasks.

Built-in methods and tasks register themselves with a decorator when their package is imported. A third-party
package adds its own through an entry point in the groups `irl_bench.methods` / `irl_bench.tasks`, e.g.

    [project.entry-points."irl_bench.methods"]
    my_method = "my_pkg.my_method"        # a module whose import runs @register_method("my_method")
"""

from __future__ import annotations

import importlib
from importlib.metadata import entry_points

from bench.errors import BadInput

_METHODS: dict[str, type] = {}
_TASKS: dict[str, type] = {}
_loaded = False


def _registrar(table: dict[str, type], kind: str):
    def register(name: str):
        def decorate(cls):
            if name in table and table[name] is not cls:
                raise ValueError(f"two {kind} are registered as {name!r}: {table[name]} and {cls}")
            cls.name = name
            table[name] = cls
            return cls

        return decorate

    return register


register_method = _registrar(_METHODS, "methods")  # @register_method("name") on an IRLMethod subclass
register_task = _registrar(_TASKS, "tasks")  # @register_task("name") on a Task subclass


def load_plugins() -> None:
    """Import the built-in methods and tasks and every installed plugin, once."""
    global _loaded
    if _loaded:
        return
    importlib.import_module("methods")
    importlib.import_module("tasks")
    for group in ("irl_bench.methods", "irl_bench.tasks"):
        for ep in entry_points(group=group):
            ep.load()
    _loaded = True


def methods() -> dict[str, type]:
    load_plugins()
    return dict(sorted(_METHODS.items()))


def tasks() -> dict[str, type]:
    load_plugins()
    return dict(sorted(_TASKS.items()))


def get_method(name: str):
    known = methods()
    if name not in known:
        raise BadInput(f"unknown method {name!r}; choose from: {', '.join(known)} (see `bench ls methods`).")
    return known[name]()


def get_task(name: str):
    known = tasks()
    if name not in known:
        raise BadInput(f"unknown task {name!r}; choose from: {', '.join(known)} (see `bench ls tasks`).")
    return known[name]()


def resolve_methods(spec: str) -> list[str]:
    """`all` or a comma-separated list of method names, validated, order kept, duplicates dropped."""
    known = methods()
    if spec.strip() == "all":
        return list(known)
    names = [n.strip() for n in spec.split(",") if n.strip()]
    if not names:
        raise BadInput("--methods is empty; write --methods all or --methods NAME[,NAME...].")
    for n in names:
        if n not in known:
            raise BadInput(f"unknown method {n!r}; choose from: {', '.join(known)} (see `bench ls methods`).")
    return list(dict.fromkeys(names))
