"""The scheduling options every executor accepts, checked once where they are given."""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterable
from typing import Any

__all__ = ["NO_LIMIT", "Options", "check_timeout", "task_timeout"]

NO_LIMIT = math.inf
"""A timeout of ``math.inf``: no limit. A node given it runs unlimited whatever the
executor's timeout; it never reaches a transport as a number (the scheduler sends
``None``)."""


def check_timeout(timeout: Any, where: str = "timeout") -> float | None:
    """``timeout`` as a float, or ``None`` when not given; ``math.inf`` stays ``math.inf``.

    A timeout is a positive number of seconds, or ``math.inf`` for none. Anything else --
    ``nan``, zero, negatives, booleans, strings and other non-numbers -- is a
    ``ValueError`` naming the value, raised where it is given rather than when a task
    would run.
    """
    if timeout is None:
        return None
    # bool is an int, but timeout=True is a mistake, not one second.
    if isinstance(timeout, bool) or not isinstance(timeout, numbers.Real):
        raise ValueError(
            f"{where} must be a positive number of seconds (or math.inf for none), "
            f"got {type(timeout).__name__}: {timeout!r}"
        )
    try:
        seconds = float(timeout)
    except OverflowError:  # an int past any float (10**400): as good as none
        seconds = math.inf
    if not seconds > 0:  # also catches nan, which compares false with everything
        raise ValueError(
            f"{where} must be a positive number of seconds (or math.inf for none), got {timeout!r}"
        )
    return seconds


def _check_retry_on(retry_on: Any) -> tuple[type[BaseException], ...]:
    if isinstance(retry_on, type):
        retry_on = (retry_on,)
    elif isinstance(retry_on, (str, bytes)) or not isinstance(retry_on, Iterable):
        raise TypeError(
            f"retry_on takes an exception type or a sequence of them, "
            f"got {type(retry_on).__name__}: {retry_on!r}"
        )
    types = tuple(retry_on)
    for cls in types:
        if not (isinstance(cls, type) and issubclass(cls, BaseException)):
            raise TypeError(f"retry_on takes exception types, got {cls!r}")
    return types


def check_count(name: str, value: object, least: int, most: tuple[int, str] | None = None) -> int:
    """``value``, a count option called ``name`` (``workers``, ``threads``, ``retries``...)
    that must be at least ``least``, and at most ``most[0]`` when given (``most[1]`` says
    what sets that limit); a ``ValueError`` naming it otherwise. ``True`` is no count,
    though Python takes it for 1."""
    if isinstance(value, bool) or not isinstance(value, int) or value < least:
        kind = {0: "non-negative", 1: "positive"}.get(least, f"at-least-{least}")
        raise ValueError(f"{name} must be a {kind} int, got {value!r}")
    if most is not None and value > most[0]:
        raise ValueError(f"{name}={value!r} is more than this machine allows: {most[1]}")
    return value


class Options:
    """The scheduling options every executor accepts.

    ``timeout`` is kept as ``None`` for "no limit", ``math.inf`` included, so that no
    transport ever sees an infinite deadline.
    """

    __slots__ = ("retries", "retry_on", "timeout")

    def __init__(
        self,
        retries: int = 2,
        retry_on: Iterable[type[BaseException]] | type[BaseException] = (),
        timeout: float | None = None,
    ) -> None:
        check_count("retries", retries, 0)
        seconds = check_timeout(timeout)
        self.retries = retries
        self.retry_on = _check_retry_on(retry_on)
        self.timeout = None if seconds == NO_LIMIT else seconds


def task_timeout(own: float | None, default: float | None) -> float | None:
    """A task's timeout: its node's own (``op(f, timeout=...)``), else the run's; ``None``
    for none, ``op(f, timeout=math.inf)`` included, whatever the run's."""
    timeout = own if own is not None else default
    return None if timeout == NO_LIMIT else timeout
