"""Taking back work queued behind a long task for a worker gone idle (``_stealing``), on
an in-process transport whose workers are threads that run their queues in order."""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import pytest

from dispatcher import Executor, hookimpl, op
from dispatcher.remote import start_thread
from dispatcher.transport import Capabilities, EventSink, Key, TaskSpec, Transport, call_task

pytestmark = pytest.mark.timeout(30)

GUARD = 10.0  # seconds a blocked task waits at most


class Queues(Transport):
    """Workers ``q-0``, ``q-1``... as threads, each running its queue in order. ``q-1``
    and later start without slots until :meth:`open` gives them some, so that what is
    sent first queues on ``q-0``. ``on_take_back(worker, keys)`` replaces the answer:
    by default the tasks still queued are removed and named at once."""

    capabilities = Capabilities(runs_tasks_in_order=True, takes_back_queued_tasks=True)

    def __init__(self, workers: int = 2, slots: int = 8) -> None:
        self.names = [f"q-{i}" for i in range(workers)]
        self.slots = slots
        self.lock = threading.Condition()
        self.queues: dict[str, deque[TaskSpec]] = {name: deque() for name in self.names}
        self.stores: dict[str, dict[Key, Any]] = {name: {} for name in self.names}
        self.running: dict[str, str | None] = dict.fromkeys(self.names)
        """The label of the task each worker runs now."""
        self.dead: set[str] = set()
        self.asked: list[tuple[str, list[str]]] = []
        """``(worker, labels)`` of every request to take back tasks."""
        self.ran: list[tuple[str, str]] = []
        """``(label, worker)`` of every task started."""
        self.labels: dict[Key, str] = {}
        self.on_take_back: Callable[[str, list[Key]], None] | None = None
        self.events: EventSink | None = None
        self.closed = False

    def start(self, events: EventSink) -> Mapping[str, int]:
        self.events = events
        for name in self.names:
            start_thread(f"queue-{name}", lambda name=name: self._serve(name), _fail)
        return {name: self.slots if name == "q-0" else 0 for name in self.names}

    def open(self, worker: str) -> None:
        """Give ``worker`` its slots: it is idle, and takes tasks."""
        assert self.events is not None
        self.events.worker_added(worker, self.slots)

    def _serve(self, worker: str) -> None:
        while True:
            with self.lock:
                while not self.queues[worker] and not self.closed:
                    self.lock.wait()
                if self.closed:
                    return
                spec = self.queues[worker].popleft()
                self.running[worker] = spec.label
                self.lock.notify_all()
            values = [
                spec.inline[key] if spec.inline and key in spec.inline else self._held(key)
                for key in spec.deps
            ]
            self.ran.append((spec.label, worker))
            start = time.perf_counter()
            try:
                value = call_task(spec.func, spec.args, spec.kwargs, spec.shape, values)
            except Exception as exc:
                error: Exception | None = exc
            else:
                error = None
            with self.lock:
                self.running[worker] = None
                if worker in self.dead:
                    continue  # its reports died with it
                if error is None:
                    self.stores[worker][spec.key] = value
            assert self.events is not None
            duration = time.perf_counter() - start
            if error is not None:
                self.events.task_failed(spec.key, worker, error, duration)
            elif spec.want_result:
                self.events.task_finished(spec.key, worker, duration, None, value)
            else:
                self.events.task_finished(spec.key, worker, duration, None)

    def _held(self, key: Key) -> Any:
        with self.lock:
            for store in self.stores.values():
                if key in store:
                    return store[key]
        raise LookupError(key)

    def submit(self, tasks: Sequence[TaskSpec]) -> None:
        with self.lock:
            for spec in tasks:
                self.labels[spec.key] = spec.label
                self.queues[spec.worker].append(spec)
            self.lock.notify_all()

    def take_back(self, worker: str, keys: Sequence[Key]) -> None:
        self.asked.append((worker, [self.labels[key] for key in keys]))
        if self.on_take_back is not None:
            self.on_take_back(worker, list(keys))
            return
        self.answer(worker, keys)

    def answer(self, worker: str, keys: Sequence[Key]) -> None:
        """Remove those of ``keys`` still queued on ``worker``, and name them."""
        with self.lock:
            queue = self.queues[worker]
            taken = [spec.key for spec in queue if spec.key in keys]
            for spec in [spec for spec in queue if spec.key in keys]:
                queue.remove(spec)
        if taken:
            assert self.events is not None
            self.events.tasks_taken_back(worker, taken)

    def wait_until(self, condition: Callable[[], bool]) -> None:
        deadline = time.monotonic() + GUARD
        while not condition():
            assert time.monotonic() < deadline, "not in time"
            time.sleep(0.002)

    def free(self, worker: str, keys: Sequence[Key]) -> None:
        with self.lock:
            for key in keys:
                self.stores[worker].pop(key, None)

    def cancel(self, tasks: Sequence[TaskSpec]) -> None:
        with self.lock:
            for spec in tasks:
                if spec in self.queues[spec.worker]:
                    self.queues[spec.worker].remove(spec)

    def close(self) -> None:
        with self.lock:
            self.closed = True
            self.lock.notify_all()


