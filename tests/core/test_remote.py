"""The worker kit on its own, in one process: messages, the function shipper, the
in-flight table, the task loop and error transport."""

from __future__ import annotations

import copyreg
import pickle
import threading
import time
from typing import Any

import pytest
from kit_runner import Recording, spec

from dispatcher import RemoteError, SerializationError
from dispatcher.remote import (
    Cancel,
    Define,
    Done,
    Failed,
    Forget,
    FunctionShipper,
    InFlight,
    Run,
    RunEnded,
    Started,
    Stop,
    capture_error,
    dumps,
    restore_error,
    task_record,
)
from dispatcher.transport import KEY_BITS, SHAPE_POSITIONAL, TaskSpec

pytestmark = pytest.mark.timeout(30)


def run_tasks(specs: list[TaskSpec], report_at_half: bool = False) -> Recording:
    runner = Recording()
    runner.report_at_half = report_at_half
    shipper = FunctionShipper(dumps)
    records = []
    for s in specs:
        token, define = shipper.ship("w", s)
        if define is not None:
            runner.receive(define)
        records.append(task_record(s, token, None, None))
    runner.receive(Run(records))
    runner.receive(Stop())
    thread = threading.Thread(target=runner.serve)
    thread.start()
    thread.join(10)
    assert not thread.is_alive(), "the task loop did not stop"
    return runner


class Custom(BaseException):
    pass


class Unprintable(Exception):
    def __str__(self) -> str:
        raise RuntimeError("no message")


class Weird(Exception):
    def __reduce__(self) -> Any:
        return (str, ("x",))


def raises(exc: BaseException) -> Any:
    def task() -> None:
        raise exc

    return task


@pytest.mark.parametrize(
    "error",
    [KeyboardInterrupt(), SystemExit(4), GeneratorExit(), Custom("c"), Unprintable("u")],
    ids=["KeyboardInterrupt", "SystemExit", "GeneratorExit", "custom", "unprintable"],
)
def test_the_task_loop_fails_any_base_exception_and_runs_the_next(error: BaseException) -> None:
    runner = run_tasks([spec(1, raises(error)), spec(2, abs, -5)])
    failed = [m for m in runner.sent if type(m) is Failed]
    assert [m.key for m in failed] == [1]
    restored = restore_error(failed[0].error, "task-1", pickle.loads)
    assert type(restored) is type(error)
    done = [entry for m in runner.sent if type(m) is Done for entry in m.finished]
    assert [(key, result) for key, _, _, result in done] == [(2, 5)]


def test_completions_are_batched_and_a_timed_task_says_it_started() -> None:
    specs = [spec(k, abs, -k) for k in range(1, 100)] + [spec(100, abs, -1, timeout=5.0)]
    runner = run_tasks(specs)
    kinds = [type(m).__name__ for m in runner.sent]
    assert kinds == ["Done", "Done", "Started", "Done"], kinds
    assert len(runner.sent[0].finished) == 64
    assert runner.sent[2] == Started(100)


def test_a_runner_that_reports_at_half_reports_half_a_batch_at_once() -> None:
    specs = [spec(k, abs, -k) for k in range(1, 100)] + [spec(100, abs, -1, timeout=5.0)]
    runner = run_tasks(specs, report_at_half=True)
    kinds = [type(m).__name__ for m in runner.sent]
    assert kinds == ["Done", "Done", "Started", "Done"], kinds
    assert [len(m.finished) for m in runner.sent if type(m) is Done] == [50, 49, 1]
    runner = run_tasks([spec(k, abs, -k) for k in range(1, 201)], report_at_half=True)
    assert [len(m.finished) for m in runner.sent] == [64, 36, 64, 36]


def test_a_task_whose_input_is_gone_is_reported_lost() -> None:
    runner = run_tasks([spec(2, abs, shape=SHAPE_POSITIONAL, deps=(1,))])
    assert [type(m).__name__ for m in runner.sent] == ["Lost"]
    assert runner.sent[0].missing == [1]


RELEASE = threading.Event()


def wait_for_release() -> str:
    RELEASE.wait(10)
    return "made after its run ended"


def test_a_run_that_ended_leaves_nothing_of_it_in_the_runner() -> None:
    run1, run2 = 1 << KEY_BITS, 2 << KEY_BITS
    runner = Recording()
    runner.store[run1 | 9] = "made before its run ended"
    shipper = FunctionShipper(dumps)

    def records(*specs: TaskSpec) -> list[tuple[Any, ...]]:
        out = []
        for s in specs:
            token, define = shipper.ship("w", s)
            if define is not None:
                runner.receive(define)
            out.append(task_record(s, token, None, None))
        return out

    RELEASE.clear()
    runner.receive(Run(records(spec(run1 | 1, wait_for_release), spec(run1 | 2, abs, -2))))
    thread = threading.Thread(target=runner.serve)
    thread.start()
    while runner.current != run1 | 1:
        time.sleep(0.001)
    runner.receive(Cancel([run1 | 2]))
    runner.receive(RunEnded(1))
    assert run1 | 9 not in runner.store  # at once
    runner.drop_queued()  # as when the worker is reset: the end of the run stays queued
    runner.receive(Run(records(spec(run2 | 1, abs, -4))))
    runner.receive(Stop())
    RELEASE.set()
    thread.join(10)
    assert not thread.is_alive(), "the task loop did not stop"
    # The run's late task still reports (its caller frees nothing of it any more) ...
    done = [entry[0] for m in runner.sent if type(m) is Done for entry in m.finished]
    assert done == [run1 | 1, run2 | 1]
    # ... and what it made is gone with the rest of its run, and its cancellations.
    assert set(runner.store) == {run2 | 1}
    assert not runner.cancelled


