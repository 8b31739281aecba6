"""Keeping dask's workers quiet about dispatcher's failed tasks.

A dask worker logs a "Compute Failed" block (the task's key, its pickled call and the
exception) on ``distributed.worker`` for every task that raises. dispatcher raises the
failure itself, labelled with its node, so for dispatcher's own tasks that block is noise:
:class:`QuietFailures`, a worker plugin registered by the transport for its lifetime,
filters out the blocks of the tasks whose keys carry the transport's token, and nothing
else (other clients' tasks, and every other message, are logged as before).
"""

from __future__ import annotations

import logging
from typing import Any

from distributed.diagnostics.plugin import WorkerPlugin

__all__ = ["FailureFilter", "QuietFailures", "plugin_name"]

WORKER_LOGGER = "distributed.worker"


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
