"""Core's own executors, registered (by :mod:`dispatcher._registry`) through the same hook
as any plugin's."""

from __future__ import annotations

from typing import Any

from ._executor import Executor, ExecutorInfo
from ._hooks import hookimpl
from ._version import __version__

DISTRIBUTION = "dispatcher-core"


def _sync(**options: Any) -> Executor:
    from ._inline import SyncExecutor

    # Accepted, so that code switching executors by name keeps its options; ignored (one
    # thread: nothing to size), which the description says where executors are listed.
    options.pop("workers", None)
    return SyncExecutor(**options)


def _async(**options: Any) -> Executor:
    from ._async_executor import AsyncExecutor  # anyio is imported when an async executor is made

    return AsyncExecutor(**options)


@hookimpl
def dispatcher_executors() -> list[ExecutorInfo]:
    return [
        ExecutorInfo(
            "sync",
            _sync,
            "every task inline in the calling thread, in a deterministic order; "
            "workers= is ignored, a timeout fails a task only once it returns",
            DISTRIBUTION,
            __version__,
        ),
        ExecutorInfo(
            "async",
            _async,
            "coroutines on an anyio event loop; plain functions in threads (threads=N) "
            "or inline (threads=0)",
            DISTRIBUTION,
            __version__,
            options=("threads", "backend"),
        ),
    ]
