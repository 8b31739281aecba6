"""Entry point of the ``mpi`` executor. Discovering it must not start MPI: nothing here
imports mpi4py; the transport does, when an executor is made."""

from __future__ import annotations

from collections.abc import Sequence

from dispatcher import Executor, ExecutorInfo, hookimpl


def make_executor(
    *,
    workers: int | None = None,
    retries: int = 2,
    retry_on: Sequence[type[BaseException]] | type[BaseException] = (),
    timeout: float | None = None,
    prefetch: int | None = None,
) -> Executor:
    """An executor on the worker ranks of the current ``python -m dispatcher_mpi`` job;
    ``prefetch``: the most tasks queued on a rank beyond the one it runs (default
    :data:`~._transport.PREFETCH`)."""
    from ._transport import PREFETCH, MpiTransport

    transport = MpiTransport(workers, PREFETCH if prefetch is None else prefetch)
    return Executor("mpi", transport, retries=retries, retry_on=retry_on, timeout=timeout)


@hookimpl
def dispatcher_executors() -> list[ExecutorInfo]:
    return [
        ExecutorInfo(
            "mpi",
            make_executor,
            "MPI ranks as workers (mpiexec -n N python -m dispatcher_mpi app.py); data moves "
            "rank to rank",
            "dispatcher-mpi",
            options=("prefetch",),
        )
    ]
