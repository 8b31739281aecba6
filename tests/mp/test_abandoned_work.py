"""Abandoned work: a task no run wants any more (its run failed fast, was interrupted or
cancelled) must not hold up the next run on the same executor."""

from __future__ import annotations

import os
import signal
import threading
import time

import anyio
import mp_tasks
import pytest

from dispatcher import Op, get_executor, op

pytestmark = pytest.mark.timeout(60)

FOREVER = 3600.0


def quick_run(ex: object) -> None:
    """A run with a task for each worker slot: some are placed on every worker."""
    nodes = [Op(mp_tasks.sleep_then, 0.01, i) for i in range(8)]
    assert ex.run(nodes) == list(range(8))  # type: ignore[attr-defined]


def test_a_task_abandoned_by_fail_fast_does_not_hold_up_the_next_run() -> None:
    with get_executor("mp", workers=2, retries=0) as ex:
        quick_run(ex)  # both workers up
        stuck = op(mp_tasks.sleep_then, label="stuck")(FOREVER, None)
        boom = op(mp_tasks.fail_after, label="boom")(0.5)
        with pytest.raises(ValueError, match="on purpose"):
            ex.run([stuck, boom])
        quick_run(ex)


def test_a_task_abandoned_by_ctrl_c_does_not_hold_up_the_next_run() -> None:
    with get_executor("mp", workers=1) as ex:
        quick_run(ex)
        timer = threading.Timer(1.0, os.kill, (os.getpid(), signal.SIGINT))
        timer.start()
        try:
            with pytest.raises(KeyboardInterrupt):
                ex.run(op(mp_tasks.sleep_then)(FOREVER, None))
        finally:
            timer.join()
        quick_run(ex)


def test_a_task_abandoned_by_a_cancelled_arun_does_not_hold_up_the_next_run() -> None:
    with get_executor("mp", workers=1) as ex:
        quick_run(ex)

        async def interrupted() -> None:
            with anyio.move_on_after(1.0):
                await ex.arun(op(mp_tasks.sleep_then)(FOREVER, None))

        anyio.run(interrupted)
        quick_run(ex)


def test_a_worker_whose_abandoned_tasks_end_at_once_is_kept() -> None:
    with get_executor("mp", workers=1, retries=0) as ex:
        first = ex.run(Op(mp_tasks.pid))
        boom = op(mp_tasks.fail_after, label="boom")(0.2)
        quick = [op(mp_tasks.sleep_then)(0, i) for i in range(20)]
        with pytest.raises(ValueError, match="on purpose"):
            ex.run([boom, *quick])
        time.sleep(0.5)  # past the grace a worker has to confirm
        assert ex.run(Op(mp_tasks.pid)) == first


@pytest.mark.parametrize("seconds", [0.1, 2.0], ids=["ends-within-grace", "restarted"])
def test_a_failed_run_leaves_nothing_held_on_the_workers(seconds: float) -> None:
    with get_executor("mp", workers=2, retries=0) as ex:
        quick_run(ex)
        data = op(mp_tasks.array)(8, 1)
        readers = [op(mp_tasks.sleep_then)(seconds, data) for _ in range(3)]
        boom = op(mp_tasks.fail_after, label="boom")(0.05)
        with pytest.raises(ValueError, match="on purpose"):
            ex.run([*readers, boom])
        time.sleep(seconds + 0.5)  # the abandoned tasks are over, one way or the other
        held = ex.run([op(mp_tasks.held_bytes)(i) for i in range(8)])
        assert {nbytes for _, nbytes in held} == {0}, held
