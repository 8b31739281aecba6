"""The ``mp`` messages beyond those of :mod:`dispatcher.remote`: start-up, results other
workers need, and a worker's output forwarded to the caller."""

from __future__ import annotations

from typing import Any, NamedTuple

from dispatcher.remote import WireError, message

from ._wire import Payload

__all__ = [
    "Data",
    "Fetch",
    "InitFailed",
    "Initializing",
    "Log",
    "Output",
    "Ready",
    "Skipped",
    "Unshare",
]


@message("mp.ready")
class Ready(NamedTuple):
    """Worker to caller: started (and its initializer ran); tasks welcome."""

    pid: int


@message("mp.initializing")
class Initializing(NamedTuple):
    """Worker to caller: started; now running the initializer."""


@message("mp.init_failed")
class InitFailed(NamedTuple):
    """Worker to caller: the initializer raised; the worker exits."""

    error: WireError


@message("mp.fetch")
class Fetch(NamedTuple):
    """Caller to worker: serialise these results, other workers need them."""

    keys: list[int]


@message("mp.data")
class Data(NamedTuple):
    """Worker to caller: per key asked for, ``(key, payload)`` with the serialised value,
    ``(key, None)`` when the result is not here, or ``(key, reason)`` (a str) when it
    could not be serialised."""

    replies: list[tuple[int, Payload | str | None]]


@message("mp.output")
class Output(NamedTuple):
    """Worker to caller: text a task wrote to ``stdout`` or ``stderr``."""

    stream: str
    text: str


@message("mp.log")
class Log(NamedTuple):
    """Worker to caller: a log record's fields, for the caller's own handlers."""

    fields: dict[str, Any]


@message("mp.skipped")
class Skipped(NamedTuple):
    """Worker to caller: these cancelled tasks are not running here and never will (they
    were queued, already over, or have just ended)."""

    keys: list[int]


@message("mp.unshare")
class Unshare(NamedTuple):
    """Caller to worker: the run that gave its tasks the arguments in these shared-memory
    segments is over; drop their mappings."""

    segments: list[str]
