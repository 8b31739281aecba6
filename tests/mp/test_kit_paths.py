"""The worker kit's fast paths, as mp uses them: the in-flight table under a concurrent
take, the plain pickler and its hand-over to cloudpickle, and batches of tasks on the
worker's task thread."""

from __future__ import annotations

import pickle
from typing import Any

import cloudpickle
import pytest

from dispatcher.remote import (
    Done,
    InFlight,
    Reports,
    Run,
    Stop,
    TaskRunner,
    dumps,
    dumps_split,
    task_record,
)
from dispatcher.transport import SHAPE_CALL, Ref, TaskSpec

pytestmark = pytest.mark.timeout(30)


def spec(key: int, worker: str = "w") -> TaskSpec:
    return TaskSpec(
        key, f"task-{key}", abs, (key,), None, SHAPE_CALL, (), None, None, worker, None, False, 1
    )


class Racing(dict[int, TaskSpec]):
    """A task table where, right after a task is looked up, another thread takes it and
    sends it again under the same key (a cancel, then a new attempt)."""

    def __init__(self, again: TaskSpec) -> None:
        super().__init__()
        self.again = again

    def get(self, key: int, default: Any = None) -> Any:
        found = super().get(key, default)
        if found is not None and self.again is not None:
            again, self.again = self.again, None  # type: ignore[assignment]
            del self[key]
            self[key] = again
        return found


def test_a_take_never_removes_the_task_another_thread_sent_again() -> None:
    first, again = spec(1), spec(1)
    inflight = InFlight()
    inflight.tasks = Racing(again)
    inflight.add(first)
    assert inflight.take(1, "w") is None  # the one looked up was taken meanwhile
    assert inflight.tasks[1] is again


class Sink:
    def __init__(self) -> None:
        self.finished: list[int] = []

    def task_finished(self, key: int, worker: str, *rest: Any) -> None:
        self.finished.append(key)


def test_a_report_for_a_task_taken_meanwhile_is_stale() -> None:
    first, again = spec(1), spec(1)
    inflight = InFlight()
    inflight.tasks = Racing(again)
    inflight.add(first)
    sink, stale = Sink(), []
    reports = Reports(inflight, sink, lambda *a: None, lambda w, keys: stale.extend(keys))  # type: ignore[arg-type]
    reports.done("w", Done([(1, 0.0, 8, None)]))
    assert sink.finished == []
    assert stale == [1]
    assert inflight.tasks[1] is again


def test_plain_data_pickles_as_cloudpickle_would() -> None:
    values = [
        12345,
        ("done", [(1, 0.5, 28, None)], {"a": [1, 2.5, None, True]}, b"x" * 100),
        {frozenset({1, 2}), "s"},
        (Ref(3), Ref(1000), [Ref(0)]),
        bytearray(b"abc"),
    ]
    for value in values:
        assert dumps(value) == cloudpickle.dumps(value, protocol=5)
        stream, buffers = dumps_split(value)
        assert buffers == []
        back = pickle.loads(stream)
        # A set comes back in its hashes' order, and a Ref has no equality of its own.
        assert back == value or repr(back) == repr(value)


def test_what_is_not_plain_data_is_left_to_cloudpickle() -> None:
    class Local:  # pickle cannot name it: it travels by value
        def __init__(self) -> None:
            self.x = 1

    base = 10
    again = pickle.loads(dumps([1, lambda x: x + base, Local()]))
    assert again[1](1) == 11
    assert again[2].x == 1
    stream, buffers = dumps_split({"k": Local(), "f": lambda: 3})
    loaded = pickle.loads(stream, buffers=buffers)
    assert (loaded["k"].x, loaded["f"]()) == (1, 3)
    stream, buffers = dumps_split(pickle.PickleBuffer(b"y" * 10))
    assert [bytes(b) for b in buffers] == [b"y" * 10]
    assert bytes(pickle.loads(stream, buffers=buffers)) == b"y" * 10


class Runner(TaskRunner):
    def __init__(self) -> None:
        super().__init__()
        self.ran: list[int] = []

    def send(self, message: Any) -> None:
        pass


def test_a_drop_stops_the_rest_of_the_batch_being_run() -> None:
    runner = Runner()

    def mark(key: int) -> None:
        runner.ran.append(key)
        if key == 1:
            runner.drop_queued()  # as when the caller resets the worker meanwhile

    runner.functions[1] = mark
    records = [task_record(_with(spec(k), mark), 1, (k,), None) for k in (1, 2, 3)]
    runner.receive(Run(records))
    runner.receive(Stop())
    runner.serve()
    assert runner.ran == [1]


def test_every_task_of_a_batch_runs_in_order() -> None:
    runner = Runner()
    runner.functions[1] = runner.ran.append
    first = [task_record(spec(k), 1, (k,), None) for k in (1, 2, 3)]
    second = [task_record(spec(k), 1, (k,), None) for k in (4, 5)]
    runner.receive(Run(first))
    runner.receive(Run(second))
    runner.receive(Stop())
    runner.serve()
    assert runner.ran == [1, 2, 3, 4, 5]


def _with(task: TaskSpec, func: Any) -> TaskSpec:
    task.func = func
    return task
