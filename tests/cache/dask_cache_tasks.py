"""Task functions for the dask cache tests that call ``run_task`` in this process: a
module of their own, so that they pickle by reference (test modules are not importable)."""

from __future__ import annotations

import time


class SlowToStore:
    """A result that takes ``seconds`` to pickle, so to store; its copies pickle at once."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds

    def __reduce__(self) -> tuple[type, tuple[float]]:
        time.sleep(self.seconds)
        return (SlowToStore, (0.0,))


def quick(seconds: float) -> SlowToStore:
    """Returns at once a result that takes ``seconds`` to store."""
    return SlowToStore(seconds)


def late(seconds: float) -> str:
    """Returns after ``seconds``."""
    time.sleep(seconds)
    return "late"


async def aquick(seconds: float) -> SlowToStore:
    """:func:`quick`, awaited."""
    return SlowToStore(seconds)
