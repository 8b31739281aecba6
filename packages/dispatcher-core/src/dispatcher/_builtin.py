"""Core's own executors, registered through the same hook as any plugin's."""

from __future__ import annotations

from typing import Any

from ._executor import Executor, ExecutorInfo
from ._hooks import hookimpl


def _sync(**options: Any) -> Executor:
    from ._inline import SyncExecutor

    options.pop("workers", None)  # one thread: nothing to size
    return SyncExecutor(**options)


def _async(**options: Any) -> Executor:
    from ._async import AsyncExecutor

    return AsyncExecutor(**options)


@hookimpl
def dispatcher_executors() -> list[ExecutorInfo]:
    from ._async import AsyncTransport
    from ._inline import InlineTransport

    return [
        ExecutorInfo(
            "sync",
            _sync,
            "every task inline in the calling thread, in a deterministic order",
            "dispatcher-core",
            capabilities=InlineTransport.capabilities,
        ),
        ExecutorInfo(
            "async",
            _async,
            "coroutines on an anyio event loop; plain functions in threads (threads=N) "
            "or inline (threads=0)",
            "dispatcher-core",
            options=("threads", "backend"),
            capabilities=AsyncTransport.capabilities,
        ),
    ]