def test_completions_held_back_for_the_end_of_a_run_are_reported() -> None:
    # A batch's completions wait while more is queued; the end of another run queued
    # behind it is no task, and the wait for what follows it was for ever.
    runner = Recording()
    shipper = FunctionShipper(dumps)
    task = spec(2 << KEY_BITS | 1, abs, -1)
    token, define = shipper.ship("w", task)
    assert define is not None
    runner.receive(define)
    runner.receive(Run([task_record(task, token, None, None)]))
    runner.receive(RunEnded(1))
    thread = threading.Thread(target=runner.serve)
    thread.start()
    try:
        deadline = time.monotonic() + 10
        while not runner.sent and time.monotonic() < deadline:
            time.sleep(0.001)
        assert [type(m) for m in runner.sent] == [Done]
    finally:
        runner.receive(Stop())
        thread.join(10)


def test_restore_keeps_the_part_of_a_cause_chain_that_travels() -> None:
    try:
        try:
            raise Weird("w")
        except Weird as weird:
            raise ValueError("outer") from weird
    except ValueError as exc:
        wire = capture_error(exc, dumps)
    restored = restore_error(wire, "node", pickle.loads)
    assert type(restored) is ValueError
    assert restored.__cause__ is None


def _rebuilt_with_cause(cls: type[BaseException], args: Any, cause: Any) -> BaseException:
    exc = cls(*args)
    exc.__cause__ = cause  # a str here: TypeError, as under tblib's pickling support
    return exc


def test_an_exception_keeps_its_type_where_exceptions_pickle_with_their_cause(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Importing dask.distributed makes every exception pickle with its chain (tblib): a
    # cause that does not unpickle as an exception took the whole error down with it.
    def with_cause(exc: BaseException) -> Any:
        return (_rebuilt_with_cause, (type(exc), exc.args, exc.__cause__))

    monkeypatch.setitem(copyreg.dispatch_table, ValueError, with_cause)
    try:
        try:
            raise Weird("w")
        except Weird as weird:
            raise ValueError("outer") from weird
    except ValueError as exc:
        wire = capture_error(exc, dumps)
        cause = exc.__cause__
    assert type(cause) is Weird  # left as it was
    restored = restore_error(wire, "node", pickle.loads)
    assert type(restored) is ValueError
    assert restored.args == ("outer",)


def test_an_exception_that_cannot_be_pickled_or_printed_becomes_remote_error() -> None:
    class Local(Exception):
        def __reduce__(self) -> Any:
            raise TypeError("no")

        def __str__(self) -> str:
            raise RuntimeError("no message")

    wire = capture_error(Local(), dumps)
    restored = restore_error(wire, "node", pickle.loads)
    assert isinstance(restored, RemoteError)
    assert "Local" in str(restored)


def test_an_exception_that_exits_when_unpickled_becomes_remote_error() -> None:
    wire = capture_error(ValueError("v"), dumps)
    wire.payload = pickle.dumps(_ExitsWhenUnpickled())
    assert isinstance(restore_error(wire, "node", pickle.loads), RemoteError)


class _ExitsWhenUnpickled:
    def __reduce__(self) -> Any:
        import sys

        return (sys.exit, (3,))


def test_the_shipper_sends_each_function_once_per_worker() -> None:
    shipper = FunctionShipper(dumps)
    token, define = shipper.ship("a", spec(1, abs))
    assert isinstance(define, Define)
    assert define.token == token
    assert shipper.ship("a", spec(2, abs)) == (token, None)
    again, define_b = shipper.ship("b", spec(3, abs))
    assert again == token
    assert define_b is not None


def test_the_shipper_forgets_the_least_recently_used_past_its_budget() -> None:
    shipper = FunctionShipper(dumps, max_bytes=10**9, max_entries=3)
    funcs = [raises(ValueError(i)) for i in range(5)]
    tokens = [shipper.ship("a", spec(i, f))[0] for i, f in enumerate(funcs)]
    forget = shipper.trim("a")
    assert forget == Forget(tokens[:2])
    assert shipper.held_by("a") == 3
    assert shipper.trim("a") is None
    # A forgotten function is sent again when it is needed again.
    assert shipper.ship("a", spec(9, funcs[0]))[1] is not None


def test_the_shipper_keeps_a_bounded_number_of_pickles() -> None:
    shipper = FunctionShipper(dumps, max_bytes=300_000, max_entries=1000)
    for i in range(50):
        payload = bytes(100_000)
        shipper.ship("a", spec(i, lambda payload=payload: len(payload)))
        shipper.trim("a")
    assert shipper.pickled_bytes <= 300_000
    assert shipper.held_by("a") <= 3


def test_the_in_flight_table_filters_stale_reports_and_keeps_deadlines() -> None:
    table = InFlight()
    timed, plain = spec(1, abs, timeout=2.0), spec(2, abs)
    table.add(timed)
    table.add(plain)
    assert table.take(1, "elsewhere") is None  # a report from another worker
    table.started(1, "w", now=100.0)
    assert table.next_deadline() == 102.0
    assert table.expired(101.0) == []
    assert table.expired(102.0) == [timed]
    assert table.take(1, "w") is None  # already failed by its deadline
    assert table.drop_worker("w") == [plain]
    assert table.take(2, "w") is None


def test_serialization_errors_made_on_a_worker_name_the_node() -> None:
    from dispatcher.remote import serialization_error

    error = serialization_error(7, "result", object(), TypeError("cannot pickle 'x' object"))
    restored = restore_error(capture_error(error, dumps), "the node", pickle.loads)
    assert isinstance(restored, SerializationError)
    assert "the node" in str(restored)
