"""The ``async`` executor's calls on the driving thread, under a demanding user: a
proven function that turns slow by failing, and the watch that names long calls while
many runs come and go."""

from __future__ import annotations

import gc
import operator
import sys
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable
from typing import Any

import anyio
import pytest

import dispatcher._tiny as tiny_module
from dispatcher import Executor, Op, get_executor
from dispatcher._tiny import PROVEN_AFTER, SLOW, CallClock, TinyCalls

GUARD = 30.0
"""How long a test waits for something that must happen at most: a guard, not a bound."""


def tiny_calls(ex: Executor) -> TinyCalls:
    return ex._loop_transport.tiny  # type: ignore[attr-defined,no-any-return]


def proven(ex: Executor, func: Callable[..., Any], *args: Any) -> None:
    """Run ``func`` until the executor has proven it tiny (its calls go to threads first)."""
    for _ in range(50):
        if tiny_calls(ex).allows(func):
            return
        ex.run([Op(func, *args) for _ in range(4 * PROVEN_AFTER)])
    pytest.fail(f"{func.__name__} never proved tiny")


@pytest.mark.timeout(60)
def test_a_tiny_function_that_raises_after_holding_the_thread_goes_back_to_threads() -> None:
    """A call that blocks, then raises (a request that times out), held the driving
    thread as long as one that returns: its function is barred too, and the retry it
    earns already runs in a worker thread. (On a loop: a run without one calls a lone
    task itself when nothing else of it is out, barred or not.)"""
    here = threading.get_ident()
    callers: list[int] = []

    def step(mode: str) -> bool:
        if mode == "fails late":
            callers.append(threading.get_ident())
            if len(callers) == 1:
                time.sleep(SLOW * 5)
                raise ConnectionError("no answer")
        return True

    async def coroutine() -> bool:
        return True

    with get_executor("async", threads=2, retries=1, retry_on=(ConnectionError,)) as ex:
        proven(ex, step, "fast")
        assert ex.run([Op(step, "fails late"), Op(coroutine)]) == [True, True]
        assert not tiny_calls(ex).allows(step)
        assert callers[0] == here
        assert callers[1] != here  # the retry went to a thread


