"""Where a worker runs: its host, as its name says (``name@host``).

A leaf, so that the scheduler, the transports and the observers that show workers (the
progress bar, the report) read hosts the same way. The contract is told in
:mod:`dispatcher.transport`, which exports both functions.
"""

from __future__ import annotations

__all__ = ["worker_host", "worker_name"]


def worker_name(name: str, host: str | None) -> str:
    """The name of worker ``name`` on ``host``: ``name@host``, or ``name`` alone for a
    worker on the caller's host (``None``)."""
    return name if host is None else f"{name}@{host}"


def worker_host(worker: str) -> str | None:
    """The host a worker runs on, as its name says (see :func:`worker_name`); ``None``:
    the caller's host."""
    _, at, host = worker.rpartition("@")
    return host if at else None
