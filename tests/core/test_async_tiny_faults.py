"""The ``async`` executor's calls on the driving thread, under a demanding user: a
proven function that turns slow by failing, and the watch that names long calls while
many runs come and go."""

from __future__ import annotations

import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

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
