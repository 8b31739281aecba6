"""How the scheduler's queueing ahead behaves on real worker processes."""

from __future__ import annotations

import contextlib
import random
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import mp_tasks
import pytest

from dispatcher import Op, get_executor, hookimpl, op
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


def test_a_long_task_is_reported_without_waiting_for_the_next(tmp_path: Path) -> None:
    # Both are queued on the one worker; the second only returns True if the caller
    # heard of the first while the second was still running.
    marker = tmp_path / "first-reported"

    class MarkFirst:
        @hookimpl
        def dispatcher_task_finished(self, node: Op) -> None:
            if node.label == "first":
                marker.touch()

    first = op(tasks.sleep_then, label="first")(0.05, "first")
    second = op(tasks.wait_for_file, label="second")(str(marker), 10)
    with get_executor("mp", workers=1, prefetch=1) as one:
        assert one.run([first, second], plugins=[MarkFirst()]) == ["first", True]


class FinishOrder:
    """The labels of the finished tasks, in the order they finished."""

    def __init__(self) -> None:
        self.labels: list[str] = []

    @hookimpl
    def dispatcher_task_finished(self, node: Any, worker: str) -> None:
        self.labels.append(node.label)


@pytest.mark.timeout(60)
def test_a_short_task_does_not_wait_behind_a_long_one_while_a_worker_idles() -> None:
    # One worker gets a quick chain (its two tasks fill its room), the other the long
    # task and, queued behind it, the short one; the first worker then idles for the
    # whole long task while the short one waits.
    seen = FinishOrder()
    with get_executor("mp", workers=2) as ex:
        ex.run([Op(abs, -i) for i in range(4)])  # both workers up
        quick = op(len, label="quick")(Op(tasks.sleep_then, 0, "ab"))
        long = op(tasks.sleep_then, label="long")(10, 1)
        short = op(tasks.sleep_then, label="short")(0.2, 2)
        assert ex.run([quick, long, short], plugins=[seen]) == [2, 1, 2]
    assert seen.labels.index("short") < seen.labels.index("long"), seen.labels


@contextlib.contextmanager
def fetches_counted(transport: Any) -> Iterator[list[int]]:
    """The keys fetched from one worker for a task on another, while in the block."""
    fetched: list[int] = []
    real_fetched = transport.fetched

    def counting(key: int, payload: Any) -> None:
        fetched.append(key)
        real_fetched(key, payload)

    transport.fetched = counting
    try:
        yield fetched
    finally:
        del transport.fetched


def random_layers(
    rng: random.Random, make: Callable[[int], Any], join: Callable[[Any, Any], Any]
) -> list[Any]:
    """150 layers of 20 tasks, each joining two of the layer before, chosen at random."""
    layer = [Op(make, j) for j in range(20)]
    for _ in range(150):
        layer = [Op(join, rng.choice(layer), rng.choice(layer)) for _ in range(20)]
    return layer


def test_a_kept_executor_keeps_no_copy_of_inputs_moved_for_runs_that_ended(ex) -> None:  # type: ignore[no-untyped-def]
    # An input moved between workers passes through the caller, which keeps its
    # serialised copy while its holder has it (another reader may need it moved too).
    # One whose last reader ran on its holder is dropped there without a Free: its copy
    # must go then too, or a kept executor grows with every run.
    rng = random.Random(7)
    with fetches_counted(ex._transport) as fetched:
        for _ in range(3):
            ex.run(random_layers(rng, mp_tasks.boxed, mp_tasks.add_boxed))
    assert len(fetched) >= 10  # inputs did move between the workers
    assert not ex._transport.copies
    # Nor of small results carried along with their completion (none fetched).
    with fetches_counted(ex._transport) as fetched:
        for _ in range(3):
            ex.run(random_layers(rng, tasks.inc, tasks.add))
    assert not fetched
    assert not ex._transport.copies


def test_a_small_result_read_on_another_worker_is_not_fetched_from_its_own(ex) -> None:  # type: ignore[no-untyped-def]
    # Numbers and short strings travel with their completion: a task on another worker
    # is sent them with it, not held back while they are fetched through the caller.
    # Other values (which a later task might change in place) are fetched as before.
    rng = random.Random(11)
    with fetches_counted(ex._transport) as fetched:
        boxed = ex.run(random_layers(rng, mp_tasks.boxed, mp_tasks.add_boxed))
    assert len(fetched) >= 10
    rng = random.Random(11)
    with fetches_counted(ex._transport) as fetched:
        plain = ex.run(random_layers(rng, tasks.identity, tasks.add))
    assert not fetched
    assert plain == [b[0] for b in boxed]
