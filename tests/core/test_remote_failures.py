"""The kit's failure path, as mp and mpi use it: failures batched like completions after
the first, the traceback text made once per place, builtin exceptions pickled without
cloudpickle."""

from __future__ import annotations

import copyreg
import linecache
import pickle
import threading
import traceback
from typing import Any

import pytest
from kit_runner import Recording, spec

from dispatcher._errors import user_traceback
from dispatcher.remote import (
    BATCH_SIZE,
    Done,
    Failed,
    InFlight,
    Reports,
    Stop,
    TaskRunner,
    capture_error,
    dumps,
    reported_keys,
)
from dispatcher.remote import _pickle as kit_pickle
from dispatcher.remote import _worker as worker_module

pytestmark = pytest.mark.timeout(60)


def serve(runner: TaskRunner) -> None:
    runner.receive(Stop())
    thread = threading.Thread(target=runner.serve)
    thread.start()
    thread.join(30)
    assert not thread.is_alive(), "the task loop did not stop"


def bad(x: int) -> int:
    raise ValueError(f"bad {x}")


@pytest.fixture
def no_long_tasks(monkeypatch: pytest.MonkeyPatch) -> None:
    """A task preempted for a millisecond on a busy machine is not reported at once."""
    monkeypatch.setattr(worker_module, "REPORT_NOW", 60.0)


@pytest.mark.usefixtures("no_long_tasks")
def test_failures_after_the_first_travel_together_with_the_completions() -> None:
    runner = Recording()
    runner.batch(*[bad if key % 3 else abs for key in range(1, 31)])
    serve(runner)
    kinds = [type(m).__name__ for m in runner.sent]
    assert kinds == ["Failed", "Done"], kinds  # not one message per failure
    first, rest = runner.sent
    assert first.key == 1
    assert [key for key, *_ in rest.finished] == list(range(3, 31, 3))
    assert [key for key, _, _ in rest.failed] == [k for k in range(2, 31) if k % 3]
    assert reported_keys(rest) == [key for key, *_ in rest.finished] + [
        key for key, _, _ in rest.failed
    ]
    for _, _, wire in rest.failed:
        assert wire.type_name == "builtins.ValueError"


@pytest.mark.usefixtures("no_long_tasks")
def test_a_batch_of_failures_is_reported_when_it_is_full() -> None:
    runner = Recording()
    runner.batch(*[bad] * (2 * BATCH_SIZE))
    serve(runner)
    sizes = [len(m.failed) if type(m) is Done else 1 for m in runner.sent]
    # The first after each report goes alone, at once.
    assert sizes == [1, BATCH_SIZE, 1, BATCH_SIZE - 2], sizes


def test_the_first_failure_after_the_worker_idled_goes_at_once() -> None:
    runner = Recording()
    runner.batch(bad, bad)
    seen: list[list[str]] = []

    def look(x: int) -> int:
        seen.append([type(m).__name__ for m in runner.sent])
        return x

    # What a later batch's failure is reported with, while the next task runs: at once,
    # not behind that task (a run that stops at its first failure waits for it).
    serve_thread = threading.Thread(target=runner.serve)
    serve_thread.start()
    try:
        deadline = threading.Event()
        while len(runner.sent) < 2 and not deadline.wait(0.01):
            pass
        assert [type(m).__name__ for m in runner.sent] == ["Failed", "Done"]
        runner.batch(bad, look, first_key=3)
    finally:
        runner.receive(Stop())
        serve_thread.join(30)
    assert seen == [["Failed", "Done", "Failed"]], seen


class Sink:
    def __init__(self) -> None:
        self.events: list[tuple[str, int]] = []

    def task_finished(self, key: int, worker: str, *rest: Any) -> None:
        self.events.append(("finished", key))

    def task_failed(self, key: int, worker: str, error: Any, duration: float) -> None:
        self.events.append(("failed", key))
        restored = error.load()
        assert isinstance(restored, ValueError), restored
        assert f"task-{key}" in "".join(restored.__notes__)


@pytest.mark.usefixtures("no_long_tasks")
def test_the_caller_reports_each_failure_of_a_batch() -> None:
    runner = Recording()
    runner.batch(bad, abs, bad, bad)
    serve(runner)
    inflight = InFlight()
    for key in range(1, 5):
        inflight.add(spec(key, abs, key))
    sink = Sink()
    reports = Reports(inflight, sink, lambda w, k, r: r, lambda w, keys: None)  # type: ignore[arg-type]
    for message in runner.sent:
        assert reports.handle("w", message)
    assert sink.events == [("failed", 1), ("finished", 2), ("failed", 3), ("failed", 4)]
    assert not inflight.tasks


def nested(x: int) -> int:
    return bad(x)


def chained(x: int) -> int:
    try:
        bad(x)
    except ValueError as exc:
        raise KeyError(x) from exc
    return x


def recurse(x: int) -> int:
    return recurse(x)


def syntax(x: int) -> int:
    return eval("x = (")  # type: ignore[no-any-return]


def noted(x: int) -> int:
    error = ValueError(x)
    error.add_note("first\nsecond")
    raise error


class Keeping(Recording):
    """Keeps the exceptions it reports."""

    def __init__(self) -> None:
        super().__init__()
        self.errors: list[BaseException] = []

    def fail(self, key: int, error: BaseException, duration: float) -> None:
        self.errors.append(error)
        super().fail(key, error, duration)


