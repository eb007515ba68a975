"""The package's structure: layers import downwards only, no import cycles, Ray in one place.

Reads every module's imports with :mod:`ast` (at the top level and inside functions, as
fedjax and timm test their structure) and checks:

* no import cycle between modules;
* the lower layer (configuration, models, data, pruning, aggregation, costs and records,
  devices, statistics, tensors, errors) imports nothing above it and never imports Ray;
* Ray is imported only by the Ray executor package and the CLI.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parent.parent / "sfp_ray"

#: Modules (or packages) of the lower layer: pure computation, no Ray, nothing above them.
LOWER = {"errors", "lazy", "config", "models", "data", "pruning", "aggregation", "costs", "records", "devices", "stats",
         "tensors", "compute"}
#: Where Ray may be imported.
RAY_ALLOWED = ("sfp_ray.executors.ray", "sfp_ray.cli")


def _module_name(path: Path) -> str:
    rel = path.relative_to(PKG.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imports(path: Path) -> set[str]:
    """Absolute names of everything a module imports (relative imports resolved), anywhere in it."""
    tree = ast.parse(path.read_text(), filename=str(path))
    me = _module_name(path)
    package = me if path.name == "__init__.py" else me.rpartition(".")[0]
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1] + ([base] if base else []))
            out.add(base)
            out.update(f"{base}.{a.name}" for a in node.names)
    return out


MODULES = {_module_name(p): p for p in sorted(PKG.rglob("*.py"))}
GRAPH = {m: {i for i in _imports(p) if i in MODULES and i != m} for m, p in MODULES.items()}


def _top(module: str) -> str:
    """``sfp_ray.data.sources`` -> ``data``; ``sfp_ray`` -> ``""``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def test_the_package_is_read():
    assert {"sfp_ray.config", "sfp_ray.orchestrator", "sfp_ray.executors.ray.actors", "sfp_ray.cli"} <= set(MODULES)
    assert "sfp_ray.records" in GRAPH["sfp_ray.costs"]  # an edge the parser must see


def test_no_import_cycles():
    """Depth-first search for a back edge; the message names one cycle."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> None:
        state[m] = 1
        stack.append(m)
        for n in sorted(GRAPH[m]):
            if _top(n) == "":
                continue  # the package root re-exports names lazily (PEP 562), it imports nothing at load
            if state.get(n) == 1:
                cycle = stack[stack.index(n):] + [n]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if n not in state:
                visit(n)
        stack.pop()
        state[m] = 2

    for m in sorted(GRAPH):
        if m not in state:
            visit(m)


@pytest.mark.parametrize("module", sorted(m for m in MODULES if _top(m) in LOWER))
def test_lower_layer_imports_nothing_above_it_and_never_ray(module):
    imports = _imports(MODULES[module])
    assert not any(i == "ray" or i.startswith("ray.") for i in imports), f"{module} imports Ray"
    upper = sorted(i for i in GRAPH[module] if _top(i) not in LOWER)
    assert not upper, f"{module} (lower layer) imports {upper}"


def test_ray_is_imported_only_by_the_ray_package_and_the_cli():
    users = sorted(m for m, p in MODULES.items() if any(i == "ray" or i.startswith("ray.") for i in _imports(p)))
    assert users and all(m.startswith(RAY_ALLOWED) for m in users), users


def test_the_executor_interface_is_a_few_verbs():
    """start, run clients, aggregate (or both as clients finish), evaluate, resources, close: nothing
    method-specific.
    """
    import inspect

    from sfp_ray.executors.base import Executor

    public = sorted(n for n, v in vars(Executor).items() if not n.startswith("_") and inspect.isfunction(v))
    assert public == ["aggregate", "close", "evaluate", "resources", "run_and_aggregate", "run_clients", "start"]


def test_nothing_outside_a_method_file_tests_a_method_name():
    """Method names appear only in the methods package (and the CLI's default list)."""
    from sfp_ray.methods import list_methods

    names = set(list_methods())
    offenders = []
    for module, path in MODULES.items():
        if module.startswith("sfp_ray.methods") or module == "sfp_ray.cli":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Compare):
                consts = [c.value for c in ast.walk(node) if isinstance(c, ast.Constant)]
                if any(c in names for c in consts):
                    offenders.append(f"{module}:{node.lineno}")
    assert not offenders, offenders
