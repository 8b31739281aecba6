"""Tasks given large plain arguments (importable by worker processes)."""

from __future__ import annotations

from typing import Any

SEEN: list[Any] = []
"""The arguments this worker's ``same_as_before`` tasks were given, kept alive."""


def item_plus_size(values: Any, i: int) -> float:
    return float(values[i]) + len(values)


def first_item_length(pair: Any, i: int, *, extra: Any = b"") -> int:
    return len(pair[0]) + len(extra) + i


def same_as_before(values: Any, i: int) -> bool:
    """Was this worker's every task so far given this very object?"""
    SEEN.append(values)
    return all(seen is values for seen in SEEN)


def set_first(values: Any, i: int) -> float:
    """Change the argument in place; its first item as it was."""
    first = float(values[0])
    values[0] = -1.0
    return first


def mappings_held(_: Any = None) -> int:
    """Shared arguments this worker holds mapped."""
    from dispatcher_mp import _shared_arguments

    return len(_shared_arguments._MAPPED)


def argument_segments(values: Any, caller: int) -> int:
    """How many segments of large arguments the process ``caller`` has in /dev/shm."""
    import os

    mine = f"dispatcher-{caller}-"
    return sum(1 for n in os.listdir("/dev/shm") if n.startswith(mine) and "-a-" in n)


def sleep_given(values: Any, seconds: float) -> int:
    import time

    time.sleep(seconds)
    return len(values)


def die_once_given(values: Any, log: str) -> int:
    """Kills its own worker the first time, then returns the argument's length."""
    from dispatcher.testing.tasks import die_once

    return int(die_once(log, "given", len(values)))


def fail_at(values: Any, i: int, bad: int) -> int:
    if i == bad:
        raise ValueError(f"task {i} fails on purpose")
    return i


def length_plus(text: Any, i: int) -> int:
    return len(text) + i
