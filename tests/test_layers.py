"""Imports flow one way: cli -> experiments -> (train, tuning, inference) -> config -> (techniques, models, data, parallel) ->
shared basics. Every import counts, including those inside functions and under TYPE_CHECKING."""
import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).parents[1] / "leantrain"
RANKS = {  # a module may import modules of its own rank or lower
    "leantrain": 7, "leantrain.__main__": 7, "leantrain.cli": 6, "leantrain.experiments": 5, "leantrain.train": 4,
    "leantrain.tuning": 4,  # run.py resolves auto settings with it; it times steps with train's meters and optimizer
    "leantrain.inference": 4,  # a trained model in use (saved files, evaluate, predict): beside train
    # Leaves of the experiments package (data in; a table, a figure or a DataFrame out): FitResult uses them.
    "leantrain.experiments.views": 1, "leantrain.experiments.tidy": 1, "leantrain.experiments.plots": 1,
    "leantrain.config": 3, "leantrain.techniques": 2, "leantrain.models": 2, "leantrain.data": 2, "leantrain.parallel": 2,
    "leantrain.tasks": 1, "leantrain.options": 1, "leantrain.registry": 1, "leantrain.errors": 0, "leantrain.fileio": 0,
    "leantrain.naming": 0, "leantrain.machine": 0,  # what this machine is: the record, tuning and caches read it
    "leantrain._torch_private": 0,
}


def _rank(module: str) -> int:
    parts = module.split(".")
    for n in range(len(parts), 0, -1):
        if ".".join(parts[:n]) in RANKS:
            return RANKS[".".join(parts[:n])]
    raise KeyError(f"{module} has no layer in tests/test_layers.py")


def _modules() -> list[tuple[str, Path]]:
    out = []
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        out.append((".".join(parts[:-1] if parts[-1] == "__init__" else parts), path))
    return out


def _imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module == "leantrain":
            found.update(f"leantrain.{a.name}" for a in node.names)  # from leantrain import data
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("leantrain"):
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("leantrain"))
    return found


@pytest.mark.parametrize("module,path", _modules(), ids=lambda v: v if isinstance(v, str) else "")
def test_no_upward_imports(module, path):
    upward = sorted(m for m in _imports(path) if _rank(m) > _rank(module))
    assert not upward, f"{module} imports {upward} from a layer above it"


def test_no_import_cycles_between_modules():
    """A cycle hides a layering mistake (the report and its plots once imported each other)."""
    modules = {name for name, path in _modules() if path.name != "__init__.py"}
    graph = {}
    for name, path in _modules():
        if path.name == "__init__.py":
            continue
        targets = set()
        for imported in _imports(path):
            targets.add(imported)
        for node in ast.walk(ast.parse(path.read_text())):  # from leantrain.x import y, where y is a module
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("leantrain"):
                targets.update(f"{node.module}.{a.name}" for a in node.names)
        graph[name] = {t for t in targets if t in modules and t != name}

    def visit(node, stack):
        if node in stack:
            return stack[stack.index(node):] + [node]
        for nxt in sorted(graph.get(node, ())):
            cycle = visit(nxt, stack + [node])
            if cycle:
                return cycle
        return None

    for start in sorted(graph):
        cycle = visit(start, [])
        assert cycle is None, " -> ".join(cycle)
