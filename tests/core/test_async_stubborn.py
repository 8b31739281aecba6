"""Coroutines that catch their cancellation and go on: the run still ends.

anyio and trio cancel a coroutine again at each of its waits; one that catches every
cancellation spins for ever, and used to keep its run (past its timeout, after a failure
elsewhere, or once its executor was closed) waiting for it.
"""

from __future__ import annotations

import logging
import threading

import anyio
import pytest

from dispatcher import DispatcherError, Op, TaskTimeoutError, get_executor, op
from dispatcher.testing import tasks

BACKENDS = ["asyncio", "trio"]


async def _ignore_cancellation() -> str:
    while True:
        try:
            await anyio.sleep(3600)
        except anyio.get_cancelled_exc_class():
            pass


def _fail_soon() -> None:
    import time

    time.sleep(0.2)
    raise ValueError("failed on purpose")


@pytest.mark.timeout(30)
@pytest.mark.parametrize("backend", BACKENDS)
def test_a_coroutine_ignoring_its_timeout_fails_with_a_timeout_that_says_so(backend: str) -> None:
    with get_executor("async", backend=backend) as ex:
        stubborn = op(_ignore_cancellation, label="stubborn", timeout=0.1)()
        result = ex.run(stubborn, throw=False)
        assert isinstance(result.error, TaskTimeoutError), result
        notes = "\n".join(getattr(result.error, "__notes__", []))
        assert "catching each cancellation" in notes, notes
        assert "re-raise it" in notes, notes
        assert ex.run(Op(tasks.inc, 1)) == 2  # the executor serves the next run


@pytest.mark.timeout(30)
@pytest.mark.parametrize("backend", BACKENDS)
def test_a_coroutine_ignoring_the_cancellation_after_a_failure_lets_the_run_end(
    backend: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="dispatcher.task")
    with get_executor("async", backend=backend) as ex:
        stubborn = op(_ignore_cancellation, label="stubborn")()
        with pytest.raises(ValueError, match="failed on purpose"):
            ex.run([stubborn, op(_fail_soon)()])
        assert ex.run(Op(tasks.inc, 1)) == 2
    warned = [r.getMessage() for r in caplog.records if "catching each" in r.getMessage()]
    assert len(warned) == 1, warned
    assert warned[0].startswith("'stubborn' went on"), warned


@pytest.mark.timeout(30)
@pytest.mark.parametrize("backend", BACKENDS)
def test_closing_the_executor_stops_a_coroutine_ignoring_its_cancellation(backend: str) -> None:
    ex = get_executor("async", backend=backend)
    closer = threading.Timer(0.3, ex.close)
    closer.start()
    try:
        with pytest.raises(DispatcherError, match="closed while the run was going on"):
            ex.run(op(_ignore_cancellation)())
    finally:
        closer.join()


@pytest.mark.timeout(30)
def test_a_coroutine_cleaning_up_after_its_cancellation_is_not_cut_short() -> None:
    """Cleanup shielded from the cancellation, even longer than the grace, runs whole:
    only a cancellation caught and ignored counts against the grace."""
    cleaned: list[str] = []

    async def cleans_up() -> None:
        try:
            await anyio.sleep(3600)
        finally:
            with anyio.CancelScope(shield=True):
                await anyio.sleep(1.5)
                cleaned.append("done")

    with get_executor("async") as ex:
        result = ex.run(op(cleans_up, timeout=0.1)(), throw=False)
        assert isinstance(result.error, TaskTimeoutError), result
        assert not getattr(result.error, "__notes__", None), result.error.__notes__
    assert cleaned == ["done"]