@pytest.mark.timeout(60)
def test_the_watch_of_long_calls_outlives_runs_coming_and_going(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Every pass of every run's hot loop adds a clock to the watched set, from its own
    thread, while the watch copies that set: a copy that meets a change is made again,
    the watch never stops."""
    monkeypatch.setattr(tiny_module, "HELD_WARNING", 0.001)  # it looks every 0.1 ms
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # threads switch often: in the middle of a copy too
    try:
        tiny = TinyCalls(lambda func: True, 2)
        tiny.clock()  # starts the watch, if no run has yet
        watcher = tiny_module._watcher
        assert watcher is not None
        assert watcher.is_alive()
        until = time.monotonic() + 3.0

        def churn() -> None:
            alive: deque[CallClock] = deque(maxlen=100)  # many runs at once
            while time.monotonic() < until and watcher.is_alive():
                alive.append(tiny.clock())  # added to the watched set, dropped later

        threads = [threading.Thread(target=churn) for _ in range(3)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(GUARD)
        assert watcher.is_alive()
    finally:
        sys.setswitchinterval(interval)


class Payload:
    """What a closure made for one run holds (a large array, say)."""


def test_closures_made_afresh_for_each_run_are_not_kept_alive() -> None:
    """The executor learns which functions are tiny, and which return awaitables, but
    keeps none alive: a closure made for one run goes, with what it holds, when its graph
    does, however many runs make one."""
    payloads: weakref.WeakSet[Payload] = weakref.WeakSet()
    with get_executor("async", threads=2) as ex:
        for _ in range(20):
            payload = Payload()
            payloads.add(payload)

            def fresh(x: int, payload: Payload = payload) -> int:
                return x + 1

            assert ex.run([Op(fresh, i) for i in range(4 * PROVEN_AFTER)])[-1] == 4 * PROVEN_AFTER
            del payload, fresh
        gc.collect()
        assert len(payloads) == 0


def test_callables_without_weak_references_are_learned_too() -> None:
    """A callable that takes no weak reference (an itemgetter, a method descriptor) is
    remembered all the same."""
    first = operator.itemgetter(0)
    with get_executor("async", threads=2) as ex:
        proven(ex, first, (1, 2))
        proven(ex, str.upper, "a")
        assert ex.run([Op(first, (i, 0)) for i in range(5)]) == list(range(5))
        assert ex.run([Op(str.upper, "b"), Op(first, "c")]) == ["B", "c"]


@pytest.mark.timeout(60)
def test_calls_held_back_for_probes_wait_for_those_probes_only() -> None:
    """A function whose probes all report without deciding (its streak broken, then
    begun again) is probed again: the rest of its calls do not wait for an unrelated
    task of the run to end."""
    lock = threading.Lock()
    calls = 0

    def flaky(i: int) -> int:
        nonlocal calls
        with lock:
            calls += 1
            nth = calls
        if nth in (2, 4):  # the first probes: tiny, not, tiny, not, tiny, tiny
            time.sleep(SLOW)
        return i

    async def unrelated() -> bool:
        """Out until every call of flaky has returned (or the guard ran out)."""
        until = time.monotonic() + GUARD
        while calls < 40 and time.monotonic() < until:
            await anyio.sleep(0.01)
        return calls == 40

    with get_executor("async", threads=1) as ex:  # one thread: the probes report in order
        assert ex.run([Op(unrelated), *[Op(flaky, i) for i in range(40)]]) == [
            True,
            *range(40),
        ]


_failed_once: set[str] = set()


def _fails_once(tag: str) -> str:
    if tag not in _failed_once:
        _failed_once.add(tag)
        raise ValueError(tag)
    return tag


@pytest.mark.timeout(30)
def test_a_task_sent_ahead_of_an_input_that_already_failed_is_sent_again() -> None:
    # A task sent ahead of its input waits for it in the transport; that input failed in
    # its thread just before (the failure found nobody waiting), and its retry ran on the
    # driving thread (proven tiny meanwhile): nothing would ever put the result where the
    # waiting task looked for it, and the run waited forever.
    _failed_once.clear()
    with get_executor("async", threads=2, retries=1, retry_on=(ValueError,)) as ex:
        transport: Any = ex._loop_transport
        failed = threading.Event()
        report_failure, send_ahead = transport._failed, transport._sent_ahead

        def failure_reported(*args: Any) -> None:
            report_failure(*args)
            tiny_calls(ex).changes += 1  # (the run asks again where calls run)
            failed.set()

        def sent_ahead_after_the_failure(spec: Any) -> bool:
            failed.wait(GUARD)
            return send_ahead(spec)  # type: ignore[no-any-return]

        transport._failed = failure_reported
        transport._sent_ahead = sent_ahead_after_the_failure
        transport.runs_in_caller = lambda func: func is _fails_once and failed.is_set()
        targets = [Op(len, Op(_fails_once, "a")), Op(len, Op(_fails_once, "bc"))]
        assert ex.run(targets) == [1, 2]


@pytest.mark.timeout(30)
def test_a_chain_sent_ahead_of_an_input_that_fails_is_sent_again_link_by_link() -> None:
    # A chain sent ahead waits in the transport, each link for the one before. Its first
    # input failed: the next link was put back, but the links after it went on waiting
    # for results that the retries, called on the driving thread, never put in the store.
    _failed_once.clear()
    with get_executor("async", threads=2, retries=1, retry_on=(ValueError,)) as ex:
        transport: Any = ex._loop_transport
        failed = threading.Event()
        report_failure = transport._failed

        def failure_reported(*args: Any) -> None:
            report_failure(*args)
            tiny_calls(ex).changes += 1  # (the run asks again where calls run)
            failed.set()

        transport._failed = failure_reported
        transport.runs_in_caller = lambda func: failed.is_set()
        chains = [Op(len, Op(str, Op(_fails_once, tag))) for tag in ("a", "bc")]
        assert ex.run(chains) == [1, 2]
