"""Keys and the program's modules: what a function reads through a module counts, as what
it names directly does; state read that way, and installed code, do not."""

from __future__ import annotations

import importlib
import re
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from dispatcher import op, run
from dispatcher._cache_key import function_digest, value_digest

MODULES = {
    "kutils.py": """
        import enum

        RATE = 1
        calls = []

        def _inner(x):
            return x * 2

        def scale(x):
            return _inner(x)

        class Level(enum.Enum):
            HIGH = 0.9
    """,
    "kpkg/__init__.py": "",
    "kpkg/sub.py": """
        def shift(x):
            return x + 1
    """,
    "kpkg/tasks.py": """
        def f(x):
            from .sub import shift
            return shift(x)
    """,
}


class Program:
    """Modules of a program in a directory of its own, written (and rewritten) by a test,
    and imported afresh for each function made from them."""

    def __init__(self, root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        self.root = root
        self.files = dict(MODULES)
        monkeypatch.syspath_prepend(str(root))
        monkeypatch.setattr(sys, "dont_write_bytecode", True)  # an edit in the same second
        self.monkeypatch = monkeypatch

    def edit(self, path: str, old: str, new: str) -> None:
        assert old in self.files[path]
        self.files[path] = self.files[path].replace(old, new)

    def function(self, source: str, *, imported: bool = True) -> Any:
        """``f`` of ``source`` (a script of the program), its modules imported afresh
        (``imported=False``: left for ``f``'s own imports to find)."""
        for path, text in self.files.items():
            (self.root / path).parent.mkdir(parents=True, exist_ok=True)
            (self.root / path).write_text(textwrap.dedent(text))
        for name in ("kutils", "kpkg", "kpkg.sub", "kpkg.tasks", "kpkg.deep", "kpkg.deep.leaf"):
            self.monkeypatch.delitem(sys.modules, name, raising=False)
        importlib.invalidate_caches()
        if imported:
            for name in ("kutils", "kpkg.sub", "kpkg.deep.leaf"):
                if (self.root / (name.replace(".", "/") + ".py")).exists():
                    importlib.import_module(name)
        namespace: dict[str, Any] = {"__name__": "__main__", "__package__": None}
        exec(compile(textwrap.dedent(source), str(self.root / "script.py"), "exec"), namespace)
        return namespace["f"]

    def digest(self, source: str, **how: bool) -> bytes:
        return function_digest(self.function(source, **how), {})


@pytest.fixture
def program(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Program:
    return Program(tmp_path, monkeypatch)


THROUGH_MODULES = """
    import kutils
    import kpkg.sub

    def f(x):
        return kpkg.sub.shift(kutils.scale(x)) * kutils.RATE
"""
IMPORTED_IN_BODY = """
    def f(x):
        import kutils as u
        from kpkg.sub import shift
        return shift(u.scale(x)) * u.RATE
"""
EDITS = [
    ("kutils.py", "return _inner(x)", "return _inner(x) + 1"),
    ("kutils.py", "return x * 2", "return x * 3"),
    ("kutils.py", "RATE = 1", "RATE = 2"),
    ("kpkg/sub.py", "x + 1", "x + 2"),
]
EDIT_NAMES = ["a helper", "what the helper calls", "a constant", "a helper in a package"]


@pytest.mark.parametrize(("path", "old", "new"), EDITS, ids=EDIT_NAMES)
@pytest.mark.parametrize("source", [THROUGH_MODULES, IMPORTED_IN_BODY], ids=["global", "body"])
def test_what_a_function_reads_through_a_module_is_part_of_its_key(
    program: Program, source: str, path: str, old: str, new: str
) -> None:
    before = program.digest(source)
    assert before == program.digest(source)
    program.edit(path, old, new)
    assert before != program.digest(source)


def test_a_module_imported_in_the_body_is_keyed_by_its_file_until_it_is_imported(
    program: Program,
) -> None:
    # Found, not imported: importing it could do what the program keeps out of this
    # process (a GPU library's set-up).
    before = program.digest(IMPORTED_IN_BODY, imported=False)
    assert "kutils" not in sys.modules
    assert before == program.digest(IMPORTED_IN_BODY, imported=False)
    # Imported since (a run in this process), its file unchanged: the key stays, so a
    # second run in this process hits what the first stored.
    assert before == program.digest(IMPORTED_IN_BODY, imported=True)
    program.edit("kutils.py", "return x * 2", "return x * 3")
    assert before != program.digest(IMPORTED_IN_BODY, imported=False)


def test_a_module_imported_in_the_body_is_keyed_by_the_code_a_task_would_run(
    program: Program,
) -> None:
    # Imported (an earlier run in this process), then its file edited without reloading
    # it: the task runs the code in memory, so its result must not be stored under the
    # key of the edited file, where a fresh process would take it for the new code's.
    f = program.function(IMPORTED_IN_BODY, imported=True)
    in_memory = function_digest(f, {})
    (program.root / "kutils.py").write_text(
        (program.root / "kutils.py").read_text().replace("return x * 2", "return x * 3")
    )
    assert function_digest(f, {}) == in_memory
    program.edit("kutils.py", "return x * 2", "return x * 3")
    assert program.digest(IMPORTED_IN_BODY, imported=False) != in_memory


def test_an_import_three_levels_deep_in_the_body_is_followed(program: Program) -> None:
    program.files["kpkg/deep/__init__.py"] = ""
    program.files["kpkg/deep/leaf.py"] = "def grow(x):\n    return x + 1\n"
    # (its package imported at the top: the submodule is not, until the task runs)
    source = "import kpkg\ndef f(x):\n    import kpkg.deep.leaf as leaf\n    return leaf.grow(x)\n"
    for imported in (False, True):
        before = program.digest(source, imported=imported)
        program.edit("kpkg/deep/leaf.py", "x + 1", "x + 2")
        assert before != program.digest(source, imported=imported)
        program.edit("kpkg/deep/leaf.py", "x + 2", "x + 1")


def test_a_relative_import_in_a_packages_function_is_followed(program: Program) -> None:
    def digest() -> bytes:
        program.function("f = None", imported=True)  # (writes the files afresh)
        return function_digest(importlib.import_module("kpkg.tasks").f, {})

    before = digest()
    program.edit("kpkg/sub.py", "x + 1", "x + 2")
    assert before != digest()


def test_state_read_through_a_module_is_left_out(program: Program) -> None:
    # A list (a registry, a memo, a counter) read through a module holds state: a run that
    # appends to it must not change the key of the next run.
    f = program.function("import kutils\ndef f(x):\n    kutils.calls.append(x)\n    return x\n")
    before = function_digest(f, {})
    sys.modules["kutils"].calls.append(1)
    assert before == function_digest(f, {})


def test_an_attribute_named_as_a_global_is_not_that_global(program: Program) -> None:
    source = "import time\nstart = {}\ndef f(span):\n    return span.start\n"
    assert program.digest(source.format(1)) == program.digest(source.format(2))


def test_a_compiled_pattern_keys_alike_whatever_patterns_were_compiled_before() -> None:
    # It pickles as re._compile(pattern, flags): the library's function counts by its
    # name, not through re's cache of the patterns the process compiled.
    before = value_digest(re.compile(r"[a-z]+"))
    re.compile(r"another pattern, compiled once \d+")
    assert before == value_digest(re.compile(r"[a-z]+"))


def test_editing_a_helper_called_through_its_module_reruns_the_node(
    program: Program, tmp_path: Path
) -> None:
    def rerun() -> Any:
        return run(op(program.function(THROUGH_MODULES))(5), executor="sync", cache=tmp_path)

    assert rerun() == 11
    program.edit("kutils.py", "return x * 2", "return x * 3")
    assert rerun() == 16


def test_an_enums_member_values_are_part_of_its_key(program: Program) -> None:
    source = "import kutils\ndef f(x):\n    return x > kutils.Level.HIGH.value\n"
    before = program.digest(source)
    program.edit("kutils.py", "HIGH = 0.9", "HIGH = 0.8")
    assert before != program.digest(source)


def test_immutable_values_read_through_a_module_are_keyed_by_value(program: Program) -> None:
    program.files["kutils.py"] += textwrap.indent(
        "\nimport datetime, pathlib\nMODE = Level.HIGH\nDATA = pathlib.Path('a')\n"
        "SINCE = datetime.date(2026, 1, 1)\n",
        " " * 8,
    )
    source = "import kutils\ndef f(x):\n    return (kutils.MODE, kutils.DATA, kutils.SINCE)\n"
    for old, new in [("HIGH = 0.9", "HIGH = 0.8"), ("'a'", "'b'"), ("1, 1)", "1, 2)")]:
        before = program.digest(source)
        program.edit("kutils.py", old, new)
        assert before != program.digest(source), old


READS = """
def a(x):  # (utils: a global module, never imported here)
    return utils.scale(x) + utils.sub.RATE

def b(xs):
    import kutils as u
    return [u.RATE * i for i in xs]

def c(x):
    import a.b.c as leaf
    return leaf.grow(x)

def d(x):
    from . import sib
    return sib.f(x) + x
"""


@pytest.mark.parametrize(
    ("name", "chains"),
    [
        ("a", {("utils", 0, ("scale",)), ("utils", 0, ("sub", "RATE"))}),
        ("b", {("kutils", 0, ("RATE",))}),  # (a paired load and store on 3.13)
        ("c", {("a", 0, ("b",)), ("a", 0, ("b", "c")), ("a", 0, ("b", "c", "grow"))}),
        ("d", {("", 1, ("sib",)), ("", 1, ("sib", "f"))}),
    ],
)
def test_the_chains_a_functions_bytecode_loads_from_modules(
    name: str, chains: set[tuple[str, int, tuple[str, ...]]]
) -> None:
    from dispatcher._cache_reads import code_reads

    namespace: dict[str, Any] = {}
    exec(compile(READS, "reads.py", "exec"), {"__name__": "reads"}, namespace)
    found = code_reads(namespace[name].__code__).chains
    assert {(root.name, root.level, attributes) for root, attributes in found} == chains
