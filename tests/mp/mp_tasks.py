"""Functions the mp fault tests run in worker processes (module level, importable)."""

from __future__ import annotations

import contextlib
import logging
import os
import time
from typing import Any

# Shared with every backend's tests.
from dispatcher.testing.tasks import pid as pid
from dispatcher.testing.tasks import report_pid_then_sleep as report_pid_then_sleep
from dispatcher.testing.tasks import sleep_then as sleep_then


def shout(text: str) -> str:
    print(text)
    logging.getLogger("dispatcher.tests").warning("logged %s", text)
    return text


INITIALIZED: list[str] = []


def remember(tag: str) -> None:
    INITIALIZED.append(tag)


def initialized() -> list[str]:
    return list(INITIALIZED)


def array(megabytes: int, fill: int) -> Any:
    import numpy as np

    return np.full(megabytes * 1024 * 1024 // 8, fill, dtype=np.float64)


def array_sum(*arrays: Any) -> float:
    return float(sum(float(a.sum()) for a in arrays))


def shm_segments(_: Any = None) -> int:
    return sum(1 for n in os.listdir("/dev/shm") if n.startswith("dispatcher-"))


def no_room_in_shm() -> None:
    import dispatcher_mp._wire as wire

    wire._SHM_HEADROOM = 1 << 62


def total(*values: Any) -> Any:
    return sum(values)


class Custom(BaseException):
    """A user's own BaseException subclass."""


class Unprintable(Exception):
    """An exception whose message cannot be made."""

    def __str__(self) -> str:
        raise RuntimeError("no message for you")


class Weird(Exception):
    """Pickles fine, but unpickles as a str."""

    def __reduce__(self) -> Any:
        return (str, ("x",))


def raise_keyboard_interrupt() -> None:
    raise KeyboardInterrupt("from a task")


def raise_system_exit() -> None:
    raise SystemExit(4)


def raise_generator_exit() -> None:
    raise GeneratorExit


def raise_custom() -> None:
    raise Custom("mine")


def raise_unprintable() -> None:
    raise Unprintable("hidden")


def raise_from_weird() -> None:
    raise ValueError("the visible one") from Weird()


class ExitsWhenUnpickled:
    """A result that pickles in the worker and raises SystemExit where it is unpickled."""

    def __reduce__(self) -> Any:
        import sys

        return (sys.exit, (3,))


def exits_when_unpickled() -> ExitsWhenUnpickled:
    return ExitsWhenUnpickled()


def closure_of(size: int, tag: int) -> Any:
    """A fresh function holding ``size`` bytes of its own."""
    payload = bytes([tag % 256]) * size

    def fresh() -> int:
        return len(payload) + tag

    return fresh


def rss(_: Any = None) -> int:
    """This process's resident memory, in bytes."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def raise_unpicklable() -> None:
    class LocalError(Exception):
        def __reduce__(self) -> Any:
            raise TypeError("not today")

    raise LocalError("made inside the task")


def fail_after(seconds: float) -> None:
    time.sleep(seconds)
    raise ValueError("failed on purpose")


def fail_if_exists(path: str) -> None:
    """An initializer that fails once ``path`` exists."""
    if os.path.exists(path):
        raise RuntimeError("this initializer fails now")


def hang_if_exists(path: str) -> None:
    """An initializer that never returns once ``path`` exists (and writes its pid there)."""
    if os.path.exists(path):
        with open(path, "w") as f:
            f.write(str(os.getpid()))
        time.sleep(3600)


def nested_run(executor: str) -> Any:
    """Run a small graph from inside a task."""
    from dispatcher import Op, run

    return run(Op(total, 1, 2), executor=executor)


def nested_failing_run(executor: str) -> Any:
    """Run a graph that fails from inside a task."""
    from dispatcher import Op, run

    return run(Op(raise_custom), executor=executor)


def held_array(log: str, gate: str, megabytes: int, pid_path: str) -> Any:
    """An array of ``megabytes`` (all 7.0) whose unpickling leaves ``held-loading`` in
    ``log`` and waits for the file ``gate``; this worker's pid written to ``pid_path``."""
    from dispatcher.testing.tasks import HeldWhenLoaded

    with open(pid_path, "w") as f:
        f.write(str(os.getpid()))
    return HeldWhenLoaded(log, "held", gate, 300.0, array(megabytes, 7))


def held_bytes(_: Any = None) -> tuple[int, int]:
    """This worker's pid, and the bytes of the results it holds from other runs than
    this task's own (whose results may be freed only after its next task here starts)."""
    from dispatcher.remote import _worker, held_here
    from dispatcher.transport import KEY_BITS

    time.sleep(0.05)  # so that every worker gets some
    runner = _worker._serving
    own = None if runner is None or runner.current is None else runner.current >> KEY_BITS
    return os.getpid(), sum(n for key, n in held_here().items() if key >> KEY_BITS != own)


def logged_sleep(log: str, name: str, seconds: float, value: Any) -> Any:
    """Leaves a ``name`` marker in ``log`` (see ``tasks.calls``), sleeps, returns ``value``."""
    from dispatcher.testing.tasks import logged

    logged(log, name, None)
    time.sleep(seconds)
    return value


def refuse_number(x: int) -> int:
    raise ValueError(f"bad {x}")


def boxed(x: int) -> list[int]:
    """``[x]``: a small value of a kind that is not carried along with its completion."""
    return [x]


def add_boxed(a: list[int], b: list[int]) -> list[int]:
    return [a[0] + b[0]]


def ones_noting_pid(path: str, seconds: float, n: int) -> Any:
    """``n`` ones after ``seconds``, the worker's pid written to ``path`` first."""
    import numpy as np

    with open(path, "w") as f:
        f.write(str(os.getpid()))
    time.sleep(seconds)
    return np.ones(n)


def clobber_descriptors(x: int) -> int:
    """``x``, after making every descriptor from 3 to 63 refer to /dev/null, as some
    daemonising code does: the worker's pipe to the caller among them."""
    null = os.open(os.devnull, os.O_RDWR)
    for fd in range(3, 64):
        if fd != null:
            with contextlib.suppress(OSError):
                os.dup2(null, fd)
    return x
