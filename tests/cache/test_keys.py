"""Keys: what changes a function's or a node's key, and what does not."""

from __future__ import annotations

import logging
import textwrap
import threading
from typing import Any

import counters
import pytest

from dispatcher import DataNode, op, run
from dispatcher._cache_key import Uncacheable, function_digest, value_digest
from dispatcher._cache_plan import _keys
from dispatcher._graph import DispatchGraph


def compiled(source: str, name: str = "f", first_line: int = 1) -> Any:
    """The function ``name`` defined by ``source``, as if it began at ``first_line``."""
    namespace: dict[str, Any] = {"__name__": "keys_module"}
    code = compile("\n" * (first_line - 1) + textwrap.dedent(source), "keys_module.py", "exec")
    exec(code, namespace)
    return namespace[name]


def digest(func: Any) -> bytes:
    return function_digest(func, {})


BASE = """
def f(x, k=2):
    def inner(y):
        return y + 1
    return inner(x) * k
"""


def test_comments_blank_lines_and_moving_a_function_keep_its_key() -> None:
    moved = compiled(BASE, first_line=40)
    commented = compiled(BASE.replace("def f(x, k=2):\n", "def f(x, k=2):\n    # note\n\n"))
    assert digest(compiled(BASE)) == digest(moved) == digest(commented)


@pytest.mark.parametrize(
    ("old", "new"),
    [
        ("* k", "+ k"),  # the body
        ("y + 1", "y + 2"),  # a nested function's constant
        ("k=2", "k=3"),  # a default
        ("return inner(x)", "return inner(-x)"),
    ],
)
def test_editing_code_changes_the_key(old: str, new: str) -> None:
    assert digest(compiled(BASE)) != digest(compiled(BASE.replace(old, new)))


def test_closure_values_are_part_of_the_key() -> None:
    def make(k: Any) -> Any:
        def scale(x: int) -> Any:
            return x * k

        return scale

    assert digest(make(2)) == digest(make(2))
    assert digest(make(2)) != digest(make(3))
    assert digest(make([1, 2])) != digest(make([1, 3]))


def test_self_referring_closure_is_hashed() -> None:
    def outer() -> Any:
        def fact(n: int) -> int:
            return 1 if n <= 1 else n * fact(n - 1)

        return fact

    assert digest(outer()) == digest(outer())


def test_values_hash_by_content() -> None:
    assert value_digest([1, "a", (2.5, None)]) == value_digest([1, "a", (2.5, None)])
    assert value_digest([1]) != value_digest((1,))
    assert value_digest(1) != value_digest(True) != value_digest(1.0)
    assert value_digest({"a", "b", "c"}) == value_digest({"c", "b", "a"})
    assert value_digest({"a": 1, "b": 2}) != value_digest({"a": 1, "b": 3})


def test_arrays_hash_by_their_bytes_dtype_and_shape() -> None:
    np = pytest.importorskip("numpy")
    a = np.arange(12, dtype=np.float64)
    assert value_digest(a) == value_digest(a.copy())
    assert value_digest(a) != value_digest(a.astype(np.float32))
    assert value_digest(a) != value_digest(a.reshape(3, 4))
    assert value_digest(a.reshape(3, 4).T) == value_digest(np.ascontiguousarray(a.reshape(3, 4).T))
    b = a.copy()
    b[5] = -1
    assert value_digest(a) != value_digest(b)
    with pytest.raises(Uncacheable):
        value_digest(np.array([object()], dtype=object))


def test_dates_and_durations_hash_by_value() -> None:
    # They have no buffer format: a date array was uncacheable as an argument, and left
    # out of the key as a global (an edit to it was a wrong hit).
    np = pytest.importorskip("numpy")
    dates = np.array(["2020-01-01", "2020-12-25"], dtype="datetime64[D]")
    assert value_digest(dates) == value_digest(dates.copy())
    assert value_digest(dates) != value_digest(dates + np.timedelta64(1, "D"))
    assert value_digest(dates - dates[0]) != value_digest(dates - dates[1])


def first(lock: Any) -> int:
    counters.calls.append("first")
    return 1


def second(x: int) -> int:
    counters.calls.append("second")
    return x + 1


def test_a_value_that_cannot_be_hashed_makes_the_node_and_its_descendants_uncacheable(
    tmp_path: Any, caplog: pytest.LogCaptureFixture
) -> None:
    counters.calls.clear()
    lock = threading.Lock()
    with caplog.at_level(logging.DEBUG, logger="dispatcher.cache"):
        for _ in range(2):
            assert run(op(second)(op(first)(lock)), executor="sync", cache=tmp_path) == 2
    assert counters.calls == ["first", "second"] * 2
    messages = [r.getMessage() for r in caplog.records]
    assert any("'first' is not cached" in m and "pickle" in m for m in messages)
    assert any("'second' is not cached: its input 'first' is not" in m for m in messages)
    # A hashable argument in the same place is cached.
    counters.calls.clear()
    for _ in range(2):
        assert run(op(second)(op(first)("no lock")), executor="sync", cache=tmp_path) == 2
    assert counters.calls == ["first", "second"]


