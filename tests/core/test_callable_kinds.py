"""Nodes whose function is not a plain function: instances of a user's callable class
(unhashable ones among them, as every ``@dataclass`` with the default ``eq=True`` is),
``functools.partial`` objects made per node. The scheduler keys what it learns by
function."""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import pytest

from dispatcher import Op, get_executor, op, run
from dispatcher._placement import Placement


@dataclass
class Scale:
    """A callable dataclass: ``eq=True`` makes its instances unhashable."""

    k: int

    def __call__(self, x: int) -> int:
        return self.k * x


@pytest.mark.timeout(30)
@pytest.mark.parametrize(
    ("name", "options"), [("sync", {}), ("async", {}), ("async", {"threads": 0})]
)
def test_an_unhashable_callable_runs_as_any_function(name: str, options: dict[str, Any]) -> None:
    with get_executor(name, **options) as ex:
        for _ in range(3):  # once learned, too
            nodes = [Op(Scale(k), 3) for k in range(4)]
            assert ex.run([*nodes, op(Scale(5), timeout=10)(1)]) == [0, 3, 6, 9, 5]


class RefusesHash:
    """A callable whose own ``__hash__`` raises (not ``TypeError``)."""

    def __call__(self, x: int) -> int:
        return x + 1

    def __hash__(self) -> int:
        raise ValueError("no hash for this one")


@pytest.mark.timeout(30)
@pytest.mark.parametrize(
    ("name", "options"), [("sync", {}), ("async", {}), ("async", {"threads": 0})]
)
def test_a_callable_whose_hash_raises_runs_as_any_function(
    name: str, options: dict[str, Any]
) -> None:
    refuses = RefusesHash()
    with get_executor(name, **options) as ex:
        for _ in range(3):  # once learned, too
            assert ex.run([Op(refuses, k) for k in range(3)]) == [1, 2, 3]
    assert Op(refuses, 1).func is refuses


def test_a_node_of_an_unhashable_callable_shows_the_callable() -> None:
    scale = Scale(2)
    for node in (Op(scale, 3), op(scale)(3), op(scale, label="s")(3)):
        assert node.func is scale
    assert Op(scale, 3).label == "Scale(k=2)"
    assert op(scale).func is scale


@dataclass
class Counted:
    """A callable dataclass that counts its calls (in this process: ``sync``)."""

    k: int
    calls: ClassVar[list[int]] = []

    def __call__(self, x: int) -> int:
        self.calls.append(x)
        return self.k * x


def test_an_unhashable_callable_is_cached_by_its_value(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    assert run(Op(Counted(2), 3), executor="sync", cache=cache) == 6
    assert run(Op(Counted(2), 3), executor="sync", cache=cache) == 6  # a hit: not called
    assert run(Op(Counted(3), 3), executor="sync", cache=cache) == 9  # another value: a miss
    assert Counted.calls == [3, 3]


def add(a: int, b: int) -> int:
    return a + b


class _Node:
    def __init__(self, func: Any) -> None:
        self._func = func


class _Table:
    def __init__(self, funcs: list[Any]) -> None:
        self.nodes = [_Node(f) for f in funcs]


def test_partials_of_one_function_share_its_learned_duration() -> None:
    table = _Table([functools.partial(add, i) for i in range(3)])
    placed = Placement(table)  # type: ignore[arg-type]
    placed.in_order = True
    for worker in ("w1", "w2"):
        placed.add_worker(worker, 1025)
    for p in range(2):
        for _ in range(100):
            placed.learn(table.nodes[p]._func, 2e-6, 8)
    mean, room = placed.expected(2)
    assert mean == pytest.approx(2e-6)
    assert room["w1"] > 500


def test_callable_instances_made_per_node_share_their_class_learned_duration() -> None:
    table = _Table([Scale(1), Scale(2), Scale(3), abs, len])
    placed = Placement(table)  # type: ignore[arg-type]
    for p in range(2):
        for _ in range(100):
            placed.learn(table.nodes[p]._func, 2e-6, 8)
    placed.learn(abs, 1.0, 8)
    assert placed.expected(2)[0] == pytest.approx(2e-6)
    assert placed.expected(3)[0] == pytest.approx(1.0)
    assert placed.durations.get(len) is None  # builtins are not one kind