@pytest.mark.parametrize("func", [bad, nested, chained, recurse, syntax, noted])
def test_a_captured_traceback_reads_as_the_standard_one(func: Any) -> None:
    runner = Keeping()
    runner.batch(func)
    serve(runner)
    (failed,) = runner.sent
    (error,) = runner.errors
    tb = error.__traceback__
    whole = "".join(traceback.format_exception(error))
    user = "".join(traceback.format_exception(type(error), error, user_traceback(tb)))
    assert failed.error.traceback_text == user
    assert failed.error.whole_traceback_text == whole
    assert "in execute\n" in whole


def test_a_place_that_raised_before_is_not_looked_up_again(monkeypatch: Any) -> None:
    def raise_it() -> BaseException:
        try:
            nested(3)
        except ValueError as exc:
            return exc
        raise AssertionError

    capture_error(raise_it(), dumps)
    checked: list[str] = []
    real = linecache.checkcache
    monkeypatch.setattr(linecache, "checkcache", lambda *a: checked.append(*a) or real(*a))
    wire = capture_error(raise_it(), dumps)
    assert checked == []  # the files' status is not read for every failure
    assert 'raise ValueError(f"bad {x}")' in wire.traceback_text


class Mine(Exception):
    pass


def test_builtin_exceptions_pickle_without_cloudpickle(monkeypatch: Any) -> None:
    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("cloudpickle was used")

    # As in a process where no library registered its own reduction of exceptions (importing
    # distributed registers tblib's for every one of them: then cloudpickle decides).
    for cls in [c for c in copyreg.dispatch_table if isinstance(c, type)]:
        if issubclass(cls, BaseException):
            monkeypatch.delitem(copyreg.dispatch_table, cls)
    error = OSError(2, "not found", "x.txt")
    error.add_note("a note")
    expected = pickle.dumps(error, protocol=5)
    monkeypatch.setattr(kit_pickle, "_Pickler", refuse)
    assert dumps(error) == expected
    restored = pickle.loads(dumps(KeyError(("a", 1))))
    assert type(restored) is KeyError
    assert restored.args == (("a", 1),)
    with pytest.raises(AssertionError, match="cloudpickle"):
        dumps(Mine("mine"))  # the user's own: cloudpickle decides how it travels
    with pytest.raises(AssertionError, match="cloudpickle"):
        dumps(ValueError(Mine("inside")))


def test_failed_messages_still_read(monkeypatch: Any) -> None:
    inflight = InFlight()
    inflight.add(spec(5, abs, 5))
    sink = Sink()
    reports = Reports(inflight, sink, lambda w, k, r: r, lambda w, keys: None)  # type: ignore[arg-type]
    try:
        bad(5)
    except ValueError as exc:
        wire = capture_error(exc, dumps)
    reports.handle("w", Failed(5, 0.0, wire))
    assert sink.events == [("failed", 5)]


class TimedSink:
    def __init__(self) -> None:
        self.events: list[tuple[str, int, Any]] = []

    def task_finished(self, key: int, worker: str, *rest: Any) -> None:
        self.events.append(("finished", key, None))

    def task_failed(self, key: int, worker: str, error: Any, duration: float) -> None:
        self.events.append(("failed", key, error))


def test_a_report_of_a_task_that_ran_past_its_timeout_fails_it() -> None:
    # The deadline is enforced by a thread that can be late on a busy machine: a result
    # reported meanwhile must not count as made in time. A function that returned in
    # time and whose result was then stored (the report's time counts the store) does.
    from dispatcher import TaskTimeoutError
    from dispatcher.remote import Started, Storing

    inflight = InFlight()
    for key in (1, 2, 3):
        inflight.add(spec(key, abs, key, timeout=0.05))
    sink = TimedSink()
    stale: list[int] = []
    reports = Reports(inflight, sink, lambda w, k, r: r, lambda w, keys: stale.extend(keys))  # type: ignore[arg-type]
    for key in (1, 2, 3):
        reports.handle("w", Started(key))
    reports.handle("w", Storing(2, 10.0))  # stored in time: finished within its timeout
    reports.handle("w", Storing(3, 10.0))
    reports.handle("w", Done([(1, 0.2, 8, 1), (2, 0.01, 8, 2), (3, 0.2, 8, 3)]))
    assert [(kind, key) for kind, key, _ in sink.events] == [
        ("failed", 1),
        ("finished", 2),
        ("finished", 3),
    ]
    error = sink.events[0][2]
    assert isinstance(error, TaskTimeoutError)
    assert "task-1" in str(error)
    assert stale == [1]
    assert not inflight.tasks
    assert not reports._returned_in_time  # each forgotten at its report


def test_a_retry_on_another_worker_is_timed_afresh_after_its_worker_died_storing() -> None:
    # Its first attempt returned in time and died storing its result: the retry's
    # function ran past the timeout, and its report must not count as returned in time.
    from dispatcher import TaskTimeoutError
    from dispatcher.remote import Started, Storing

    inflight = InFlight()
    inflight.add(spec(1, abs, 1, timeout=0.05, worker="a"))
    sink = TimedSink()
    reports = Reports(inflight, sink, lambda w, k, r: r, lambda w, keys: None)  # type: ignore[arg-type]
    reports.handle("a", Started(1))
    reports.handle("a", Storing(1, 10.0))
    assert [s.key for s in inflight.drop_worker("a")] == [1]
    inflight.add(spec(1, abs, 1, timeout=0.05, worker="b"))
    reports.handle("b", Started(1))
    reports.handle("b", Done([(1, 0.2, 8, 1)]))
    assert [(kind, key) for kind, key, _ in sink.events] == [("failed", 1)]
    assert isinstance(sink.events[0][2], TaskTimeoutError)
