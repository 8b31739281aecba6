"""The driver: the event queue, the router, and stopping a run from outside."""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from typing import Any

import anyio
import pytest

from dispatcher import DispatcherError, Op, SerializationError, get_executor
from dispatcher._capacity import Capacity
from dispatcher._driver import (
    EV_FINISHED,
    EV_FINISHED_MANY,
    EV_WORKER_LOST,
    KEY_BITS,
    EventQueue,
    Router,
    step,
)
from dispatcher._executor import PLANNED_ASIDE, Executor
from dispatcher._hooks import Observers
from dispatcher._placement import Placement
from dispatcher._plan import Plan
from dispatcher._plugins import run_observers
from dispatcher._scheduler import Run
from dispatcher.testing import FakeTransport, fake_executor, tasks
from dispatcher.transport import Capabilities, Key, TaskSpec, Unloaded


class _Run:
    """What the router needs of a run."""

    def __init__(self, number: int) -> None:
        self.base = number << KEY_BITS
        self.queue = EventQueue()
        self.capacity = Capacity()
        self.placement = Placement(None)  # type: ignore[arg-type]


def _router_with_runs() -> tuple[Router, _Run, _Run]:
    """A router, on a one-worker fake transport, with runs 1 and 2 attached."""
    router = Router(FakeTransport(workers=1))
    first, second = _Run(1), _Run(2)
    router.attach(first)  # type: ignore[arg-type]
    router.attach(second)  # type: ignore[arg-type]
    return router, first, second


@pytest.mark.timeout(30)
def test_wake_ends_a_blocking_wait_without_an_event() -> None:
    queue = EventQueue()
    waiting = threading.Event()

    def wait() -> None:
        waiting.set()
        queue.wait(None)

    thread = threading.Thread(target=wait, daemon=True)
    thread.start()
    waiting.wait()
    while thread.is_alive():  # woken before it slept is missed: wake until it returns
        queue.wake()
        thread.join(0.05)
    assert not queue.events


def test_reports_go_to_the_run_their_key_belongs_to() -> None:
    router, first, second = _router_with_runs()
    router.task_finished(second.base + 7, "fake-0", 0.5, None, "value")
    assert list(second.queue.events) == [(EV_FINISHED, 7, "fake-0", 0.5, None, "value")]
    assert not first.queue.events
    router.worker_lost("fake-0", "gone", running=[second.base + 3])
    for run in (first, second):  # every run hears of it; each finds its own tasks
        assert run.queue.events[-1] == (EV_WORKER_LOST, "fake-0", "gone", [second.base + 3])
    assert "fake-0" not in router.workers


def test_a_result_for_a_run_that_ended_is_freed() -> None:
    transport = FakeTransport(workers=1)
    router = Router(transport)
    run = _Run(3)
    router.attach(run)
    router.detach(run)
    router.task_finished(run.base + 1, "fake-0", 0.1, None)
    assert transport.freed == [("fake-0", run.base + 1)]
    assert not run.queue.events


def test_a_result_announced_to_a_run_but_never_read_is_freed_when_it_ends() -> None:
    # An aborted run's driver stops reading its queue; a task that was still running
    # reports afterwards, before the run is detached.
    transport = FakeTransport(workers=1)
    router = Router(transport)
    run = _Run(4)
    router.attach(run)
    router.task_finished(run.base + 2, "fake-0", 0.1, None)
    router.task_failed(run.base + 3, "fake-0", ValueError("x"), 0.1)
    router.detach(run)
    assert transport.freed == [("fake-0", run.base + 2)]
    assert not run.queue.events


def test_a_result_posted_while_its_run_is_detached_is_freed() -> None:
    transport = FakeTransport(workers=1)
    router = Router(transport)
    run = _Run(5)
    router.attach(run)

    class DetachingQueue(EventQueue):
        """Detaches the run between the router's lookup and its post."""

        def post(self, event: tuple[object, ...]) -> None:
            router.detach(run)
            super().post(event)

    run.queue = router.runs[5] = DetachingQueue()
    router.task_finished(run.base + 6, "fake-0", 0.1, None)
    assert transport.freed == [("fake-0", run.base + 6)]
    assert not run.queue.events


