"""No capacity left: a run whose tasks no worker can take fails, naming why, instead of
waiting for ever -- the one rule in the scheduler, seen through a transport that pauses
its workers the way a real one does when tasks it gave up on hold them."""

from __future__ import annotations

import threading
import time
import types
from collections.abc import Mapping, Sequence

import anyio
import pytest

from dispatcher import DependencyError, DispatcherError, Op, TaskTimeoutError, _capacity, op
from dispatcher._driver import EventQueue, drive_async
from dispatcher._plan import Plan
from dispatcher._plugins import run_observers
from dispatcher._scheduler import Run
from dispatcher.testing import FakeTransport, fake_executor, tasks
from dispatcher.transport import EventSink, TaskSpec

pytestmark = pytest.mark.timeout(30)

WAIT = 0.3


def stuck() -> None:
    """Stands for a task that never returns: the transport below gives up on it."""


class _Holding(FakeTransport):
    """A task labelled ``stuck...`` is given up on at once (it fails with a timeout) and
    holds its worker's only slot for good: the worker is paused, as ``mpi`` and ``dask``
    do, until :meth:`release` gives the slot back."""

    paused_wait = WAIT

    def submit(self, tasks: Sequence[TaskSpec]) -> None:
        events = self._events
        assert events is not None
        for spec in tasks:
            if spec.label.startswith("stuck"):
                events.task_failed(spec.key, spec.worker, TaskTimeoutError(spec.label, 1.0), 1.0)
                events.worker_paused(spec.worker, f"still running {spec.label!r}, given up on")
            else:
                super().submit([spec])

    def release(self, worker: str) -> None:
        assert self._events is not None
        self._events.worker_added(worker, self.slots)

    def capacity_advice(self) -> str:
        return "(make the stuck tasks return)"


def _hold_every_worker(ex: object, transport: _Holding) -> None:
    held = [op(stuck, label=f"stuck-{i}")() for i in range(len(transport.names))]
    results = ex.run(held, throw=False)  # type: ignore[attr-defined]
    assert all(isinstance(r.error, TaskTimeoutError) for r in results)


def test_a_run_no_worker_can_take_fails_naming_each_worker_and_why() -> None:
    transport = _Holding(workers=2)
    with fake_executor(transport, retries=0) as ex:
        _hold_every_worker(ex, transport)
        with pytest.raises(DispatcherError, match="no capacity left") as raised:
            ex.run(op(tasks.inc, label="next")(1))
    message = str(raised.value)
    assert "'next' waits for one" in message
    assert "  fake-0: still running 'stuck-0', given up on" in message
    assert "  fake-1: still running 'stuck-1', given up on" in message
    assert message.endswith("(make the stuck tasks return)")
    # Not raised by a node on some worker: no note saying so.
    assert not getattr(raised.value, "__notes__", None)


def test_without_throw_each_waiting_node_gets_the_error_and_its_dependents_are_skipped() -> None:
    transport = _Holding(workers=1)
    with fake_executor(transport, retries=0) as ex:
        _hold_every_worker(ex, transport)
        first = op(tasks.inc, label="first")(1)
        second = op(tasks.inc, label="second")(2)
        after = op(tasks.add, label="after")(first, second)
        results = ex.run([first, second, after], throw=False)
    assert all(isinstance(r.error, DispatcherError) for r in results)
    assert "no capacity left" in str(results[0].error)
    assert "'first', 'second' wait for one" in str(results[0].error)
    assert isinstance(results[2].error, DependencyError)


