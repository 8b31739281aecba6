"""The task table's in-caller loop keeps no value longer than something will read it."""

from __future__ import annotations

from typing import Any

from dispatcher import DataNode, DispatchGraph, Op
from dispatcher._hot_loop import call_ready_in_caller
from dispatcher._plugins import run_observers
from dispatcher._states import DONE, RELEASED
from dispatcher._tasks import TaskTable
from dispatcher.testing import tasks

_NO_OBSERVERS = run_observers((), progress=False, report=None)


def _run_in_caller(targets: list[Any], inputs: dict[Any, Any] | None = None) -> TaskTable:
    graph = DispatchGraph(targets)
    table = TaskTable(graph, targets, inputs or {}, _NO_OBSERVERS, None, 0)
    assert call_ready_in_caller(table, lambda func: True, {})
    assert table.remaining == 0
    return table


def test_every_result_is_let_go_once_read_and_targets_are_answered() -> None:
    top = Op(tasks.inc, 1)
    left, right = Op(tasks.double, top), Op(tasks.inc, top)
    bottom = Op(tasks.add, left, right)
    side = Op(tasks.inc, bottom)  # a target that another target reads
    table = _run_in_caller([bottom, side])
    assert [table.results[p] for p in table.target_positions] == [7, 8]
    assert set(table.state) == {RELEASED}
    assert table.caller_values == {}


def test_constants_and_inputs_stay_and_the_rest_goes() -> None:
    constant = DataNode(10)
    given = Op(tasks.inc, 0)
    first = Op(tasks.add, constant, given)
    second = Op(tasks.inc, first)
    table = _run_in_caller([second], inputs={given: 5})
    nodes = table.nodes
    assert table.results[table.target_positions[0]] == 16
    kept = {nodes[p] for p in table.caller_values}
    assert kept == {constant, given}
    assert all(table.state[p] == DONE for p in table.caller_values)
    assert table.state[nodes.index(first)] == RELEASED
    assert table.state[nodes.index(second)] == RELEASED


def test_a_result_whose_readers_were_skipped_is_not_kept() -> None:
    # A reader that never runs no longer counts: its input is let go once made.
    made = Op(tasks.inc, 1)
    reader = Op(tasks.add, made, Op(tasks.inc, 2))
    graph = DispatchGraph([reader])
    table = TaskTable(graph, [reader], {}, _NO_OBSERVERS, None, 0)
    table.consume_inputs(graph._position(reader))  # as skipping the reader does
    table.remaining -= 1
    table.state[graph._position(reader)] = RELEASED
    assert call_ready_in_caller(table, lambda func: True, {})
    assert table.caller_values == {}
    assert table.state[graph._position(made)] == RELEASED