def test_completions_reported_together_are_one_event_of_their_run_or_one_per_run() -> None:
    router, first, second = _router_with_runs()
    together = [(second.base + 4, 0.1, None, ...), (second.base + 5, 0.2, 8, "value")]
    router.tasks_finished("fake-0", together)
    assert list(second.queue.events) == [(EV_FINISHED_MANY, "fake-0", together)]
    assert not first.queue.events
    second.queue.events.clear()
    # Runs that share the executor at once: each hears of its own.
    router.tasks_finished(
        "fake-0", [(first.base + 1, 0.1, None, ...), (second.base + 2, 0.2, None, "value")]
    )
    assert list(first.queue.events) == [(EV_FINISHED, 1, "fake-0", 0.1, None, ...)]
    assert list(second.queue.events) == [(EV_FINISHED, 2, "fake-0", 0.2, None, "value")]


def test_completions_reported_together_for_a_run_that_ended_or_never_read_are_freed() -> None:
    transport = FakeTransport(workers=1)
    router = Router(transport)
    ended, aborted = _Run(3), _Run(4)
    router.attach(ended)
    router.detach(ended)
    router.tasks_finished("fake-0", [(ended.base + 1, 0.1, None, ...)])
    router.attach(aborted)
    router.tasks_finished("fake-0", [(aborted.base + 2, 0.1, None, ...)])
    router.detach(aborted)
    assert transport.freed == [("fake-0", ended.base + 1), ("fake-0", aborted.base + 2)]
    assert not aborted.queue.events


class _CannotLoad(Unloaded):
    def load(self) -> object:
        raise ValueError("these bytes are not a pickle")


class _Together(FakeTransport):
    """Reports what each :meth:`submit` ran together, as a worker's batch is; the
    ``unreadable``-th result of the first batch, if given, cannot be loaded in the caller."""

    capabilities = Capabilities(survives_worker_loss=True)

    def __init__(self, unreadable: int | None = None) -> None:
        super().__init__(workers=1, slots=1000)
        self.unreadable = unreadable
        self.reported: list[list[Key]] = []

    def submit(self, tasks: Sequence[TaskSpec]) -> None:
        sink = self._events
        assert sink is not None
        together: list[tuple[Key, float, int | None, object]] = []

        class Gather:
            def task_finished(
                self,
                key: Key,
                worker: str,
                duration: float,
                nbytes: int | None,
                value: object = ...,
            ) -> None:
                together.append((key, duration, nbytes, value))

            def __getattr__(self, name: str) -> object:
                return getattr(sink, name)

        self._events = Gather()  # type: ignore[assignment]
        try:
            super().submit(tasks)
        finally:
            self._events = sink
        if not self.reported and self.unreadable is not None:
            key, duration, nbytes, _ = together[self.unreadable]
            together[self.unreadable] = (key, duration, nbytes, _CannotLoad())
        self.reported.append([entry[0] for entry in together])
        sink.tasks_finished(tasks[0].worker, together)  # type: ignore[attr-defined]


def test_what_follows_a_completion_that_ends_the_run_in_its_batch_is_freed() -> None:
    transport = _Together(unreadable=2)
    with fake_executor(transport, retries=0) as ex:
        with pytest.raises(SerializationError):
            ex.run([Op(tasks.inc, i) for i in range(6)])
        (batch,) = transport.reported
        assert len(batch) == 6
        freed = {key for _, key in transport.freed}
        assert set(batch[3:]) <= freed  # never applied: freed when the run was detached
        assert transport.held() == 0


def test_completions_reported_together_are_applied_like_one_by_one() -> None:
    transport = _Together()
    with fake_executor(transport) as ex:
        assert ex.run([Op(tasks.inc, i) for i in range(6)]) == [1, 2, 3, 4, 5, 6]
        assert [len(batch) for batch in transport.reported] == [6]


class _Silent(FakeTransport):
    """Takes tasks and never reports them."""

    def __init__(self) -> None:
        super().__init__(workers=1)
        self.submitted = threading.Event()

    def submit(self, tasks: Sequence[TaskSpec]) -> None:
        self.batches.append([spec.label for spec in tasks])
        self.submitted.set()


