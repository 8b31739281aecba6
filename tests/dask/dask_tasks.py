"""Functions the dask tests run on workers (module level, importable there)."""

from __future__ import annotations

import asyncio
import os
import re
import threading
import time
from typing import Any

# Shared with every backend's tests.
from dispatcher.testing.tasks import pid as pid
from dispatcher.testing.tasks import report_pid_then_sleep as report_pid_then_sleep
from dispatcher.testing.tasks import sleep_then as sleep_then


def total(*values: int) -> int:
    return sum(values)


def megabyte_after(seconds: float) -> bytes:
    time.sleep(seconds)
    return bytes(1 << 20)


def length(data: bytes) -> int:
    return len(data)


def block_after(previous: bytes | None, link: int, bad: int = -1) -> bytes:
    """A fresh 64 KiB block counting the links so far in its first byte; link ``bad``
    fails."""
    if link == bad:
        raise ValueError(f"link {link} is bad")
    count = 0 if previous is None else previous[0] + 1
    return bytes([count % 256]) * (64 * 1024)


def first_byte(data: bytes) -> int:
    return data[0]


def values_held(data: bytes) -> int:
    """How many values the worker running this holds (``data`` among them)."""
    from distributed import get_worker

    return len(get_worker().data)


def started_then_slept(seconds: float, *_: object) -> float:
    """When this call started (the clock every process of one machine shares), after
    sleeping ``seconds``."""
    start = time.time()
    time.sleep(seconds)
    return start


def forever(*_: object) -> None:
    """Never returns (a task dask cannot stop)."""
    threading.Event().wait()


def plain_failure() -> None:
    """Fails, run as a plain dask task beside dispatcher's own."""
    raise RuntimeError("a plain dask task failed")


def stall_first_time(path: str) -> int:
    """The first call writes its worker's pid to ``path`` (so a test can freeze it) and
    sleeps for an hour; later calls return their worker's pid at once."""
    if os.path.exists(path):
        return os.getpid()
    with open(path + ".tmp", "w") as f:
        f.write(str(os.getpid()))
    os.rename(path + ".tmp", path)
    time.sleep(3600)
    return os.getpid()


async def forever_async(*_: object) -> None:
    """A coroutine task that never returns unless cancelled."""
    await asyncio.Event().wait()


def hold_the_gil(*_: object) -> None:
    """Holds the GIL from its first instruction for ever, as a long call into C code does:
    the regular expression engine backtracks without releasing it (2**60 steps)."""
    re.match(r"(a*)*b", "a" * 60)


def raise_on(bad: int, i: int) -> int:
    """``i``, or a ValueError naming it when it is ``bad``."""
    if i == bad:
        raise ValueError(f"raise_on({i})")
    return i


def mark_then_wait(path: str, go: str) -> None:
    """Creates ``path``, then waits (up to a minute) for ``go`` to exist."""
    with open(path, "w"):
        pass
    deadline = time.monotonic() + 60
    while not os.path.exists(go) and time.monotonic() < deadline:
        time.sleep(0.01)


def wait_then(path: str, go: str, value: int) -> int:
    """``value``, once :func:`mark_then_wait` has returned."""
    mark_then_wait(path, go)
    return value


def state_of(key: str, dask_worker: Any = None) -> str | None:
    """The state of task ``key`` on this worker, if it knows it."""
    task = dask_worker.state.tasks.get(key)
    return None if task is None else str(task.state)


def batches_sent(dask_worker: Any = None) -> int:
    """How many batches this worker has written to the scheduler so far."""
    return int(dask_worker.batched_stream.batch_count)


def completions_sent(since: int, dask_worker: Any = None) -> int:
    """How many tasks this worker reported finished to the scheduler after its first
    ``since`` batches."""
    stream = dask_worker.batched_stream
    written = stream.batch_count - since
    batches = list(stream.recent_message_log)[-written:] if written else []
    return sum(
        m.get("op") == "task-finished"
        for batch in batches
        if isinstance(batch, list)
        for m in batch
    )


def reports_in_batches(since: int, dask_worker: Any = None) -> list[list[str]]:
    """The batches this worker wrote to the scheduler after its first ``since`` that
    carry a task's report, each as its messages' ops ("report" for a report)."""
    stream = dask_worker.batched_stream
    written = stream.batch_count - since
    batches = list(stream.recent_message_log)[-written:] if written else []
    found = []
    for batch in batches:
        if not isinstance(batch, list):
            continue
        ops = [
            "report" if str(m.get("topic")).startswith("dispatcher-stats-") else m.get("op")
            for m in batch
        ]
        if "report" in ops:
            found.append(ops)
    return found


class Locked:
    """A value that cannot be pickled: it holds a lock."""

    def __init__(self, value: int) -> None:
        self.value = value
        self.lock = threading.Lock()


def _refuse_loading(value: int) -> Any:
    raise RuntimeError("this value cannot be loaded on another process")


class LoadsOnlyWhereMade:
    """A value that pickles, but whose unpickling raises."""

    def __init__(self, value: int) -> None:
        self.value = value

    def __reduce__(self) -> tuple[Any, ...]:
        return (_refuse_loading, (self.value,))


class ExitsWhenPickled:
    """A value whose pickling raises SystemExit."""

    def __reduce__(self) -> tuple[Any, ...]:
        raise SystemExit("no pickling")


def make(kind: str, value: int, seconds: float) -> Any:
    """A value of ``kind`` after ``seconds`` (long enough for its siblings to run at
    once, on every worker)."""
    time.sleep(seconds)
    return {"locked": Locked, "loads-only-where-made": LoadsOnlyWhereMade}[kind](value)


def values_of(*made: Any) -> int:
    return sum(m.value for m in made)


def exits_when_pickled() -> ExitsWhenPickled:
    return ExitsWhenPickled()
