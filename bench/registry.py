"""Registries of IRL methods and tasks.

Every method and task, built-in or third-party, is a module listed in the entry-point group `irl_bench.methods` /
`irl_bench.tasks` (the built-ins in this project's pyproject.toml) whose import registers it with a decorator:

    [project.entry-points."irl_bench.methods"]
    my_method = "my_pkg.my_method"        # a module whose import runs @register_method("my_method")

Registering checks the base class (`IRLMethod`, `Task`), so a mistake fails at import with a clear message.
"""

from __future__ import annotations

from importlib.metadata import entry_points

from bench.errors import BadInput
from bench.kit.interface import IRLMethod
from bench.task import Task

_METHODS: dict[str, type] = {}
_TASKS: dict[str, type] = {}
_loaded = False


def _registrar(table: dict[str, type], kind: str, base: type):
    def register(name: str):
        def decorate(cls):
            if not (isinstance(cls, type) and issubclass(cls, base)):
                raise TypeError(f"{cls!r} is registered as {kind[:-1]} {name!r} but is not a subclass of "
                                f"{base.__name__}")
            if name in table and table[name] is not cls:
                raise ValueError(f"two {kind} are registered as {name!r}: {table[name]} and {cls}")
            cls.name = name
            table[name] = cls
            return cls

        return decorate

    return register


register_method = _registrar(_METHODS, "methods", IRLMethod)  # @register_method("name") on an IRLMethod subclass
register_task = _registrar(_TASKS, "tasks", Task)  # @register_task("name") on a Task subclass


def load_plugins() -> None:
    """Import every method and task module named in the entry-point groups (built-ins and plugins), once."""
    global _loaded
    if _loaded:
        return
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