@pytest.mark.timeout(30)
def test_cancelling_arun_on_a_blocking_driver_cancels_its_tasks() -> None:
    transport = _Silent()
    with fake_executor(transport) as ex:

        async def main() -> None:
            async with anyio.create_task_group() as group:
                group.start_soon(ex.arun, Op(tasks.inc, 1))
                await anyio.to_thread.run_sync(transport.submitted.wait)
                group.cancel_scope.cancel()

        anyio.run(main)
        # The driver, on its own thread, stops and abandons the task it handed out.
        while not transport.cancelled:
            threading.Event().wait(0.01)
    assert len(transport.cancelled) == 1


class _Ending(FakeTransport):
    """Records which runs it was told are over."""

    def __init__(self) -> None:
        super().__init__(workers=1)
        self.finished_runs: list[int] = []
        self.keys: list[int] = []

    def submit(self, tasks: Sequence[TaskSpec]) -> None:
        self.keys.extend(spec.key for spec in tasks)
        super().submit(tasks)

    def run_finished(self, run: int) -> None:
        self.finished_runs.append(run)


def test_the_transport_hears_once_that_each_run_is_over_however_it_ended() -> None:
    transport = _Ending()
    with fake_executor(transport, retries=0) as ex:
        assert ex.run(Op(tasks.inc, 1)) == 2
        with pytest.raises(ValueError):
            ex.run(Op(tasks.fail, "on purpose"))
    runs = [key >> KEY_BITS for key in transport.keys]
    assert transport.finished_runs == runs
    assert len(set(runs)) == 2


class _Wide(FakeTransport):
    """One worker with room for many tasks at once (not in order)."""

    capabilities = Capabilities(survives_worker_loss=True)

    def __init__(self) -> None:
        super().__init__(workers=1, slots=1000)


def _gather(*values: int) -> list[int]:
    return list(values)


def _fan_run(ex: Executor, width: int) -> Run:
    """A run of ``width`` independent tasks and one that collects them, on ``ex``."""
    plan = Plan(Op(_gather, *[Op(tasks.inc, i) for i in range(width)]), None, None)
    run = Run(
        plan.graph,
        plan.targets,
        plan.inputs,
        ex.options,
        run_observers((), progress=False, report=None),
        throw=True,
    )
    ex._router.attach(run)  # type: ignore[attr-defined]
    run.start(ex._transport, dict(ex._workers))  # type: ignore[attr-defined]
    return run


def _finish(run: Run) -> None:
    """Step ``run`` to its end; it never waits: the fake transport reports as it submits."""
    while not run.finished:
        step(run)


def test_a_turn_ends_handing_out_tasks_and_applying_reports_and_the_next_goes_on() -> None:
    transport = _Wide()
    with fake_executor(transport) as ex:
        run = _fan_run(ex, 300)
        run.turn = 0.0  # every turn is over as soon as it is looked at
        run.dispatch()
        assert [len(batch) for batch in transport.batches] == [63]
        run.dispatch()
        assert len(run.queue.events) == 126  # the fake transport reports as it runs
        run.apply_events()
        assert len(run.queue.events) == 63
        _finish(run)
        (target,) = run.table.target_positions
        assert run.table.results[target] == list(range(1, 301))


def test_a_turn_ends_after_as_many_completions_reported_together_as_one_by_one() -> None:
    transport = _Together()
    with fake_executor(transport) as ex:
        run = _fan_run(ex, 120)
        run.turn = 0.0
        run.dispatch()
        run.dispatch()
        assert [len(batch) for batch in transport.reported] == [63, 57]
        run.apply_events()  # the first batch's 63 tasks, then the turn is over
        assert [len(event[2]) for event in run.queue.events] == [57]
        _finish(run)
        (target,) = run.table.target_positions
        assert run.table.results[target] == list(range(1, 121))


def test_a_turn_ends_calling_tasks_in_the_caller_and_the_next_goes_on() -> None:
    transport = FakeTransport(workers=1, in_caller=lambda func: True)
    with fake_executor(transport) as ex:
        run = _fan_run(ex, 300)
        run.turn = 0.0
        remaining = run.table.remaining
        run.dispatch()
        assert remaining - run.table.remaining == 63
        assert not transport.batches  # the rest waits for the next turn, not for a worker
        _finish(run)
        (target,) = run.table.target_positions
        assert run.table.results[target] == list(range(1, 301))
        assert not transport.batches


