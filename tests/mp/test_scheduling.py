"""How the scheduler's queueing ahead behaves on real worker processes."""

from __future__ import annotations

from collections import Counter

import pytest

from dispatcher import Op, get_executor, op
from dispatcher.testing import Recorder, tasks


@pytest.fixture(scope="module")
def ex():  # type: ignore[no-untyped-def]
    with get_executor("mp", workers=2) as executor:
        yield executor


def test_a_tree_starts_each_node_once(ex) -> None:  # type: ignore[no-untyped-def]
    # Tasks queued behind one that still waits for an input from the other worker must
    # not overtake it: they would find their own input missing and be sent again.
    level = [Op(tasks.inc, i) for i in range(1024)]
    while len(level) > 1:
        level = [Op(tasks.add, a, b) for a, b in zip(level[::2], level[1::2])]
    recorder = Recorder()
    assert ex.run(level[0], plugins=[recorder]) == sum(range(1, 1025))
    started = Counter(id(event[1]) for event in recorder.of("started"))
    assert len(started) == 2047
    assert max(started.values()) == 1


def test_a_long_chain_keeps_few_results_alive(ex) -> None:  # type: ignore[no-untyped-def]
    node = Op(tasks.tracked_start)
    for _ in range(300):
        node = Op(tasks.tracked_step, node)
    assert ex.run(Op(tasks.tracked_most, node)) <= 3


def test_a_long_task_is_reported_without_waiting_for_the_next() -> None:
    import time

    from dispatcher import hookimpl
    from dispatcher.testing import tasks as t

    finished: dict[str, float] = {}

    class Clock:
        @hookimpl
        def dispatcher_task_finished(self, node: Op) -> None:
            finished[node.label] = time.monotonic()

    first = op(t.sleep_then, label="first")(0.1, "first")
    second = op(t.sleep_then, label="second")(0.8, "second")
    with get_executor("mp", workers=1, prefetch=1) as one:
        assert one.run([first, second], plugins=[Clock()]) == ["first", "second"]
    # Both were queued on the one worker; the first is known as soon as it ends.
    assert finished["second"] - finished["first"] > 0.5
