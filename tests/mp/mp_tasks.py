"""Functions the mp fault tests run in worker processes (module level, importable)."""

from __future__ import annotations

import logging
import os
import time
from typing import Any


def pid(_: Any = None) -> int:
    return os.getpid()


def sleep_then(seconds: float, value: Any) -> Any:
    time.sleep(seconds)
    return value


def report_pid_then_sleep(path: str, seconds: float) -> int:
    with open(path, "w") as f:
        f.write(str(os.getpid()))
    time.sleep(seconds)
    return os.getpid()


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
