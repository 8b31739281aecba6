"""The repository keeps its promises to a newcomer: README's commands and CI agree, and the
code stays in pieces a reader can hold, with no import cycle."""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def readme_commands() -> list[str]:
    readme = (ROOT / "README.md").read_text()
    return re.findall(r"```sh\n(.+?)\n```", readme)


@pytest.mark.skipif(not (ROOT / "README.md").exists(), reason="not run from a clone")
def test_readme_opens_with_the_two_commands() -> None:
    commands = readme_commands()
    assert len(commands) >= 2
    example, tests = commands[:2]
    script = re.search(r"(examples/\S+\.py)", example)
    assert script is not None
    assert (ROOT / script.group(1)).exists()
    assert "tox" in tests


@pytest.mark.skipif(not (ROOT / ".ci" / "run").exists(), reason="not run from a clone")
def test_ci_runs_exactly_the_readme_test_command() -> None:
    ci = (ROOT / ".ci" / "run").read_text()
    assert readme_commands()[1] in ci.splitlines()


# -- structure ---------------------------------------------------------------------------
#
# Every distribution's modules form no import cycle, and no module, class or function
# grows past the size a reader can hold. An import counts wherever it is written, at the
# top of a module or inside a function: an import deferred into a function (to keep
# start-up fast, or an optional dependency optional) changes when a module is loaded, not
# which module needs which, and the cycle this check guards against was made of exactly
# such imports. Only imports under ``if TYPE_CHECKING:`` do not count: they exist for the
# type checker and never run.

DISTRIBUTIONS = {
    "dispatcher-core": "dispatcher",
    "dispatcher-mp": "dispatcher_mp",
    "dispatcher-mpi": "dispatcher_mpi",
    "dispatcher-dask": "dispatcher_dask",
}

MAX_MODULE_LINES = 600
MAX_CLASS_LINES = 400
MAX_FUNCTION_LINES = 80

# The one function allowed past the function limit: the scheduler's hot loop, which calls
# and settles in-caller tasks in one flat loop because a call per task saved is measured.
HOT_LOOP = "dispatcher._hot_loop.call_ready_in_caller"

# Over a limit today and being split. An entry that fits its limit again fails the test
# (so this list only shrinks): remove it when its split lands, until the list is empty.
OVERSIZED: frozenset[str] = frozenset()

# Modules other modules build on: they import nothing of their distribution.
LEAVES = (
    "dispatcher._errors",
    "dispatcher._hooks",
    "dispatcher._hosts",
    "dispatcher._report_assets",
    "dispatcher._report_model",
    "dispatcher._states",
    "dispatcher._template",
    "dispatcher._version",
)

# Observers see a run only through the hooks: nothing of the executors or the scheduler.
OBSERVERS = ("dispatcher._logging", "dispatcher._progress", "dispatcher._report")
OBSERVER_IMPORTS = {
    "dispatcher._errors",
    "dispatcher._hooks",
    "dispatcher._hosts",
    "dispatcher._report_assets",
    "dispatcher._report_html",
    "dispatcher._report_model",
    "dispatcher._states",
}


