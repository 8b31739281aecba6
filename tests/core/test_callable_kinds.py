"""Nodes whose function is not a plain function: instances of a user's callable class
(unhashable ones among them, as every ``@dataclass`` with the default ``eq=True`` is),
``functools.partial`` objects made per node. The scheduler keys what it learns by
function."""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

import pytest

from dispatcher import Op, get_executor
from dispatcher._placement import Placement


@dataclass
class Scale:
    """A callable dataclass: ``eq=True`` makes its instances unhashable."""

    k: int

    def __call__(self, x: int) -> int:
        return self.k * x


@pytest.mark.timeout(30)
@pytest.mark.parametrize("name", ["sync", "async"])
@pytest.mark.xfail(
    strict=True,
    raises=TypeError,
    reason="the scheduler's per-function tables (Run._in_caller, read in Run.dispatch; "
    "the async executor's _needs_loop; Placement's durations) are dicts and sets keyed "
    "by the function itself: an unhashable callable raises TypeError out of the run",
)
def test_an_unhashable_callable_runs_as_any_function(name: str) -> None:
    with get_executor(name) as ex:
        assert ex.run([Op(Scale(k), 3) for k in range(4)]) == [0, 3, 6, 9]


def add(a: int, b: int) -> int:
    return a + b


class _Node:
    def __init__(self, func: Any) -> None:
        self._func = func


class _Table:
    def __init__(self, funcs: list[Any]) -> None:
        self.nodes = [_Node(f) for f in funcs]


@pytest.mark.xfail(
    strict=True,
    reason="Placement learns durations by _kind(func): a functools.partial (or a callable "
    "instance) made per node is a function never seen to finish, assumed 1 ms at least, "
    "so in-order workers queue two of them where they would queue a thousand: on mpi, "
    "tiny such tasks ran 10-20 times slower than calls of a plain function, 2.3 times "
    "faster when learned by the partial's function (shipping one function per task "
    "makes the rest)",
)
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
