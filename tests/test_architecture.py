"""The layout's rules, checked on the source: layers import only downwards, no import circles, small modules, and
the commands that only read results (`bench leaderboard`, `bench compare`) never load Ray or torch."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("bench", "methods", "tasks")
# Lowest first. A module may import from its own layer or any layer below it, never from one above.
LAYERS = [
    ("vocabulary", ["bench", "bench.errors", "bench.config", "bench.progress", "bench.provenance"]),
    ("storage", ["bench.storage", "bench.data"]),
    ("task interface", ["bench.task"]),
    ("method author's kit", ["bench.kit"]),
    ("registry", ["bench.registry"]),
    ("scoring", ["bench.scoring"]),
    ("reporting", ["bench.reporting"]),
    ("execution", ["bench.execution"]),
    ("language-model wing", ["bench.lm"]),
    ("audit", ["bench.audit"]),
    ("plugins", ["methods", "tasks"]),
    ("interfaces", ["bench.cli", "bench.api", "bench.environment"]),
]
MAX_LINES = 400


def modules() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in sorted((REPO / package).rglob("*.py")):
            parts = list(path.relative_to(REPO).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            found[".".join(parts)] = path
    return found


def project_imports(path: Path, known: dict) -> set[str]:
    """Project modules imported anywhere in the file (function-local imports included)."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            # `from a.b import c` imports the module a.b.c when it exists, else names from a.b
            names = [f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in known else node.module
                     for a in node.names]
        else:
            continue
        out |= {n for n in names if n.split(".")[0] in PACKAGES}
    return out


def layer_of(module: str) -> int:
    best, rank = -1, None
    for index, (_, prefixes) in enumerate(LAYERS):
        for prefix in prefixes:
            if (module == prefix or module.startswith(prefix + ".")) and len(prefix) > best:
                best, rank = len(prefix), index
    assert rank is not None, f"{module} belongs to no layer; add it to LAYERS (and CONTRIBUTING.md)"
    return rank


@pytest.fixture(scope="module")
def graph():
    known = modules()
    return {m: project_imports(p, known) for m, p in known.items()}


def test_no_layer_imports_a_layer_above_it(graph):
    upward = [f"{m} ({LAYERS[layer_of(m)][0]}) imports {d} ({LAYERS[layer_of(d)][0]})"
              for m, deps in graph.items() for d in deps if layer_of(d) > layer_of(m)]
    assert not upward, "\n".join(upward)


def test_no_import_circles(graph):
    state, stack, circles = {}, [], []

    def visit(m):
        state[m] = "open"
        stack.append(m)
        for d in sorted(graph.get(m, ())):
            if d == m or d not in graph:
                continue
            if state.get(d) == "open":
                circles.append(" → ".join(stack[stack.index(d):] + [d]))
            elif d not in state:
                visit(d)
        stack.pop()
        state[m] = "done"

    for m in sorted(graph):
        if m not in state:
            visit(m)
    assert not circles, "\n".join(circles)


def test_the_walk_sees_a_planted_circle_and_an_upward_import(tmp_path):
    a, b = tmp_path / "a.py", tmp_path / "b.py"
    a.write_text("from bench.reporting import html\n")
    b.write_text("def f():\n    from bench.execution import run\n")
    known = modules()
    assert project_imports(a, known) == {"bench.reporting.html"}
    assert project_imports(b, known) == {"bench.execution.run"}  # function-local imports count
    assert layer_of("bench.scoring.scorer") < layer_of("bench.reporting.html") < layer_of("bench.execution.run")


def test_modules_stay_small():
    long = {m: n for m, p in modules().items() if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert not long, f"modules over {MAX_LINES} lines: {long}"


def test_detox_build_is_a_short_list_of_stages():
    tree = ast.parse((REPO / "tasks/detox/task.py").read_text())
    build = next(n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef) and n.name == "build")
    assert build.end_lineno - build.lineno + 1 < 60


@pytest.mark.parametrize("command", [
    ["leaderboard", "--runs-dir", "{repo}/results", "--leaderboards-dir", "{out}"],
    ["compare", "{repo}/leaderboards/synthetic.json", "{repo}/leaderboards/synthetic.json"],
])
def test_reading_results_never_loads_ray_or_torch(command, tmp_path):
    args = [c.format(repo=REPO, out=tmp_path) for c in command]
    probe = ("import sys\nfrom bench.cli import main\ncode = main(" + repr(args) + ")\n"
             "heavy = sorted(m for m in ('ray', 'torch', 'transformers', 'trl') if m in sys.modules)\n"
             "print('HEAVY', heavy)\nsys.exit(code)\n")
    proc = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "HEAVY []" in proc.stdout, proc.stdout[-500:]


def test_the_readme_method_example_works_as_written(tmp_path, synthetic_tiny):
    """The README's "Adding a method" snippet, executed: a loss-only method registers and fits."""
    import re

    from bench import config as configs
    from bench import registry
    from bench.execution.fit_trial import TrialSpec, run_trial

    readme = (REPO / "README.md").read_text()
    section = readme[readme.index("## Adding a method"):readme.index("## Adding a task")]
    snippet = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    exec(compile(snippet, "README.md", "exec"), {"__name__": "readme_hinge"})
    try:
        assert "hinge" in registry.methods()
        _, data = synthetic_tiny
        cfg = configs.to_dict(configs.build(registry.methods()["hinge"].Config, {"epochs": 20}))
        result = run_trial(TrialSpec("hinge", cfg, 0, data.ref), tmp_path / "hinge.json")
    finally:
        registry._METHODS.pop("hinge", None)  # leave the registry as the other tests expect it
    assert result["status"] == "ok", result.get("error")
    assert result["val_pair_accuracy"] > 0.6  # the hinge loss learns the preferences, well above chance


def test_ruff_is_clean():
    proc = subprocess.run([sys.executable, "-m", "ruff", "check", str(REPO)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-3000:]