def source_files(distribution: str) -> dict[str, Path]:
    """The distribution's modules by dotted name (a package by its own name)."""
    src = ROOT / "packages" / distribution / "src"
    files = {}
    for path in sorted((src / DISTRIBUTIONS[distribution]).rglob("*.py")):
        parts = list(path.relative_to(src).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        files[".".join(parts)] = path
    return files


def runtime_imports(tree: ast.Module) -> Iterator[ast.Import | ast.ImportFrom]:
    """Every import statement that can run: anywhere but under ``if TYPE_CHECKING:``."""
    pending: list[ast.AST] = [tree]
    while pending:
        node = pending.pop()
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            pending.extend(node.orelse)
            continue
        if isinstance(node, ast.Import | ast.ImportFrom):
            yield node
        pending.extend(ast.iter_child_nodes(node))


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def import_graph(distribution: str) -> dict[str, set[str]]:
    """Each module's imports of other modules of the same distribution."""
    files = source_files(distribution)
    graph: dict[str, set[str]] = {}
    for name, path in files.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        needed: set[str] = set()
        for node in runtime_imports(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                needed.update(alias.name for alias in node.names)
                continue
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                module = ".".join([*base, node.module] if node.module else base)
            else:
                module = node.module or ""
            # ``from package import module`` needs the module; ``from module import name``
            # needs the module the name is in.
            submodules = {f"{module}.{alias.name}" for alias in node.names} & files.keys()
            needed |= submodules
            if len(submodules) < len(node.names):
                needed.add(module)
        graph[name] = {other for other in needed if other in files and other != name}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(module: str) -> None:
        index[module] = low[module] = len(index)
        stack.append(module)
        for other in sorted(graph[module]):
            if other not in index:
                visit(other)
                low[module] = min(low[module], low[other])
            elif other in stack:
                low[module] = min(low[module], index[other])
        if low[module] == index[module]:
            component = []
            while True:
                other = stack.pop()
                component.append(other)
                if other == module:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for module in sorted(graph):
        if module not in index:
            visit(module)
    return found


@pytest.mark.parametrize("distribution", sorted(DISTRIBUTIONS))
def test_no_import_cycle(distribution: str) -> None:
    graph = import_graph(distribution)
    found = cycles(graph)
    described = [
        "; ".join(f"{m} -> {', '.join(sorted(graph[m] & set(c)))}" for m in c) for c in found
    ]
    assert not found, "modules that import each other: " + " | ".join(described)


def test_the_cycle_check_sees_imports_inside_functions() -> None:
    tree = ast.parse(
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n    from . import typed_only\n"
        "def f():\n    from .lazy import thing\n"
    )
    modules = [node.module for node in runtime_imports(tree) if isinstance(node, ast.ImportFrom)]
    assert sorted(modules) == ["lazy", "typing"]
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_leaves_and_observers_import_what_their_layer_allows() -> None:
    graph = import_graph("dispatcher-core")
    for leaf in LEAVES:
        assert graph[leaf] == set(), f"{leaf} is a leaf but imports {sorted(graph[leaf])}"
    for observer in OBSERVERS:
        extra = graph[observer] - OBSERVER_IMPORTS
        assert not extra, f"the observer module {observer} imports {sorted(extra)}"


def measured() -> Iterator[tuple[str, str, int]]:
    """Every module, class and function of every distribution: (qualified name, kind,
    lines). A function's lines run from ``def`` to its last line, docstring included."""
    for distribution in DISTRIBUTIONS:
        for name, path in source_files(distribution).items():
            text = path.read_text()
            yield name, "module", len(text.splitlines())
            pending: list[tuple[ast.AST, str]] = [(ast.parse(text, str(path)), name)]
            while pending:
                parent, prefix = pending.pop()
                for node in ast.iter_child_nodes(parent):
                    if isinstance(node, ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
                        qualified = f"{prefix}.{node.name}"
                        kind = "class" if isinstance(node, ast.ClassDef) else "function"
                        yield qualified, kind, (node.end_lineno or node.lineno) - node.lineno + 1
                        pending.append((node, qualified))
                    else:
                        pending.append((node, prefix))


LIMITS = {"module": MAX_MODULE_LINES, "class": MAX_CLASS_LINES, "function": MAX_FUNCTION_LINES}


def test_no_module_class_or_function_outgrows_its_limit() -> None:
    found = {
        name: f"{kind} of {lines} lines (limit {LIMITS[kind]})"
        for name, kind, lines in measured()
        if lines > LIMITS[kind] and name != HOT_LOOP
    }
    new = {name: what for name, what in found.items() if name not in OVERSIZED}
    assert not new, "too big: " + "; ".join(f"{n}: {w}" for n, w in sorted(new.items()))
    fit = sorted(OVERSIZED - found.keys())
    assert not fit, f"within the limits now, remove from OVERSIZED: {', '.join(fit)}"


def test_the_hot_loop_allowance_names_a_function_that_exists() -> None:
    functions = {name for name, kind, _ in measured() if kind == "function"}
    assert HOT_LOOP in functions, f"{HOT_LOOP} is gone: name the hot loop where it lives now"


@pytest.mark.skipif(not (ROOT / "ARCHITECTURE.md").exists(), reason="not run from a clone")
def test_the_architecture_page_names_every_module() -> None:
    page = (ROOT / "ARCHITECTURE.md").read_text()
    unnamed = [
        str(path.relative_to(ROOT))
        for path in sorted(ROOT.glob("packages/*/src/*/*.py"))
        if path.stem != "__init__" and f"`{path.stem}" not in page and f" {path.stem}`" not in page
    ]
    assert not unnamed, "ARCHITECTURE.md says nothing of: " + ", ".join(unnamed)
