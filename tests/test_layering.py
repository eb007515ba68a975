"""The package's structure: every module in a layer, layers import downwards only, no import cycles, Ray in one place.

Reads every module's imports with :mod:`ast` (at the top level and inside functions, as
fedjax and timm test their structure) and checks:

* every module (and package) of ``sfp_ray`` belongs to one of the layers of :data:`LAYERS`;
* a module imports only modules of its own layer or of layers below it;
* no import cycle between modules;
* the lower layers (foundation and domain: configuration, models, data, costs and records, devices, ...)
  never import Ray, and Ray is imported only by the Ray executor package.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parent.parent / "sfp_ray"

#: The layers, bottom up, each with the top-level modules and packages of ``sfp_ray`` in it ("": the package root).
#: A module may import its own layer and the layers below; docs/architecture.md draws them.
LAYERS: list[tuple[str, frozenset[str]]] = [
    # the package root ("") imports only ``lazy`` when loaded: it re-exports the public names on first use
    ("foundation", frozenset({"", "errors", "lazy", "records", "tensors", "packing", "stats", "pruning",
                              "aggregation"})),
    ("domain", frozenset({"config", "models", "data", "costs", "devices", "compute", "faults", "availability",
                          "capacity", "checkpoints"})),
    ("roles", frozenset({"roles", "pretrain", "calibration"})),
    ("methods", frozenset({"methods", "sizing", "placement"})),
    ("executors", frozenset({"executors"})),
    ("runs", frozenset({"preparation", "orchestrator", "reports", "projection", "preflight"})),
    ("front ends", frozenset({"api", "sweeps", "cli", "docgen", "__main__"})),
]
LEVEL = {name: i for i, (_, names) in enumerate(LAYERS) for name in names}
#: The lower layers: pure computation that never imports Ray.
LOWER = LAYERS[0][1] | LAYERS[1][1]
#: Where Ray may be imported.
RAY_ALLOWED = ("sfp_ray.executors.ray",)


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
    assert "sfp_ray.records" in GRAPH["sfp_ray.costs.ledger"]  # an edge the parser must see


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


def test_every_module_is_in_a_layer():
    """A new module must be placed: its top-level name in one layer of :data:`LAYERS`, and in only one."""
    placed = [n for _, names in LAYERS for n in names]
    assert len(placed) == len(set(placed)), "a name is in two layers"
    unplaced = sorted(m for m in MODULES if _top(m) not in LEVEL)
    assert not unplaced, f"modules in no layer of tests/test_layering.py LAYERS: {unplaced}"


@pytest.mark.parametrize("module", sorted(MODULES))
def test_a_module_imports_only_its_layer_and_below(module):
    level = LEVEL.get(_top(module))
    assert level is not None, f"{module} is in no layer (see test_every_module_is_in_a_layer)"
    upward = sorted(i for i in GRAPH[module] if LEVEL.get(_top(i), level) > level)
    assert not upward, f"{module} ({LAYERS[level][0]}) imports from layers above: {upward}"


@pytest.mark.parametrize("module", sorted(m for m in MODULES if _top(m) in LOWER))
def test_lower_layers_never_import_ray(module):
    imports = _imports(MODULES[module])
    assert not any(i == "ray" or i.startswith("ray.") for i in imports), f"{module} imports Ray"


def test_ray_is_imported_only_by_the_ray_package():
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
        if module.startswith(("sfp_ray.methods", "sfp_ray.cli.")) or module == "sfp_ray.cli":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Compare):
                consts = [c.value for c in ast.walk(node) if isinstance(c, ast.Constant)]
                if any(c in names for c in consts):
                    offenders.append(f"{module}:{node.lineno}")
    assert not offenders, offenders
