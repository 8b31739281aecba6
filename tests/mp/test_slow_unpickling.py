"""A result or exception slow to unpickle holds up its own run only: the reader thread
never unpickles, the run's driver does (the conformance suite checks the rest)."""

from __future__ import annotations

import functools
import os
import signal
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import anyio
import mp_tasks
import pytest

from dispatcher import Op, get_executor, op
from dispatcher.testing import tasks

pytestmark = pytest.mark.timeout(90)

LONG = 300.0  # how long a held value waits at most: a guard, never reached


def shm_entries() -> set[str]:
    return {n for n in os.listdir("/dev/shm") if n.startswith("dispatcher-")}


def children() -> set[int]:
    """This process's children, once the helpers that outlive executors (the
    forkserver, the resource tracker) run."""
    import psutil

    with get_executor("mp", workers=1) as ex:
        ex.run(Op(tasks.inc, 1))
    return {p.pid for p in psutil.Process().children(recursive=True)}


def until(condition: Callable[[], bool]) -> None:
    """Wait until ``condition()`` holds (the per-test timeout ends a wait never over)."""
    while not condition():
        time.sleep(0.01)


def test_a_large_result_stays_whole_when_its_worker_dies_before_it_is_unpickled(
    tmp_path: Path,
) -> None:
    # Its segment is mapped on the reader as the report arrives: the dead worker's
    # segments are swept before the driver unpickles, and the value must not care.
    pytest.importorskip("numpy")
    log, gate, pid_path = tmp_path / "calls", tmp_path / "gate", tmp_path / "pid"
    log.mkdir()
    before, before_children = shm_entries(), children()
    with get_executor("mp", workers=2) as ex, ThreadPoolExecutor(1) as pool:
        made = Op(mp_tasks.held_array, str(log), str(gate), 4, str(pid_path))
        held = pool.submit(ex.run, made)
        try:
            until(lambda: tasks.calls(str(log), "held-loading") == 1)
            segments = shm_entries() - before
            assert segments, "the array did not come through shared memory"
            os.kill(int(pid_path.read_text()), signal.SIGKILL)
            until(lambda: not segments & shm_entries())  # swept
        finally:
            gate.touch()
        value = held.result()
        assert value.shape == (4 * 1024 * 1024 // 8,)
        assert float(value.sum()) == 7.0 * value.shape[0]
        assert ex.run(Op(tasks.inc, 1)) == 2
    assert shm_entries() == before
    assert children() == before_children


def test_a_run_cancelled_while_its_result_unpickles_holds_up_no_other_run(
    tmp_path: Path,
) -> None:
    # The unpickling is the user's code on the abandoned driver's thread: it cannot be
    # interrupted. The cancelled arun returns at once; the driver ends its run once the
    # unpickling returns.
    log, gate = tmp_path / "calls", tmp_path / "gate"
    log.mkdir()
    before, before_children = shm_entries(), children()
    made = op(tasks.make_held_when_loaded, label="held")(str(log), "held", str(gate), LONG, 1)
    with get_executor("mp", workers=2) as ex:

        async def interrupted() -> None:
            async with anyio.create_task_group() as group:
                group.start_soon(functools.partial(ex.arun, made))
                while tasks.calls(str(log), "held-loading") == 0:
                    await anyio.sleep(0.01)
                group.cancel_scope.cancel()

        try:
            anyio.run(interrupted)
            assert tasks.calls(str(log), "held-loaded") == 0  # still unpickling
            assert ex.run([Op(tasks.inc, i) for i in range(4)]) == [1, 2, 3, 4]
        finally:
            gate.touch()
        until(lambda: tasks.calls(str(log), "held-loaded") == 1)
        assert ex.run(Op(tasks.inc, 1)) == 2
    assert shm_entries() == before
    assert children() == before_children
