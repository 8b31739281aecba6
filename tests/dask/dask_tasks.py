"""Functions the dask tests run on workers (module level, importable there)."""

from __future__ import annotations

import os
import time
from typing import Any


def pid(_: Any = None) -> int:
    return os.getpid()


def sleep_then(seconds: float, value: Any) -> Any:
    time.sleep(seconds)
    return value


def report_pid_then_sleep(path: str, seconds: float) -> int:
    """Writes this worker's pid to ``path`` (so a test can kill it), then sleeps."""
    with open(path, "w") as f:
        f.write(str(os.getpid()))
    time.sleep(seconds)
    return os.getpid()


def total(*values: int) -> int:
    return sum(values)


def megabyte_after(seconds: float) -> bytes:
    time.sleep(seconds)
    return bytes(1 << 20)


def length(data: bytes) -> int:
    return len(data)
