"""Functions the dask tests run on workers (module level, importable there)."""

from __future__ import annotations

import time

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
