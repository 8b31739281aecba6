"""Keeping dask quiet about what dispatcher reports itself: failed tasks, restarted workers.

A dask worker logs a "Compute Failed" block (the task's key, its pickled call and the
exception) on ``distributed.worker`` for every task that raises. dispatcher raises the
failure itself, labelled with its node, so for dispatcher's own tasks that block is noise:
:class:`QuietFailures`, a worker plugin registered by the transport for its lifetime,
filters out the blocks of the tasks whose keys carry the transport's token, and nothing
else (other clients' tasks, and every other message, are logged as before).

A worker of the executor's own cluster that a task given up on takes whole is restarted
(:mod:`._giving_up`), a warning saying so; the check of such tasks may still be on its
way to it, and the scheduler, in the caller, then logs an error for each failed
"broadcast". :func:`quiet_broadcasts_to` drops those about such a worker, and only them.
"""

from __future__ import annotations

import logging
from typing import Any

from distributed.diagnostics.plugin import WorkerPlugin

__all__ = ["FailureFilter", "QuietFailures", "plugin_name", "quiet_broadcasts_to"]

WORKER_LOGGER = "distributed.worker"
SCHEDULER_LOGGER = "distributed.scheduler"


def plugin_name(token: str) -> str:
    """The name the plugin of the transport with ``token`` is registered under."""
    return f"dispatcher-quiet-{token}"


class QuietFailures(WorkerPlugin):  # type: ignore[misc]
    """A dask worker plugin that installs :class:`FailureFilter` on the worker's logger,
    and removes it when unregistered."""

    def __init__(self, token: str) -> None:
        self.token = token
        self._filter: FailureFilter | None = None

    def __getstate__(self) -> dict[str, Any]:
        return {"token": self.token, "_filter": None}

    def setup(self, worker: Any) -> None:
        self._filter = FailureFilter(self.token)
        logging.getLogger(WORKER_LOGGER).addFilter(self._filter)

    def teardown(self, worker: Any) -> None:
        if self._filter is not None:
            logging.getLogger(WORKER_LOGGER).removeFilter(self._filter)


class FailureFilter(logging.Filter):
    """Drops "Compute Failed" records about tasks whose key contains ``token``."""

    def __init__(self, token: str) -> None:
        super().__init__()
        self.token = token

    def filter(self, record: logging.LogRecord) -> bool:
        message, args = record.msg, record.args
        return not (
            isinstance(message, str)
            and message.startswith("Compute Failed")
            and isinstance(args, tuple)
            and bool(args)
            and self.token in str(args[0])
        )


class _BroadcastFilter(logging.Filter):
    """Drops the scheduler's "broadcast to ADDRESS failed" errors about ``addresses``."""

    def __init__(self) -> None:
        super().__init__()
        self.addresses: set[str] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.msg
        if isinstance(message, str) and message.startswith("broadcast to "):
            return message.split(" ", 3)[2] not in self.addresses
        return True


_broadcasts = _BroadcastFilter()


def quiet_broadcasts_to(address: str) -> None:
    """The worker at ``address`` is being restarted: its failed broadcasts are expected.
    (A restarted worker comes back under a new address; this one is not reused.)"""
    if not _broadcasts.addresses:
        logging.getLogger(SCHEDULER_LOGGER).addFilter(_broadcasts)
    _broadcasts.addresses.add(address)
