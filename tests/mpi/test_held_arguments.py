"""Rank 0's record of which rank holds which large argument, and a rank's table of them,
without an MPI job: what is sent before a task, what a task's arguments unpickle to, and
what a task that names an argument its rank does not hold gets."""

from __future__ import annotations

import pickle
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from dispatcher import SerializationError
from dispatcher._template import SHAPE_CALL
from dispatcher.transport import KEY_BITS, TaskSpec
from dispatcher_mpi import _held_arguments as held
from dispatcher_mpi._messages import DropArguments, HoldArgument

np = pytest.importorskip("numpy")


def spec(run: int, position: int, *args: Any, **kwargs: Any) -> TaskSpec:
    return TaskSpec(
        (run << KEY_BITS) | position,
        f"task {position}",
        len,
        args,
        kwargs or None,
        SHAPE_CALL,
        (),
        None,
        None,
        "rank-1",
        None,
        True,
        1,
    )


@pytest.fixture(autouse=True)
def empty_table() -> Iterator[None]:
    """This process plays a rank: its table starts and ends empty."""
    held._HELD.clear()
    yield
    held._HELD.clear()


def receive(packed: list[Any]) -> Any:
    """What a rank makes of a task's packed arguments, as they arrive over MPI."""
    return pickle.loads(packed[0], buffers=[bytearray(b.raw()) for b in packed[1:]])


def deliver(messages: list[Any]) -> None:
    """A rank's hub acts on what rank 0 sent before a task."""
    for message in messages:
        if type(message) is HoldArgument:
            raw = [message.value[0], *(bytearray(b.raw()) for b in message.value[1:])]
            held.hold(HoldArgument(message.name, raw))
        else:
            held.drop_held(message.names)


def test_each_rank_is_sent_an_argument_once_and_every_task_names_it() -> None:
    arguments = held.HeldArguments(lambda rank: [])
    values = np.arange(2**16, dtype=float)  # 512 KiB
    first, before = arguments.pack_for(spec(1, 0, values, 0), 1)
    assert [type(m) for m in before] == [HoldArgument]
    assert sum(len(p.raw()) if i else len(p) for i, p in enumerate(first)) < 1024
    deliver(before)
    nested, again = arguments.pack_for(spec(1, 1, (values, 1), key={"v": values}), 1)
    assert again == []  # rank 1 holds it already
    args, kwargs, _ = receive(first)
    ((array, one),), kwargs_of_nested, _ = receive(nested)
    assert args[0] is array is kwargs_of_nested["key"]["v"]  # one value for the rank
    assert np.array_equal(args[0], values)
    assert one == 1
    _, to_rank_2 = arguments.pack_for(spec(1, 2, values, 2), 2)
    assert [type(m) for m in to_rank_2] == [HoldArgument]
    assert arguments.finish(1) == {1: [before[0].name], 2: [before[0].name]}
    assert arguments.runs == {}
    assert arguments.packed == {}


def test_a_second_large_argument_met_later_in_the_run_is_kept_too() -> None:
    arguments = held.HeldArguments(lambda rank: [])
    first, second = np.zeros(2**16), np.ones(2**16)
    _, before = arguments.pack_for(spec(1, 0, first, 0), 1)
    deliver(before)
    packed, more = arguments.pack_for(spec(1, 1, first, second), 1)
    assert [type(m) for m in more] == [HoldArgument]  # the second only
    assert more[0].name != before[0].name
    assert sum(len(p.raw()) if i else len(p) for i, p in enumerate(packed)) < 1024
    deliver(more)
    (a, b), _, _ = receive(packed)
    assert a[0] == 0.0
    assert b[0] == 1.0


def test_another_run_sends_the_same_object_anew_under_a_new_name() -> None:
    arguments = held.HeldArguments(lambda rank: [])
    values = np.zeros(2**16)
    _, first = arguments.pack_for(spec(1, 0, values, 0), 1)
    arguments.finish(1)
    values[0] = 3.0
    packed, second = arguments.pack_for(spec(2, 0, values, 0), 1)
    assert first[0].name != second[0].name
    deliver(second)
    assert receive(packed)[0][0][0] == 3.0


def test_small_arguments_travel_in_the_task() -> None:
    arguments = held.HeldArguments(lambda rank: [])
    packed, before = arguments.pack_for(spec(1, 0, np.zeros(16), b"x" * 1000), 1)
    assert before == []
    assert arguments.writes == 0
    assert receive(packed)[0][1] == b"x" * 1000


def test_a_task_naming_an_argument_its_rank_does_not_hold_fails_and_never_gets_another() -> None:
    arguments = held.HeldArguments(lambda rank: [])
    packed, before = arguments.pack_for(spec(1, 0, np.ones(2**16), 0), 1)
    deliver(before)
    deliver([DropArguments(arguments.finish(1)[1])])
    with pytest.raises(LookupError, match="is not held by this rank"):
        receive(packed)


def test_over_the_budget_the_arguments_no_task_out_names_are_dropped() -> None:
    out: list[TaskSpec] = []
    arguments = held.HeldArguments(lambda rank: out)
    arguments.budget = 0
    a, b = np.zeros(2**16), np.ones(2**16)
    out.append(spec(1, 0, a, 0))
    _, to_a = arguments.pack_for(out[0], 1)
    _, to_b = arguments.pack_for(spec(1, 1, b, 1), 1)
    assert [type(m) for m in to_b] == [HoldArgument]  # a's task is out: a stays
    out.clear()  # reported
    _, again = arguments.pack_for(spec(1, 2, a, 2), 1)
    assert again == []  # held, though no task out names it: within the budget of none
    _, to_c = arguments.pack_for(spec(1, 3, np.full(2**16, 2.0), 3), 1)
    assert [type(m) for m in to_c] == [DropArguments, HoldArgument]
    assert set(to_c[0].names) == {to_a[0].name, to_b[0].name}


def test_an_argument_that_does_not_pickle_fails_its_task_by_name() -> None:
    arguments = held.HeldArguments(lambda rank: [])
    with pytest.raises(SerializationError, match="task 0"):
        arguments.pack_for(spec(1, 0, np.zeros(2**16), threading.Lock()), 1)
