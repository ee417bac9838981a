"""Guard rails for the layout: every module imports alone, the layers point downward
(catalog <- profiler <- runners <- planner) and no import cycle exists among ftplan's modules,
counting imports inside functions (imports under ``if TYPE_CHECKING:`` do not run, so they do
not count). Read with ``ast``; nothing is imported to build the graph.
"""

from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
import tomllib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LAYERS = ("catalog", "profiler", "runners", "planner")  # each may import only those before it


def first_party_modules(root: Path, packages: tuple[str, ...] = LAYERS) -> dict[str, Path]:
    """Dotted module name -> file, for every ``.py`` file under the given packages."""
    modules: dict[str, Path] = {}
    for package in packages:
        for path in sorted((root / package).rglob("*.py")):
            parts = list(path.relative_to(root).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            modules[".".join(parts)] = path
    return modules


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def import_graph(modules: dict[str, Path]) -> dict[str, set[str]]:
    """Module -> the first-party modules it imports, anywhere in its body (functions included),
    except under ``if TYPE_CHECKING:``. ``from a import b`` counts ``a.b`` when it is a module,
    else ``a``."""

    def owner(name: str) -> str | None:
        while name and name not in modules:
            name = name.rpartition(".")[0]
        return name or None

    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        found: set[str] = set()

        def visit(node: ast.AST, package: str = package, found: set[str] = found) -> None:
            for child in ast.iter_child_nodes(node):
                if isinstance(child, ast.If) and _is_type_checking(child):
                    for stmt in child.orelse:
                        visit(ast.Module(body=[stmt], type_ignores=[]))
                    continue
                if isinstance(child, ast.Import):
                    found.update(filter(None, (owner(a.name) for a in child.names)))
                elif isinstance(child, ast.ImportFrom):
                    base = child.module or ""
                    if child.level:
                        parts = package.split(".")[: len(package.split(".")) - child.level + 1]
                        base = ".".join([*parts, *([child.module] if child.module else [])])
                    for alias in child.names:
                        target = f"{base}.{alias.name}"
                        hit = target if target in modules else owner(base)
                        if hit:
                            found.add(hit)
                visit(child)

        visit(ast.parse(path.read_text(encoding="utf-8"), filename=str(path)))
        found.discard(name)
        graph[name] = found
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []

    def connect(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                connect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            connect(v)
    return out


def upward_imports(graph: dict[str, set[str]]) -> list[str]:
    """Imports that point up the layers (e.g. profiler -> planner)."""
    rank = {package: i for i, package in enumerate(LAYERS)}
    return sorted(
        f"{module} -> {target}"
        for module, targets in graph.items()
        for target in targets
        if rank[target.split(".")[0]] > rank[module.split(".")[0]]
    )


def test_the_layers_point_downward() -> None:
    graph = import_graph(first_party_modules(ROOT))
    assert upward_imports(graph) == []


def test_no_import_cycle_among_first_party_modules() -> None:
    graph = import_graph(first_party_modules(ROOT))
    assert cycles(graph) == []


def test_the_checker_sees_imports_in_functions_and_skips_type_checking(tmp_path: Path) -> None:
    pkg = tmp_path / "planner"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text(
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n    from planner.c import C\n"
        "def f():\n    from planner import b\n    return b\n"
    )
    (pkg / "b.py").write_text("from .a import f\n")
    (pkg / "c.py").write_text("import planner.a\n")
    (tmp_path / "catalog").mkdir()
    (tmp_path / "catalog" / "__init__.py").write_text("def g():\n    import planner.c\n")
    graph = import_graph(first_party_modules(tmp_path, ("catalog", "planner")))
    assert graph["planner.a"] == {"planner.b"}  # the TYPE_CHECKING import does not count
    assert graph["planner.b"] == {"planner.a"}  # relative import
    assert cycles(graph) == [["planner.a", "planner.b"]]
    assert upward_imports(graph) == ["catalog -> planner.c"]


def _import_alone(module: str) -> str | None:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [sys.executable, "-c", f"import {module}"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
        timeout=300,
    )
    if done.returncode == 0:
        return None
    last = (done.stderr.strip().splitlines() or ["(no output)"])[-1]
    return f"{module}: {last}"


@pytest.mark.slow
def test_every_module_imports_alone() -> None:
    """One fresh interpreter per module, so import order cannot hide a cycle or missing import."""
    modules = sorted(first_party_modules(ROOT))
    assert "planner.cli" in modules and "profiler.estimator" in modules
    with ThreadPoolExecutor(max_workers=max(2, os.cpu_count() or 2)) as pool:
        failures = [f for f in pool.map(_import_alone, modules) if f]
    assert failures == []


# --- declared dependencies match the imports ----------------------------------------------

# Import name -> distribution name, where they differ.
_DISTRIBUTIONS = {
    "sky": "skypilot",
    "yaml": "pyyaml",
    "botocore": "boto3",
    "huggingface_hub": "huggingface-hub",
}
_TORCH_STACK = {"torch", "transformers", "peft", "bitsandbytes", "accelerate", "deepspeed"}


def _requirement_name(requirement: str) -> str:
    return re.split(r"[\s<>=!~;\[]", requirement, maxsplit=1)[0].lower()


def _declared() -> tuple[set[str], dict[str, set[str]]]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    core = {_requirement_name(r) for r in project["dependencies"]}
    extras = {
        name: {_requirement_name(r) for r in reqs}
        for name, reqs in project["optional-dependencies"].items()
    }
    return core, extras


def _third_party_imports() -> dict[str, set[str]]:
    """Distribution -> first-party modules importing it (anywhere, functions included)."""
    modules = first_party_modules(ROOT)
    out: dict[str, set[str]] = {}
    for name, path in modules.items():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                tops = [a.name.split(".")[0] for a in node.names]
            elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
                tops = [node.module.split(".")[0]]
            else:
                continue
            for top in tops:
                if top in sys.stdlib_module_names or top in LAYERS or top == "__future__":
                    continue
                out.setdefault(_DISTRIBUTIONS.get(top, top), set()).add(name)
    return out


def test_the_core_dependencies_hold_no_torch_stack() -> None:
    core, extras = _declared()
    assert not core & _TORCH_STACK
    assert {"torch", "transformers", "peft", "bitsandbytes", "accelerate"} <= extras["train"]
    assert "ftplan" in extras["dev"]  # dev pulls in the training stack for the tests


def test_every_import_is_declared_and_every_core_dependency_is_imported() -> None:
    core, extras = _declared()
    declared = core.union(*extras.values())
    imported = _third_party_imports()
    assert {d: sorted(m) for d, m in imported.items() if d not in declared} == {}
    assert sorted(core - set(imported)) == []