def _fail(error: BaseException) -> None:
    raise AssertionError(f"a worker thread failed: {error!r}")


class Hooks:
    """Every hook fired for a task: ``(hook, label, worker)``."""

    def __init__(self) -> None:
        self.fired: list[tuple[str, str, str]] = []

    @hookimpl
    def dispatcher_task_started(self, node: Any, worker: str) -> None:
        self.fired.append(("started", node.label, worker))

    @hookimpl
    def dispatcher_task_finished(self, node: Any, worker: str) -> None:
        self.fired.append(("finished", node.label, worker))

    @hookimpl
    def dispatcher_task_retried(self, node: Any, worker: str, attempt: int) -> None:
        self.fired.append(("retried", node.label, f"attempt {attempt}"))

    def of(self, label: str) -> list[str]:
        return [hook for hook, seen, _ in self.fired if seen == label]


def blocked(gate: threading.Event, value: Any) -> Any:
    gate.wait(GUARD)
    return value


def value(x: Any) -> Any:
    return x


class Tries:
    """How many times :func:`fails_first` was called with it."""

    def __init__(self) -> None:
        self.count = 0


def fails_first(tries: Tries, x: Any) -> Any:
    tries.count += 1
    if tries.count == 1:
        raise ValueError("first try")
    return x


def _then(queues: Queues, condition: Callable[[], bool], action: Callable[[], None]) -> None:
    """Once ``condition()`` holds (in time), ``action()``, on a thread of its own."""

    def wait() -> None:
        queues.wait_until(condition)
        action()

    threading.Thread(target=wait, daemon=True).start()


def _open_once_q0_runs(queues: Queues, label: str = "long") -> None:
    """``q-1`` takes tasks once ``q-0`` runs ``label``: what was sent until then queued
    on ``q-0``."""
    _then(queues, lambda: queues.running["q-0"] == label, lambda: queues.open("q-1"))


WARM = [op(value, label=f"warm{i}")(i) for i in range(20)]
"""Tiny tasks run first, so that placement queues more than one task behind another."""


def _ran_on(queues: Queues, worker: str) -> Callable[[], bool]:
    return lambda: any(w == worker for _, w in queues.ran)


def test_a_task_queued_behind_a_long_one_runs_on_the_idle_worker_started_once() -> None:
    queues, gate, hooks = Queues(), threading.Event(), Hooks()
    long = op(blocked, label="long")(gate, "long")
    short = op(value, label="short")(1)
    _open_once_q0_runs(queues)
    _then(queues, _ran_on(queues, "q-1"), gate.set)  # the long task waits for the short
    with Executor("queues", queues, retries=0) as ex:
        assert ex.run([long, short], plugins=[hooks]) == ["long", 1]
    gate.set()
    assert queues.ran == [("long", "q-0"), ("short", "q-1")]
    assert queues.asked == [("q-0", ["short"])]
    assert hooks.of("short") == ["started", "finished"]  # told once, not charged
    assert hooks.of("long") == ["started", "finished"]


def test_a_chain_sent_ahead_stays_a_chain() -> None:
    queues, gate = Queues(), threading.Event()
    long = op(blocked, label="long")(gate, 1)
    after = op(value, label="after")(long)  # sent ahead behind the long task
    first = op(value, label="first")(2)
    second = op(value, label="second")(first)  # sent ahead behind ``first``
    free = op(value, label="free")(3)
    _open_once_q0_runs(queues)
    _then(queues, _ran_on(queues, "q-1"), gate.set)
    with Executor("queues", queues) as ex:
        assert ex.run([*WARM, after, second, free])[-3:] == [1, 2, 3]
    gate.set()
    assert queues.asked == [("q-0", ["free"])]
    assert ("after", "q-0") in queues.ran