def test_data_and_index_nodes_have_keys_from_their_values() -> None:
    a, b = DataNode([1, 2]), DataNode([1, 2])
    g = DispatchGraph([a[0], b[0], DataNode([1, 3])[0]])
    keys = _keys(g, {})
    by_label = {}
    for node, key in zip(g._nodes, keys, strict=True):
        by_label.setdefault(node.label, set()).add(key)
    assert len(by_label["DataNode([1, 2])"]) == 1
    assert None not in keys
    assert len(set(keys)) == 4  # [1, 2] and [1, 3], and the two distinct index nodes


GLOBALS = """
import os
import threading

SCALE = 2
LOCK = threading.Lock()

def helper(x):
    return x + 1

def f(x):
    with LOCK:
        return helper(x) * SCALE + len(os.sep)

def ping(n):
    return 0 if n == 0 else pong(n - 1)

def pong(n):
    return ping(n)
"""


@pytest.mark.parametrize(
    ("old", "new"),
    [("SCALE = 2", "SCALE = 3"), ("return x + 1", "return x + 2")],
    ids=["a constant it reads", "a helper it calls"],
)
def test_globals_a_function_reads_are_part_of_its_key(old: str, new: str) -> None:
    assert digest(compiled(GLOBALS)) != digest(compiled(GLOBALS.replace(old, new)))


def test_globals_it_does_not_read_and_unhashable_ones_are_left_out(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.DEBUG, logger="dispatcher.cache"):
        base = digest(compiled(GLOBALS))
    assert base == digest(compiled(GLOBALS + "\nUNUSED = 1\n"))
    assert any("global 'LOCK'" in r.getMessage() for r in caplog.records)


def test_mutually_recursive_globals_are_hashed() -> None:
    assert digest(compiled(GLOBALS, "ping")) == digest(compiled(GLOBALS, "ping"))
    changed = GLOBALS.replace("return ping(n)", "return ping(n) + 1")
    assert digest(compiled(GLOBALS, "ping")) != digest(compiled(changed, "ping"))


def test_a_function_hashed_inside_another_ones_recursion_keeps_what_it_calls() -> None:
    # pong is first met inside ping's hash, where ping stands as a placeholder: the digest
    # pong gets there must not serve as pong's own, or editing ping would leave pong's key.
    def keys(source: str) -> tuple[bytes, bytes]:
        namespace: dict[str, Any] = {"__name__": "keys_module"}
        exec(compile(textwrap.dedent(source), "keys_module.py", "exec"), namespace)
        memo: dict[int, Any] = {}  # one run's memo, shared by its nodes
        return (
            function_digest(namespace["ping"], memo),
            function_digest(namespace["pong"], memo),
        )

    edited = GLOBALS.replace("return 0 if n == 0", "return 1 if n == 0")
    assert keys(GLOBALS)[1] != keys(edited)[1]
    assert keys(GLOBALS) == keys(GLOBALS)


def test_editing_a_mutually_recursive_function_reruns_its_partner(tmp_path: Any) -> None:
    def nodes(source: str) -> list[Any]:
        namespace: dict[str, Any] = {"__name__": "keys_module"}
        exec(compile(textwrap.dedent(source), "keys_module.py", "exec"), namespace)
        return [op(namespace["ping"])(3), op(namespace["pong"])(3)]

    assert run(nodes(GLOBALS), executor="sync", cache=tmp_path) == [0, 0]
    edited = GLOBALS.replace("return 0 if n == 0", "return 1 if n == 0")
    assert run(nodes(edited), executor="sync", cache=tmp_path) == [1, 1]


CLASSES = """
from dataclasses import dataclass

def transform(x):
    return x + 1

class Base:
    def offset(self):
        return 0

@dataclass
class Config:
    k: int
    def scale(self, x):
        return x * self.k

class Derived(Base):
    BIAS = 5
    def apply(self, x):
        return x + self.offset() + self.BIAS

class Holder:
    def __init__(self, f):
        self.f = f
"""


def _classes(source: str) -> dict[str, Any]:
    import sys
    import types

    module = types.ModuleType("keys_classes")
    sys.modules["keys_classes"] = module  # instances pickle by reference to their class
    exec(compile(textwrap.dedent(source), "keys_classes.py", "exec"), module.__dict__)
    return module.__dict__