def test_the_wait_counts_from_the_pause_so_later_runs_do_not_wait_again(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    transport = _Holding(workers=1)
    transport.paused_wait = 3600.0
    with fake_executor(transport, retries=0) as ex:
        _hold_every_worker(ex, transport)
        # An hour after the pause, by the rule's clock: a run started now fails at once
        # (counted from its own start, it would wait an hour, and time out here).
        later = types.SimpleNamespace(monotonic=lambda: time.monotonic() + 3600.0)
        monkeypatch.setattr(_capacity, "time", later)
        with pytest.raises(DispatcherError, match=r"no worker has taken a task for 36\d\d\.\d s"):
            ex.run(Op(tasks.inc, 1))


def test_a_worker_back_within_the_wait_takes_the_tasks() -> None:
    transport = _Holding(workers=1)
    transport.paused_wait = 20.0
    with fake_executor(transport, retries=0) as ex:
        _hold_every_worker(ex, transport)
        timer = threading.Timer(0.2, transport.release, ["fake-0"])
        timer.start()
        assert ex.run(Op(tasks.inc, 1)) == 2
        timer.join()


def test_a_run_with_tasks_out_waits_for_them_whatever_the_pauses() -> None:
    # Only a run with nothing out is stalled: a task still running will report.
    transport = _Holding(workers=2)
    with fake_executor(transport, retries=0) as ex:
        held = ex.run(op(stuck, label="stuck-0")(), throw=False)
        assert isinstance(held.error, TaskTimeoutError)
        assert ex.run([Op(tasks.inc, i) for i in range(4)]) == [1, 2, 3, 4]


class _Gone(FakeTransport):
    """Starts with no worker, and says none will come."""

    def start(self, events: EventSink) -> Mapping[str, int]:
        self._events = events
        events.no_worker_left("the test executor has no worker left: none could start")
        return {}

    def arrive(self) -> None:
        assert self._events is not None
        self._events.worker_added("fake-0", 1)


def test_no_worker_left_fails_every_run_at_once_with_the_transports_reason() -> None:
    transport = _Gone(workers=1)
    with fake_executor(transport) as ex:
        for _ in range(2):  # a later run too
            with pytest.raises(DispatcherError, match="none could start"):
                ex.run(Op(tasks.inc, 1))
        transport.arrive()  # a worker after all: that lifts it
        assert ex.run(Op(tasks.inc, 1)) == 2


def test_an_event_loop_driver_wakes_by_the_deadline_without_a_report() -> None:
    transport = _Holding(workers=1)

    async def drive(run: Run, workers: Mapping[str, int], call_soon: object) -> None:
        await drive_async(run, transport, workers, call_soon)  # type: ignore[arg-type]

    async def main() -> None:
        import asyncio

        loop = asyncio.get_running_loop()
        with fake_executor(transport, retries=0) as ex:
            _hold_every_worker(ex, transport)
            plan = Plan(Op(tasks.inc, 1), None, None)
            run = Run(
                plan.graph,
                plan.targets,
                plan.inputs,
                ex.options,
                run_observers((), progress=False, report=None),
                throw=True,
            )
            ex._router.attach(run)  # type: ignore[attr-defined]
            try:
                await drive(run, dict(ex._workers), loop.call_soon_threadsafe)  # type: ignore[attr-defined]
            finally:
                ex._router.detach(run)  # type: ignore[attr-defined]
            assert isinstance(run.error, DispatcherError)
            assert "no capacity left" in str(run.error)

    anyio.run(main)


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_an_async_wait_ends_at_its_timeout(backend: str) -> None:
    queue = EventQueue()

    async def main() -> float:
        started = time.monotonic()
        await queue.wait_async(lambda f: f(), 0.05)
        return time.monotonic() - started

    assert anyio.run(main, backend=backend) >= 0.04


class _Lost(FakeTransport):
    """Its only worker is lost as the first task starts, and not replaced until
    :meth:`arrive`: a cluster with no worker left, waiting for one."""

    def submit(self, tasks: Sequence[TaskSpec]) -> None:
        events = self._events
        assert events is not None
        for spec in tasks:
            events.worker_lost(spec.worker, "its host went down", running=[])

    def arrive(self) -> None:
        assert self._events is not None
        self._events.worker_added("fake-back", 1)


class _Back(_Lost):
    def submit(self, tasks: Sequence[TaskSpec]) -> None:
        if all(spec.worker == "fake-back" for spec in tasks):
            self.stores.setdefault("fake-back", {})
            FakeTransport.submit(self, tasks)
        else:
            super().submit(tasks)


def test_a_run_with_no_worker_at_all_says_it_waits_and_goes_on_when_one_arrives(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(_capacity, "NO_WORKER_WARNING", 0.1)
    monkeypatch.setattr(_capacity, "NO_WORKER_REPEAT", 0.1)
    transport = _Back(workers=1)
    with fake_executor(transport, retries=0) as ex:
        warned = threading.Event()

        def arrive_once_warned() -> None:
            while "waited" not in caplog.text:
                time.sleep(0.02)
            warned.set()
            transport.arrive()

        helper = threading.Thread(target=arrive_once_warned, daemon=True)
        with caplog.at_level("WARNING", logger="dispatcher"):
            helper.start()
            assert ex.run(op(tasks.inc, label="lonely")(1)) == 2
        helper.join(5)
    assert warned.is_set()
    assert "'lonely' has waited" in caplog.text
    assert "the executor has none (lost: fake-0 (its host went down))" in caplog.text


class _Slow(_Holding):
    """As :class:`_Holding`, but other tasks report from a thread a little later, so the
    run waits for them with a task out."""

    def submit(self, tasks: Sequence[TaskSpec]) -> None:
        later = [spec for spec in tasks if not spec.label.startswith("stuck")]
        super().submit([spec for spec in tasks if spec.label.startswith("stuck")])
        if later:
            threading.Timer(0.6, FakeTransport.submit, [self, later]).start()


def test_a_run_that_waited_for_a_worker_does_not_spin_once_it_has_one(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Once the worker was back, the wait for the task's report used the stale deadline
    # of the wait for a worker: the driver spun, burning a core until the report came.
    waits = 0
    wait = EventQueue.wait

    def counted(self: EventQueue, timeout: float | None) -> None:
        nonlocal waits
        waits += 1
        wait(self, timeout)

    transport = _Slow(workers=1)
    transport.paused_wait = 0.4  # passes while the task is out
    with fake_executor(transport, retries=0) as ex:
        _hold_every_worker(ex, transport)
        threading.Timer(0.1, transport.release, ["fake-0"]).start()
        monkeypatch.setattr(EventQueue, "wait", counted)
        assert ex.run(Op(tasks.inc, 1)) == 2
    assert waits < 50, f"the driver woke {waits} times in about a second"
