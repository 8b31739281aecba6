"""Entry point of the ``dask`` executor. Imports nothing heavy: distributed is loaded only
when an executor is made."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from dispatcher import Executor, ExecutorInfo, hookimpl

if TYPE_CHECKING:
    from distributed import Client


def make_executor(
    *,
    workers: int | None = None,
    retries: int = 2,
    retry_on: Sequence[type[BaseException]] | type[BaseException] = (),
    timeout: float | None = None,
    address: str | None = None,
    client: Client | None = None,
    threads_per_worker: int = 1,
    prefetch: int | None = None,
    dashboard_address: str | None = None,
) -> Executor:
    """An executor on a dask.distributed cluster.

    With neither ``address`` nor ``client``, a ``LocalCluster`` of ``workers`` processes
    (default: the CPUs this process may use) of ``threads_per_worker`` threads each is
    started, and closed with the executor. ``address`` is an existing scheduler's
    address (``tcp://host:8786``) or scheduler file; ``client`` an existing
    ``distributed.Client`` (left open). With either, ``workers`` is how many workers to
    wait for before the first run.
    """
    from ._transport import DaskTransport

    transport = DaskTransport(
        workers,
        threads_per_worker=threads_per_worker,
        address=address,
        client=client,
        prefetch=prefetch,
        dashboard_address=dashboard_address,
    )
    return Executor("dask", transport, retries=retries, retry_on=retry_on, timeout=timeout)


@hookimpl
def dispatcher_executors() -> list[ExecutorInfo]:
    return [
        ExecutorInfo(
            "dask",
            make_executor,
            "a dask.distributed cluster: local worker processes, or an existing scheduler",
            "dispatcher-dask",
            options=("address", "client", "threads_per_worker", "prefetch", "dashboard_address"),
        )
    ]
