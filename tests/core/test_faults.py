"""Faults in core itself: bad options, abandoned thread tasks, tasks that block the loop.

The fault checks that apply to every backend live in the conformance suite
(:mod:`dispatcher.testing`); these are the ones about core's own machinery.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Iterator, Sequence
from typing import Any

import pytest

from dispatcher import Op, TaskTimeoutError, get_executor, op, run
from dispatcher._threads import DaemonThreadPool
from dispatcher.testing import FakeTransport, fake_executor, tasks
from dispatcher.transport import TaskSpec

pytestmark = pytest.mark.timeout(60)

BAD_TIMEOUTS = [0, -1, -0.5, float("nan"), float("-inf"), True, "1", b"1", [1]]


# -- options are checked where they are given -------------------------------------------


@pytest.mark.parametrize("executor", ["sync", "async"])
@pytest.mark.parametrize("bad", BAD_TIMEOUTS, ids=repr)
def test_bad_executor_timeouts_are_refused_at_the_call(executor: str, bad: object) -> None:
    with pytest.raises(ValueError, match="timeout") as info:
        get_executor(executor, timeout=bad)
    assert repr(bad) in str(info.value)
    with pytest.raises(ValueError, match="timeout"):
        run(Op(tasks.inc, 1), executor=executor, timeout=bad)


@pytest.mark.parametrize("executor", ["sync", "async"])
def test_an_infinite_executor_timeout_is_no_timeout(executor: str) -> None:
    with get_executor(executor, timeout=math.inf) as ex:
        assert ex.options.timeout is None
        assert ex.run(Op(tasks.inc, 1)) == 2


@pytest.mark.parametrize("executor", ["sync", "async"])
def test_a_timeout_past_any_float_is_no_timeout(executor: str) -> None:
    """float(10**400) raised OverflowError, where a bad timeout is a ValueError."""
    with get_executor(executor, timeout=10**400) as ex:
        assert ex.options.timeout is None
        assert ex.run(Op(tasks.inc, 1)) == 2


def test_a_bad_worker_count_for_async_is_named_as_given() -> None:
    with pytest.raises(ValueError, match="workers must be"):
        get_executor("async", workers=2.0)


class RecordingTransport(FakeTransport):
    """Keeps the timeout of every task it is sent."""

    def __init__(self) -> None:
        super().__init__()
        self.timeouts: list[float | None] = []

    def submit(self, tasks: Sequence[TaskSpec]) -> None:
        self.timeouts.extend(spec.timeout for spec in tasks)
        super().submit(tasks)


def test_an_infinite_node_timeout_reaches_no_transport_and_beats_the_default() -> None:
    transport = RecordingTransport()
    unlimited = op(tasks.inc, timeout=math.inf)(1)
    limited = op(tasks.inc, timeout=3)(unlimited)
    with fake_executor(transport, timeout=5) as ex:
        assert ex.run(Op(tasks.inc, limited)) == 4
    assert transport.timeouts == [None, 3.0, 5.0]


@pytest.mark.parametrize(
    "threads", [0, 2], ids=["inline", "threads"]
)  # in the caller's loop and on the transport
def test_an_infinite_node_timeout_overrides_the_executors(threads: int) -> None:
    slow = op(tasks.sleep_then, timeout=math.inf)(0.3, "done")
    assert run(slow, executor="async", threads=threads, timeout=0.05) == "done"


def test_retry_on_that_is_not_exception_types_is_a_clear_error() -> None:
    with pytest.raises(TypeError, match=r"retry_on takes an exception type or a sequence.*5"):
        get_executor("sync", retry_on=5)
    with pytest.raises(TypeError, match="retry_on takes an exception type or a sequence"):
        get_executor("sync", retry_on="ValueError")
    with pytest.raises(TypeError, match="retry_on takes exception types, got 5"):
        get_executor("sync", retry_on=[ValueError, 5])
    with get_executor("sync", retry_on={ValueError, KeyError}) as ex:
        assert set(ex.options.retry_on) == {ValueError, KeyError}


def test_retries_must_be_a_count() -> None:
    for bad in (True, -1, 1.5, "2"):
        with pytest.raises(ValueError, match="retries"):
            get_executor("sync", retries=bad)


# -- abandoned thread tasks never hold a thread another task needs ------------------------


@pytest.fixture
def gate() -> Iterator[threading.Event]:
    """An event the blocked tasks wait on; set at the end so their threads can end."""
    event = threading.Event()
    yield event
    event.set()


def together(count: int) -> list[Op]:
    """``count`` tasks that can only finish while all of them run at the same time."""
    barrier = threading.Barrier(count, timeout=30)  # a guard against a hang, not a bound

    def meet(i: int) -> int:
        barrier.wait()
        return i

    return [Op(meet, i) for i in range(count)]


def test_tasks_abandoned_at_their_timeout_free_their_threads(gate: threading.Event) -> None:
    with get_executor("async", threads=2) as ex:
        stuck = [op(gate.wait, label=f"stuck{i}", timeout=0.3)() for i in range(3)]
        results = ex.run(stuck, throw=False)
        assert all(isinstance(r.error, TaskTimeoutError) for r in results)
        # ...and every later run still gets both threads, while the three still wait.
        assert ex.run(together(2)) == [0, 1]
        assert not gate.is_set()


def test_tasks_abandoned_by_fail_fast_free_their_threads(gate: threading.Event) -> None:
    started = threading.Semaphore(0)

    def blocked() -> None:
        started.release()
        gate.wait()

    def fail_once_both_started() -> None:
        started.acquire()
        started.acquire()
        raise ValueError("first")

    with get_executor("async", threads=3) as ex:
        with pytest.raises(ValueError, match="first"):
            ex.run([Op(blocked), Op(blocked), Op(fail_once_both_started)])
        # Two threads are stuck in abandoned tasks: this run needs all three at once.
        assert ex.run(together(3)) == [0, 1, 2]
        assert not gate.is_set()


async def blocks_the_loop(seconds: float) -> str:
    time.sleep(seconds)  # never awaits: the deadline cannot cancel it
    return "late"


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_a_coroutine_blocking_the_loop_past_its_timeout_fails(backend: str) -> None:
    node = op(blocks_the_loop, timeout=0.05)(0.3)
    with pytest.raises(TaskTimeoutError):
        run(node, executor="async", backend=backend)
    assert run(op(blocks_the_loop, timeout=30)(0), executor="async", backend=backend) == "late"


# -- the pool itself ----------------------------------------------------------------------


def test_pool_abandoned_job_stops_counting_and_its_thread_ends_with_it() -> None:
    pool = DaemonThreadPool(1, name="test-pool")
    release, ran = threading.Event(), threading.Event()
    stuck = pool.submit(release.wait)
    queued = pool.submit(ran.set)
    assert not ran.wait(0.2)  # one thread, busy
    stuck.abandon()
    assert ran.wait(30)
    before = {t.name for t in threading.enumerate() if t.name.startswith("test-pool")}
    assert len(before) == 2
    release.set()
    for thread in threading.enumerate():
        if thread.name.startswith("test-pool") and thread.name.endswith("-1"):
            thread.join(30)
            assert not thread.is_alive()
    queued.abandon()  # already done: nothing changes
    again = threading.Event()
    pool.submit(again.set)
    assert again.wait(30)
    pool.close()


def test_pool_asks_whether_running_jobs_are_still_wanted() -> None:
    pool = DaemonThreadPool(1, name="test-pool-wanted")
    release, ran = threading.Event(), threading.Event()
    unwanted = {"flag": False}
    pool.submit(release.wait, lambda: unwanted["flag"])
    pool.submit(ran.set)
    assert not ran.wait(0.2)
    unwanted["flag"] = True
    pool.submit(lambda: None)  # the pool needs a thread: it asks, and starts one
    assert ran.wait(30)
    release.set()
    pool.close()


def test_pool_abandoned_queued_job_never_runs() -> None:
    pool = DaemonThreadPool(1, name="test-pool-queued")
    release = threading.Event()
    ran: list[str] = []
    pool.submit(release.wait)
    skipped = pool.submit(lambda: ran.append("skipped"))
    skipped.abandon()
    done = threading.Event()
    pool.submit(done.set)
    release.set()
    assert done.wait(30)
    assert ran == []
    pool.close()


def test_pool_thread_survives_a_job_that_raises(caplog: Any) -> None:
    pool = DaemonThreadPool(1, name="test-pool-raises")

    def raises() -> None:
        raise SystemExit(3)

    pool.submit(raises)
    done = threading.Event()
    pool.submit(done.set)
    assert done.wait(30)
    assert any("raised" in record.message for record in caplog.records)
    pool.close()


# -- the notes a failure leaves on its exception ------------------------------------------

SHARED = ValueError("one exception object, raised by every call")


def raise_shared(x: int) -> int:
    raise SHARED


def runs_a_failing_graph(executor: str) -> Any:
    return run(Op(tasks.fail, "inner failure"), executor=executor)


def _failure_notes(error: BaseException) -> list[str]:
    return [n for n in getattr(error, "__notes__", []) if n.startswith("dispatcher: raised by")]


@pytest.mark.parametrize("executor", ["sync", "async"])
def test_one_exception_object_raised_again_names_the_node_that_raised_it_last(
    executor: str,
) -> None:
    """Each run used to add its note to the object, which named the first run's node
    first and grew without end in a program that runs again and again."""
    for x in range(3):
        with pytest.raises(ValueError) as info:
            run(Op(raise_shared, x), executor=executor)
        notes = _failure_notes(info.value)
        assert len(notes) == 1, notes
        assert f"raise_shared({x})" in notes[0]


@pytest.mark.parametrize("executor", ["sync", "async"])
def test_a_nested_runs_failure_names_both_nodes(executor: str) -> None:
    for _ in range(2):  # (raised again: a new object, each note once)
        with pytest.raises(ValueError, match="inner failure") as info:
            run(Op(runs_a_failing_graph, executor), executor=executor)
        notes = _failure_notes(info.value)
        assert len(notes) == 2, notes
        assert "fail('inner failure')" in notes[0]
        assert "runs_a_failing_graph(" in notes[1]


@pytest.mark.parametrize("kind", ["partial", "coroutine"])
def test_sync_keeps_no_result_past_its_last_reader(kind: str) -> None:
    """Results of tasks the transport runs (not plain functions) stayed in its store
    after the run, one more with every run of the process's sync executor."""
    import asyncio
    import functools

    async def ainc(x: int) -> int:
        await asyncio.sleep(0)
        return x + 1

    step = functools.partial(tasks.add, 1) if kind == "partial" else ainc
    with get_executor("sync") as ex:
        for _ in range(3):
            chain = Op(step, 0)
            for _ in range(20):
                chain = Op(step, chain)
            assert ex.run(chain) == 21
        assert ex._transport.store == {}  # type: ignore[attr-defined]
