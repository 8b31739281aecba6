"""The scheduling options every executor accepts, checked once where they are given."""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["Options"]


class Options:
    """The scheduling options every executor accepts."""

    __slots__ = ("retries", "retry_on", "timeout")

    def __init__(
        self,
        retries: int = 2,
        retry_on: Sequence[type[BaseException]] | type[BaseException] = (),
        timeout: float | None = None,
    ) -> None:
        if not isinstance(retries, int) or retries < 0:
            raise ValueError(f"retries must be a non-negative int, got {retries!r}")
        if isinstance(retry_on, type):
            retry_on = (retry_on,)
        retry_on = tuple(retry_on)
        for cls in retry_on:
            if not (isinstance(cls, type) and issubclass(cls, BaseException)):
                raise TypeError(f"retry_on takes exception types, got {cls!r}")
        if timeout is not None and (not isinstance(timeout, (int, float)) or timeout <= 0):
            raise ValueError(f"timeout must be a positive number of seconds, got {timeout!r}")
        self.retries = retries
        self.retry_on = retry_on
        self.timeout = timeout
