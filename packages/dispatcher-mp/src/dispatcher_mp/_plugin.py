"""Entry point of the ``mp`` executor. Imports nothing heavy: the transport module is
loaded only when an executor is made."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from dispatcher import Executor, ExecutorInfo, hookimpl


def make_executor(
    *,
    workers: int | None = None,
    retries: int = 2,
    retry_on: Sequence[type[BaseException]] | type[BaseException] = (),
    timeout: float | None = None,
    start_method: str | None = None,
    initializer: Callable[..., Any] | None = None,
    initargs: Sequence[Any] = (),
    prefetch: int = 256,
    shared_memory: bool = True,
) -> Executor:
    """An executor on ``workers`` processes (default: the CPUs this process may use)."""
    from ._transport import MpTransport

    transport = MpTransport(
        workers,
        start_method=start_method,
        initializer=initializer,
        initargs=initargs,
        prefetch=prefetch,
        shared_memory=shared_memory,
    )
    return Executor("mp", transport, retries=retries, retry_on=retry_on, timeout=timeout)


@hookimpl
def dispatcher_executors() -> list[ExecutorInfo]:
    return [
        ExecutorInfo(
            "mp",
            make_executor,
            "worker processes on this machine; large buffers through shared memory",
            "dispatcher-mp",
            options=("start_method", "initializer", "initargs", "prefetch", "shared_memory"),
        )
    ]
