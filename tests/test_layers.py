"""Imports flow one way: cli -> experiments -> a run's orchestration (train/run.py, fit.py, worker.py) -> tuning ->
the training core (the rest of train/) and inference -> config -> (techniques, models, data, parallel) -> shared
basics. Every import counts, including those inside functions and under TYPE_CHECKING."""
import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).parents[1] / "leantrain"
# One run start to finish: its phases, fit and the launched workers. They call tuning; the rest of train/ must not.
ORCHESTRATION = ("leantrain.train.run", "leantrain.train.fit", "leantrain.train.worker")
# Old import paths kept while a caller moves, each nothing but a re-export of its new home; gone when the caller is.
RE_EXPORTS: dict[str, str] = {}
RANKS = {  # a module may import modules of its own rank or lower
    "leantrain": 9, "leantrain.__main__": 9, "leantrain.cli": 8, "leantrain.experiments": 7,
    "leantrain.advice": 7,  # leantrain advise: measures candidate recipes as experiments do, beside them
    **dict.fromkeys([*ORCHESTRATION, *RE_EXPORTS], 6),
    "leantrain.tuning": 5,  # auto settings measured with the core's meters, memory estimate and optimizers
    "leantrain.train": 4,  # the training core: loop, state, checkpoints, guards, metrics, memory, FitResult
    "leantrain.inference": 4,  # a trained model in use (saved files, evaluate, predict): beside train
    "leantrain.config": 3, "leantrain.techniques": 2, "leantrain.models": 2, "leantrain.data": 2, "leantrain.parallel": 2,
    "leantrain.tasks": 1, "leantrain.options": 1, "leantrain.registry": 1, "leantrain.errors": 0, "leantrain.fileio": 0,
    "leantrain.naming": 0, "leantrain.machine": 0,  # what this machine is: the record, tuning and caches read it
    "leantrain._torch_private": 0, "leantrain.interrupts": 0,  # SIGTERM and Ctrl-C: installed before torch loads
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


def _layer(module: str) -> str:
    """The entry of RANKS a module falls under (its longest prefix there: a package, or one of its parts); a
    top-level module RANKS does not name is its own."""
    parts = module.split(".")
    found = next(".".join(parts[:n]) for n in range(len(parts), 0, -1) if ".".join(parts[:n]) in RANKS)
    return ".".join(parts[:2]) if found == "leantrain" else found


def _only_re_exports(path: Path, target: str) -> bool:
    """The file holds a docstring, imports from ``target`` and ``__all__``, nothing else."""
    for node in ast.parse(path.read_text()).body:
        docstring = isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant)
        imported = isinstance(node, ast.ImportFrom) and node.module == target
        listed = isinstance(node, ast.Assign) and [getattr(t, "id", None) for t in node.targets] == ["__all__"]
        if not (docstring or imported or listed):
            return False
    return True


def _train_modules() -> list[tuple[str, Path]]:
    return [(name, path) for name, path in _modules() if name.startswith("leantrain.train.")]


def test_train_imports_nothing_from_experiments():
    """FitResult is data: its views (a DataFrame, the report's chart) are experiments/views.py's, handed to it."""
    found = {name: sorted(m for m in _imports(path) if m.startswith("leantrain.experiments"))
             for name, path in _train_modules()}
    assert not {name: found for name, found in found.items() if found}


def test_only_a_runs_orchestration_imports_tuning():
    """tuning sits between the training core and the orchestration: the core (loop, state, metrics, memory,
    optim, record, ...) never imports it, or the two packages would import each other."""
    found = {name: sorted(m for m in _imports(path) if m.startswith("leantrain.tuning"))
             for name, path in _train_modules() if name not in ORCHESTRATION and name not in RE_EXPORTS}
    assert not {name: found for name, found in found.items() if found}


@pytest.mark.parametrize("old, new", sorted(RE_EXPORTS.items()))
def test_an_old_import_path_only_re_exports_its_new_home(old, new):
    path = dict(_modules())[old]
    assert _only_re_exports(path, new), f"{old} must hold nothing but a re-export of {new}"


def test_no_import_cycles_between_layers():
    """Between packages (the training core and a run's orchestration apart): a loop between two packages of one
    rank, or one through a package's __init__, hides from the module-level checks above."""
    graph: dict[str, set[str]] = {}
    for name, path in _modules():
        graph.setdefault(_layer(name), set()).update(_layer(m) for m in _imports(path) if _layer(m) != _layer(name))
    done: set[str] = set()

    def visit(node: str, stack: list[str]) -> list[str] | None:
        if node in stack:
            return stack[stack.index(node):] + [node]
        if node in done:
            return None
        for nxt in sorted(graph.get(node, ())):
            cycle = visit(nxt, stack + [node])
            if cycle:
                return cycle
        done.add(node)
        return None

    for start in sorted(graph):
        cycle = visit(start, [])
        assert cycle is None, " -> ".join(cycle)


def test_no_function_is_over_80_lines():
    """A function longer than a screen does several jobs (issue 24): split it before it lands."""
    long = []
    for name, path in _modules():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno - node.lineno + 1 > 80:
                long.append(f"{name}.{node.name}: {node.end_lineno - node.lineno + 1} lines")
    assert not long, long