@pytest.mark.timeout(10)
def test_an_async_wait_of_a_stopped_queue_returns_at_once() -> None:
    """A queue stopped before its driver waits (the executor closed meanwhile: the wake
    found no waiter) must not wait for an event that will never come."""
    queue = EventQueue()
    queue.stopped = DispatcherError("closed")

    async def main() -> None:
        def call_soon(callback: Callable[[], object]) -> None:
            callback()

        await queue.wait_async(call_soon)

    anyio.run(main)
    queue.wait(None)  # and the blocking wait, with no timeout, neither


@pytest.mark.timeout(20)
@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_an_executor_closed_while_arun_plans_a_large_graph_stops_the_run(backend: str) -> None:
    """arun plans a large graph in a thread: an executor closed meanwhile ends the run
    with the error that says so. Its driver used to wait forever for tasks that the
    closed executor would never run."""
    ex = get_executor("async", backend=backend)
    new_run = ex._new_run

    def closed_meanwhile(plan: Plan, observers: Observers, throw: bool) -> Run:
        ex.close()
        return new_run(plan, observers, throw)

    ex._new_run = closed_meanwhile  # type: ignore[method-assign]
    node = Op(tasks.inc, 0)
    for _ in range(PLANNED_ASIDE):
        node = Op(tasks.inc, node)
    with pytest.raises(DispatcherError, match="closed while the run was going on"):
        anyio.run(ex.arun, node, backend=backend)


def _paused_before_taking_the_waker(queue: EventQueue, event: tuple[object, ...]) -> Any:
    """A thread posting ``event``, stopped (by a line trace) just before its line that
    takes the driver's waker, the window where another poster may wake the driver and
    the driver wait again; returns (thread, paused, resume)."""
    import inspect
    import sys

    lines, first = inspect.getsourcelines(EventQueue.post)
    (take,) = [
        first + i
        for i, line in enumerate(lines)
        if "self._waker.pop(" in line or "self._waker = None" in line
    ]
    paused, resume = threading.Event(), threading.Event()

    def trace(frame: Any, event_name: str, arg: Any) -> Any:
        if frame.f_code is not EventQueue.post.__code__:
            return None

        def line(frame: Any, event_name: str, arg: Any) -> Any:
            if event_name == "line" and frame.f_lineno == take:
                paused.set()
                resume.wait(30)
            return line

        return line

    def post() -> None:
        sys.settrace(trace)
        try:
            queue.post(event)
        finally:
            sys.settrace(None)

    return threading.Thread(target=post), paused, resume


def _soon(condition: Callable[[], bool]) -> bool:
    import time

    deadline = time.monotonic() + 10
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.001)
    return True


@pytest.mark.timeout(60)
def test_a_late_poster_never_takes_away_the_waker_of_the_drivers_next_wait() -> None:
    # P reads the waker, Q wakes the driver, which takes both events and waits again
    # with a new waker; P must not clear that one, or the next post wakes nobody.
    import asyncio

    queue = EventQueue()
    got: list[object] = []
    done = threading.Event()

    async def drive() -> None:
        loop = asyncio.get_running_loop()
        while len(got) < 3:
            while queue.events:
                got.append(queue.events.popleft())
            if len(got) < 3:
                await queue.wait_async(loop.call_soon_threadsafe, 20)
        done.set()

    driver = threading.Thread(target=asyncio.run, args=(drive(),), daemon=True)
    driver.start()
    assert _soon(lambda: bool(queue._waker))  # the driver waits
    late, paused, resume = _paused_before_taking_the_waker(queue, ("e1",))
    late.start()
    assert paused.wait(10)
    queue.post(("e2",))  # wakes the driver: it takes e1 and e2, then waits again
    assert _soon(lambda: len(got) == 2 and bool(queue._waker))
    resume.set()
    late.join(10)
    queue.post(("e3",))
    assert done.wait(10), "the driver slept through a post"
    driver.join(10)
    assert got == [("e1",), ("e2",), ("e3",)]
