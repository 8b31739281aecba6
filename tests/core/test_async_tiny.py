"""The ``async`` executor with threads calls a plain function proven tiny in the thread
that drives the run: never one with a timeout, never again one that turned out slow.
(That Ctrl-C still interrupts such a call: test_interrupt.py.)"""

from __future__ import annotations

import logging
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

import anyio
import pytest

from dispatcher import Executor, Op, TaskTimeoutError, get_executor, op
from dispatcher._tiny import PROVEN_AFTER, SLOW, TinyCalls
from dispatcher.testing import Recorder, tasks

GUARD = 30.0
"""How long a test waits for something that must happen at most: a guard, not a bound."""


def where(x: object) -> int:
    """The thread that called it."""
    return threading.get_ident()


def proven(ex: Executor, func: Callable[..., Any], *args: Any) -> None:
    """Run ``func`` until the executor has proven it tiny (its calls go to threads first)."""
    tiny: TinyCalls = ex._loop_transport.tiny  # type: ignore[attr-defined]
    for _ in range(50):
        if tiny.allows(func):
            return
        ex.run([Op(func, *args) for _ in range(4 * PROVEN_AFTER)])
    pytest.fail(f"{func.__name__} never proved tiny")


def test_a_function_proven_tiny_is_called_by_the_driving_thread() -> None:
    """Its first calls go to threads; once they have proven it cheaper than a hand-off,
    the thread driving the run calls it, for tasks ready together too, and its hooks
    name the worker every task of the executor is reported on."""
    here = threading.get_ident()
    with get_executor("async", threads=2) as ex:
        first = ex.run([Op(where, i) for i in range(4 * PROVEN_AFTER)])
        assert set(first) - {here}  # the first calls go to threads, and are timed there
        proven(ex, where, 0)
        recorder = Recorder()
        assert ex.run([Op(where, i) for i in range(8)], plugins=[recorder]) == [here] * 8
        workers = {event[2] for event in recorder.of("started") + recorder.of("finished")}
        assert workers == {"main"}


def test_the_first_run_learns_from_a_few_calls_and_calls_the_rest_itself() -> None:
    """Many calls of a function not yet learned: a few go to threads to be timed, the
    rest wait for their reports, and once those have proven it tiny, the driving thread
    calls the rest. (A machine too busy for calls of a microsecond to look tiny makes
    the executor learn nothing: hence a few fresh executors.)"""
    here = threading.get_ident()
    for _ in range(20):
        with get_executor("async", threads=2) as ex:
            called = ex.run([Op(where, i) for i in range(100)])
            if here in called:
                assert set(called) - {here}  # the calls that proved it, in threads
                return
    pytest.fail("no first run ever called a tiny function itself")


def test_a_function_being_learned_holds_back_no_thread_work() -> None:
    """A run sends as many calls of a function being learned as there are threads:
    when the calls are slow rather than tiny, every thread still has one."""
    barrier = threading.Barrier(8, timeout=GUARD)  # a guard against a hang, not a bound

    def together(x: int) -> int:
        barrier.wait()  # returns only once 8 calls run at once, on 8 threads
        return x

    with get_executor("async", threads=8) as ex:
        assert ex.run([Op(together, i) for i in range(16)]) == list(range(16))


def test_a_tiny_function_is_called_on_the_loop_of_a_run_that_needs_one() -> None:
    async def on_the_loop() -> int:
        await anyio.sleep(0)
        return threading.get_ident()

    with get_executor("async", threads=2) as ex:
        proven(ex, where, 0)
        loop, *called = ex.run([Op(on_the_loop), *[Op(where, i) for i in range(4)]])
        assert called == [loop] * 4


@pytest.mark.parametrize("slow", ["sleeps", "computes"])
def test_a_slow_call_sends_its_function_back_to_threads_and_frees_the_loop(slow: str) -> None:
    """Once one call in the driving thread took longer than SLOW (it blocked, or used the
    CPU that long), the function goes to threads again: a later call waiting for a
    coroutine of the same run no longer holds the loop that coroutine needs (called
    there, it would wait out its guard)."""
    released = threading.Event()

    def step(mode: str) -> bool:
        if mode == "sleeps":
            time.sleep(SLOW * 5)
        elif mode == "computes":
            until = time.thread_time() + SLOW * 5
            while time.thread_time() < until:
                pass
        elif mode == "wait":
            return released.wait(GUARD)
        return True

    async def release() -> bool:
        await anyio.sleep(0.01)
        released.set()
        return True

    with get_executor("async", threads=2) as ex:
        proven(ex, step, "fast")
        assert ex.run(Op(step, slow))  # called by the driving thread: it bars step
        assert not ex._loop_transport.tiny.allows(step)  # type: ignore[attr-defined]
        assert ex.run([Op(step, "wait"), Op(release)]) == [True, True]