@pytest.mark.parametrize(
    ("old", "new", "value"),
    [
        ("x * self.k", "x * self.k + 1", lambda ns: ns["Config"](2)),
        ("return 0", "return 1", lambda ns: ns["Derived"]()),
        ("BIAS = 5", "BIAS = 6", lambda ns: ns["Derived"]()),
        ("return x + 1", "return x + 2", lambda ns: ns["Holder"](ns["transform"])),
        ("return 0", "return 1", lambda ns: ns["Derived"]),
    ],
    ids=["its method", "a base class's method", "a class attribute", "a function", "a class"],
)
def test_an_object_argument_is_keyed_by_the_code_of_what_it_holds(
    old: str, new: str, value: Any
) -> None:
    before = value_digest(value(_classes(CLASSES)))
    assert before == value_digest(value(_classes(CLASSES)))
    assert before != value_digest(value(_classes(CLASSES.replace(old, new))))


def test_a_bound_method_is_keyed_by_the_methods_it_may_call() -> None:
    before = digest(_classes(CLASSES)["Derived"]().apply)
    assert before != digest(_classes(CLASSES.replace("return 0", "return 1"))["Derived"]().apply)


SET_IN_AN_OBJECT = """
from dataclasses import dataclass
from dispatcher._cache_key import value_digest

@dataclass
class Config:
    tags: frozenset
    names: set

print(value_digest(Config(frozenset({"alpha", "beta", "gamma"}), {"x", "y", "z", "w"})))
"""


def test_a_set_inside_an_object_keys_alike_in_every_process() -> None:
    # A set's pickle follows its iteration order, which follows the process's string hash
    # seed: keyed by it, such an argument would never hit in another run.
    import os
    import subprocess
    import sys

    digests = {
        subprocess.run(
            [sys.executable, "-c", SET_IN_AN_OBJECT],
            env={**os.environ, "PYTHONHASHSEED": str(seed)},
            capture_output=True,
            text=True,
            check=True,
            timeout=60,
        ).stdout
        for seed in range(1, 5)
    }
    assert len(digests) == 1


@pytest.mark.timeout(30)
def test_many_mutually_recursive_functions_hash_in_linear_time() -> None:
    # Every function calls every other: hashed afresh on each path, that is n! digests.
    n = 40
    source = "".join(
        f"def f{i}(x):\n    return x and ({' + '.join(f'f{j}(x - 1)' for j in range(n))})\n"
        for i in range(n)
    )
    namespace: dict[str, Any] = {"__name__": "keys_module"}
    exec(compile(source, "keys_module.py", "exec"), namespace)
    memo: dict[int, Any] = {}
    digests = {function_digest(namespace[f"f{i}"], memo) for i in range(n)}
    assert len(digests) == n


@pytest.mark.timeout(30)
def test_an_object_of_a_large_librarys_class_is_hashed_quickly() -> None:
    np = pytest.importorskip("numpy")
    masked = np.ma.array([1, 2, 3], mask=[0, 1, 0])
    assert value_digest(masked) == value_digest(np.ma.array([1, 2, 3], mask=[0, 1, 0]))
    assert value_digest(masked) != value_digest(np.ma.array([1, 2, 3], mask=[0, 0, 0]))


def test_values_of_different_types_never_share_a_key() -> None:
    # A function may answer differently for each (data + b"x" keeps its argument's type):
    # one key for both would serve one's result for the other.
    assert value_digest(b"ab") != value_digest(bytearray(b"ab"))
    assert value_digest({1, 2}) != value_digest(frozenset({1, 2}))
    np = pytest.importorskip("numpy")
    assert value_digest(np.float64(2.0)) != value_digest(np.array(2.0))
    assert value_digest(np.int64(3)) != value_digest(np.array(3))


class ReduceRaises:
    def __init__(self, error: BaseException) -> None:
        self.error = error

    def __reduce__(self) -> Any:
        raise self.error


def name_of_type(value: Any) -> str:
    return type(value).__name__


@pytest.mark.timeout(60)
@pytest.mark.parametrize("error", [SystemExit(3), GeneratorExit()], ids=["exit", "generator"])
def test_an_argument_whose_pickling_raises_oddly_is_uncacheable(
    tmp_path: Any, error: BaseException
) -> None:
    # Hashing it runs its __reduce__: what that raises makes the node uncacheable, and
    # must not end the run (nor, for SystemExit, the program) while it is planned.
    argument = ReduceRaises(error)
    assert value_digest(1)  # (the module's own hashing works)
    with pytest.raises(Uncacheable):
        value_digest(argument)
    assert run(op(name_of_type)(argument), executor="sync", cache=tmp_path) == "ReduceRaises"


DECORATED = """
import functools

@functools.lru_cache(maxsize=None)
def memoised(x):
    return x + 1

@functools.cache
def cached(x):
    return x + 1

def calls_it(x):
    return memoised(x) * 2
"""


@pytest.mark.parametrize("name", ["memoised", "cached", "calls_it"])
def test_editing_a_function_behind_lru_cache_changes_the_key(name: str) -> None:
    # functools' caches are C objects that pickle by name: their code is the wrapped one's.
    def key(source: str) -> bytes:
        namespace = _classes(source)
        return digest(namespace[name])

    assert key(DECORATED) == key(DECORATED)
    assert key(DECORATED) != key(DECORATED.replace("x + 1", "x + 2"))