def test_a_task_that_starts_before_it_is_taken_back_runs_once_where_it_was() -> None:
    queues, gate, hooks = Queues(), threading.Event(), Hooks()
    long = op(blocked, label="long")(gate, "long")
    short = op(value, label="short")(1)

    def too_late(worker: str, keys: list[Key]) -> None:
        gate.set()  # the long task ends, and the short one starts, before the answer
        queues.wait_until(lambda: ("short", "q-0") in queues.ran)
        queues.answer(worker, keys)

    queues.on_take_back = too_late
    _open_once_q0_runs(queues)
    with Executor("queues", queues, retries=0) as ex:
        assert ex.run([long, short], plugins=[hooks]) == ["long", 1]
    assert queues.ran == [("long", "q-0"), ("short", "q-0")]
    assert hooks.of("short") == ["started", "finished"]


def test_taking_back_is_not_an_attempt() -> None:
    queues, gate, hooks, tries = Queues(), threading.Event(), Hooks(), Tries()
    long = op(blocked, label="long")(gate, "long")
    flaky = op(fails_first, label="flaky")(tries, 1)
    _open_once_q0_runs(queues)
    _then(queues, lambda: tries.count == 2, gate.set)
    # One retry: enough only if being taken back did not count as an attempt.
    with Executor("queues", queues, retries=1, retry_on=(ValueError,)) as ex:
        assert ex.run([long, flaky], plugins=[hooks]) == ["long", 1]
    gate.set()
    assert queues.asked == [("q-0", ["flaky"])]
    assert ("retried", "flaky", "attempt 2") in hooks.fired
    assert hooks.of("flaky") == ["started", "retried", "started", "finished"]


def test_one_request_out_per_worker_at_a_time() -> None:
    queues, gate = Queues(), threading.Event()
    long = op(blocked, label="long")(gate, "long")
    shorts = [op(value, label=f"short{i}")(i) for i in range(3)]
    queues.on_take_back = lambda worker, keys: None  # never answered
    _open_once_q0_runs(queues)
    _then(queues, lambda: bool(queues.asked), lambda: (time.sleep(0.3), gate.set()))
    with Executor("queues", queues) as ex:
        assert ex.run([*WARM, long, *shorts])[-4:] == ["long", 0, 1, 2]
    gate.set()
    # Unanswered for 0.3 s, less than the wait before asking that worker again.
    assert queues.asked == [("q-0", ["short0", "short1", "short2"])]


def test_a_worker_lost_with_a_request_out() -> None:
    queues, gate = Queues(), threading.Event()
    long = op(blocked, label="long")(gate, "long")
    short = op(value, label="short")(1)

    def lose(worker: str, keys: list[Key]) -> None:  # the worker dies instead of answering
        with queues.lock:
            queues.dead.add(worker)
            queues.queues[worker].clear()
        gate.set()  # its long task ends unheard; run again, it no longer waits
        assert queues.events is not None
        queues.events.worker_lost(worker, "killed by the test", [])

    queues.on_take_back = lose
    _open_once_q0_runs(queues)
    with Executor("queues", queues, retries=0) as ex:
        assert ex.run([long, short]) == ["long", 1]
    gate.set()
    assert ("short", "q-1") in queues.ran
    assert ("long", "q-1") in queues.ran


def test_a_run_failing_fast_with_a_request_out_ends_and_the_late_answer_is_ignored() -> None:
    queues, gate = Queues(), threading.Event()
    long = op(blocked, label="long")(gate, "long")
    short = op(value, label="short")(1)
    failing = op(fails_first, label="failing")(Tries(), 2)
    asked: list[tuple[str, list[Key]]] = []
    queues.on_take_back = lambda worker, keys: asked.append((worker, keys))
    _open_once_q0_runs(queues)
    with Executor("queues", queues, retries=0) as ex:
        with pytest.raises(ValueError, match="first try"):
            ex.run([long, short, failing])
        for worker, keys in asked:
            queues.answer(worker, keys)  # after the run: nobody's
        gate.set()
        assert ex.run([op(value)(5)]) == [5]


def test_ctrl_c_as_tasks_are_asked_back_stops_the_run_and_the_executor_goes_on() -> None:
    queues, gate = Queues(), threading.Event()
    long = op(blocked, label="long")(gate, "long")
    short = op(value, label="short")(1)
    asked: list[tuple[str, list[Key]]] = []

    def interrupted(worker: str, keys: list[Key]) -> None:
        asked.append((worker, keys))
        raise KeyboardInterrupt  # the user's Ctrl-C, landing as the request goes out

    queues.on_take_back = interrupted
    queues.cancel = lambda tasks: None  # type: ignore[method-assign]  # (allowed: best effort)
    _open_once_q0_runs(queues)
    with Executor("queues", queues) as ex:
        with pytest.raises(KeyboardInterrupt):
            ex.run([long, short])
        assert asked
        for worker, keys in asked:
            queues.answer(worker, keys)  # after the run: nobody's
        gate.set()
        assert ex.run([op(value)(5)]) == [5]