def test_a_tiny_function_with_a_timeout_still_times_out() -> None:
    """A task with a timeout goes to a thread, abandoned at its deadline: called by the
    driving thread, the run would only end when the call returned."""
    for options in [{}, {"timeout": 0.2}]:  # the node's own timeout, the executor's
        released, returned = threading.Event(), threading.Event()

        def step(
            mode: str,
            released: threading.Event = released,
            returned: threading.Event = returned,
        ) -> bool:
            if mode == "wait":
                released.wait(GUARD / 3)
                returned.set()
            return True

        with get_executor("async", threads=2, **options) as ex:
            proven(ex, step, "fast")
            timed = op(step, timeout=0.2)("wait") if not options else Op(step, "wait")
            try:
                with pytest.raises(TaskTimeoutError):
                    ex.run(timed)
                assert not returned.is_set()  # the run ended before the call returned
            finally:
                released.set()


def test_a_tiny_call_that_holds_the_driving_thread_is_named(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A function proven tiny that then waits for another task of its run waits for
    ever (that task cannot start): the call is named, with what to do, while it waits."""
    import dispatcher._tiny as tiny

    monkeypatch.setattr(tiny, "HELD_WARNING", 0.3)
    named_once = threading.Event()

    class Named(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if "waits-for-its-peer" in record.getMessage():
                named_once.set()

    def step(mode: str) -> bool:
        if mode == "fast":
            return True
        # Waits for what it waits for (here: being named, so the run does end), then
        # holds on while the watcher looks a few more times.
        named_once.wait(GUARD)
        time.sleep(tiny.HELD_WARNING)
        return True

    handler = Named()
    logging.getLogger("dispatcher").addHandler(handler)
    try:
        with get_executor("async", threads=2) as ex:
            proven(ex, step, "fast")
            with caplog.at_level("WARNING", logger="dispatcher"):
                assert ex.run(op(step, label="waits-for-its-peer")("wait"))
    finally:
        logging.getLogger("dispatcher").removeHandler(handler)
    named = [r.getMessage() for r in caplog.records if "waits-for-its-peer" in r.getMessage()]
    assert len(named) == 1, named  # once per call
    assert "held the thread driving its run" in named[0]
    assert "timeout=" in named[0]


@pytest.mark.parametrize("on_a_loop", [False, True])
def test_a_tiny_function_may_run_a_graph_on_its_own_executor(on_a_loop: bool) -> None:
    async def coroutine(x: int) -> int:
        return x

    with get_executor("async", threads=2) as ex:

        def maybe_nested(depth: int) -> int:
            if depth == 0:
                return 0
            return ex.run(Op(tasks.inc, Op(maybe_nested, depth - 1)))  # type: ignore[no-any-return]

        proven(ex, maybe_nested, 0)
        other = Op(coroutine, 1) if on_a_loop else Op(tasks.inc, 0)
        assert ex.run([Op(maybe_nested, 3), Op(maybe_nested, 2), other]) == [3, 2, 1]


def test_tiny_calls_learn_from_consecutive_tiny_calls_and_bar_for_good() -> None:
    tiny = TinyCalls(lambda func: True, 2)
    changes = tiny.changes
    for _ in range(PROVEN_AFTER - 1):
        tiny.observe(where, 1e-6)
    tiny.observe(where, 1.0)  # a slow call in a thread breaks the streak, nothing more
    for _ in range(PROVEN_AFTER - 1):
        tiny.observe(where, 1e-6)
    assert not tiny.allows(where)
    tiny.observe(where, 1e-6)
    assert tiny.allows(where)
    assert tiny.changes > changes
    tiny.bar(where)
    for _ in range(2 * PROVEN_AFTER):
        tiny.observe(where, 1e-6)
    assert not tiny.allows(where)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads the thread's usage")
def test_a_call_kept_from_running_is_not_slow_of_its_own_doing() -> None:
    """The clock bars a function for a call that blocked or computed, not for one whose
    thread was preempted: one that did neither, however long the wall clock says."""
    clock = TinyCalls(lambda func: True, 2).clock()
    begun = time.perf_counter()
    clock.read(begun)
    assert not clock.own_doing(begun)  # neither blocked nor computed: preempted
    begun = time.perf_counter()
    time.sleep(SLOW)
    assert clock.own_doing(begun)
    begun = time.perf_counter()
    until = time.thread_time() + SLOW
    while time.thread_time() < until:
        pass
    assert clock.own_doing(begun)


def where_pair(a: object, b: object) -> int:
    """The thread that called it, with two inputs."""
    return threading.get_ident()


def test_a_tiny_task_reads_the_results_threads_made_where_they_are_kept() -> None:
    """Its inputs made by slow calls in threads, a proven-tiny task with two of them is
    called by the driving thread, not sent to a thread for want of holding them; and the
    inputs it read are dropped where they were kept."""
    here = threading.get_ident()
    with get_executor("async", threads=4) as ex:
        proven(ex, where_pair, 0, 1)
        pairs = [
            Op(where_pair, Op(tasks.sleep_then, 0.002, i), Op(tasks.sleep_then, 0.002, -i))
            for i in range(10)
        ]
        assert ex.run(pairs) == [here] * 10
        assert not ex._loop_transport.store  # type: ignore[attr-defined]
