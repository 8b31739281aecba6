"""Reaching a dask cluster: an existing one by address or scheduler file, or a local one
started for the executor; and what dispatcher calls its workers."""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from dispatcher import DispatcherError
from dispatcher.remote import check_count, ctrl_c_blocked_for_children, ctrl_c_held
from dispatcher.transport import worker_name

if TYPE_CHECKING:
    from distributed import Client, Future, LocalCluster


def name_of(address: str, host: str | None) -> str:
    """What dispatcher calls the dask worker at ``address`` on ``host`` (the host as the
    scheduler knows it, the address's own if it knows none): ``dask-PORT@HOST``, as
    every backend names a worker with its host, so that placement counts the links
    between hosts and observers show them. A worker restarted under a new address is a
    new worker, with a new name."""
    _, _, location = address.rpartition("://")
    where, _, port = location.rpartition(":")
    if not port.isdigit():  # not host:port (an in-process address, say)
        where, port = location, location
    return worker_name(f"dask-{port}", host or where.strip("[]") or None)


class WorkerNames:
    """The name dispatcher knows each dask worker by (:func:`name_of`), and back: kept
    for every worker seen, as a late event may name one that is gone."""

    def __init__(self) -> None:
        self.of: dict[str, str] = {}
        """Address -> name."""
        self.address: dict[str, str] = {}
        """Name -> address."""

    def add(self, address: str, host: str | None) -> str:
        """The name of the worker at ``address``, named on first sight."""
        name = self.of.get(address)
        if name is None:
            name = self.of[address] = name_of(address, host)
            self.address[name] = address
        return name


def check_options(
    address: str | None,
    client: Client | None,
    workers: int | None,
    threads_per_worker: int,
    prefetch: int | None,
) -> None:
    """Refuse options that cannot go together, or counts that are none, before anything
    is started or reached. ``workers`` is how many to start, or to wait for; ``None``:
    the CPUs here, or whatever the cluster has."""
    if address is not None and client is not None:
        raise TypeError("give the dask executor address= or client=, not both")
    if workers is not None:
        check_count("workers", workers, 1)
    check_count("threads_per_worker", threads_per_worker, 1)
    if prefetch is not None:
        check_count("prefetch", prefetch, 0)


def reach(
    client: Client | None,
    address: str | None,
    workers: int | None,
    threads_per_worker: int,
    dashboard_address: str | None,
) -> tuple[LocalCluster | None, Client]:
    """The client to run through: ``client`` itself, one of the scheduler at ``address``,
    or one of a ``LocalCluster`` started here, returned with it (to be closed after)."""
    if client is not None:
        return None, client
    if address is not None:
        return None, connect(address, workers)
    return start_local(workers, threads_per_worker, dashboard_address)


def connect(address: str, workers: int | None) -> Client:
    """A client of the scheduler at ``address`` (``tcp://host:port``, or the path of a
    scheduler file as dask-mpi and dask-jobqueue write them), once it has ``workers``."""
    from distributed import Client

    if "://" not in address and (address.endswith(".json") or os.sep in address):
        _await_scheduler_file(address)
        client = Client(scheduler_file=address, set_as_default=False)
    else:
        client = Client(address, set_as_default=False)
    if workers:
        try:
            client.wait_for_workers(workers)
        except BaseException:
            client.close()
            raise
    return client


SCHEDULER_FILE_WAIT = 60.0
"""Seconds to wait for a scheduler file to appear (a batch job's scheduler writes it when it
starts): dask's client would wait for ever."""


def _await_scheduler_file(path: str) -> None:
    deadline = time.monotonic() + SCHEDULER_FILE_WAIT
    while not os.path.isfile(path):
        if time.monotonic() > deadline:
            raise FileNotFoundError(
                f"no dask scheduler file at {path!r} after {SCHEDULER_FILE_WAIT:g} s: give "
                f"address= the file the scheduler writes (dask scheduler "
                f"--scheduler-file PATH), or its address, tcp://host:port"
            )
        time.sleep(0.1)


def start_local(
    workers: int | None, threads_per_worker: int, dashboard_address: str | None
) -> tuple[LocalCluster, Client]:
    """A ``LocalCluster`` of worker processes (default: one per CPU this process may use)
    and a client of it."""
    from distributed import Client, LocalCluster, get_worker

    with contextlib.suppress(ValueError):  # ValueError: not in a dask task
        get_worker()
        raise DispatcherError(
            "a dask executor cannot start a cluster of its own inside a dask task (a "
            "worker's processes cannot have children); run a graph inside a task with "
            "executor='sync' or 'async', give address= of a running cluster, or make it "
            "part of the outer graph"
        )
    scheduler: dict[str, Any] = {"worker_ttl": worker_ttl()}
    if not dashboard_address:
        # Without a dashboard the scheduler still serves /health: on any free port, not
        # the dashboard's usual one.
        scheduler["dashboard_address"] = ":0"
    # A Ctrl-C while the cluster starts is raised once it has, and is closed again: cut
    # short, it left a half-started cluster to distributed's exit handler, which failed.
    with ctrl_c_held() as interrupted:
        try:
            # The cluster's event loop thread, started inside, keeps SIGINT blocked, and so
            # do the worker processes it starts, now and on every restart, until
            # dask_setup has them ignore it.
            with ctrl_c_blocked_for_children():
                cluster = LocalCluster(
                    n_workers=workers or _cpus(),
                    threads_per_worker=threads_per_worker,
                    processes=True,
                    dashboard_address=dashboard_address,
                    scheduler_kwargs=scheduler,
                    **_with_own_preload(),  # each worker runs dask_setup below as it starts
                )
        except Exception:
            if interrupted():  # its workers died of it: "Nanny failed to start"
                raise KeyboardInterrupt from None
            raise
        try:
            client = Client(cluster, set_as_default=False)
            if interrupted():
                client.close()
                raise KeyboardInterrupt
        except BaseException:
            cluster.close()
            raise
    return cluster, client


def _with_own_preload() -> dict[str, list[Any]]:
    """The workers' preloads: the ones configured (``distributed.worker.preload``, which
    a ``preload=`` argument would replace), then this module, with no arguments."""
    import dask

    preload = list(dask.config.get("distributed.worker.preload") or [])
    argv = list(dask.config.get("distributed.worker.preload-argv") or [])
    if argv and isinstance(argv[0], str):  # one list of arguments for every preload
        argv = [argv] * len(preload)
    elif not argv:
        argv = [[]] * len(preload)
    return {"preload": [*preload, __name__], "preload_argv": [*argv, []]}


def dask_setup(worker: Any) -> None:
    """In each worker process of a cluster started here: Ctrl-C is the caller's. The
    terminal sends it to every process of its group, and the workers, children of the
    caller, died of it with a traceback each, to be restarted for the next run (seconds
    per worker); the caller ends its run on it, and its workers stay for the next."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # one already waiting is dropped
        if hasattr(signal, "pthread_sigmask"):  # blocked by the start (ctrl_c_blocked_for_children)
            signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})


SILENT_WORKER_TTL = 30.0
"""Seconds a worker of a cluster started by the executor may go without a word to its
scheduler (frozen, or a task holding the GIL in C code) before the scheduler restarts it
through its nanny (it notices between one and two such periods after the last word). dask's
own default, five minutes, is kept for when the user configured another value."""

_STOCK_WORKER_TTL = 300.0  # distributed.scheduler.worker-ttl as dask ships it


def worker_ttl() -> float | None:
    """The worker time-to-live for a cluster started here: :data:`SILENT_WORKER_TTL`,
    unless ``distributed.scheduler.worker-ttl`` was configured to something else than
    dask's stock five minutes (``None`` there: never)."""
    import dask
    from dask.utils import parse_timedelta

    configured = dask.config.get("distributed.scheduler.worker-ttl")
    if configured is None:
        return None
    seconds = float(parse_timedelta(configured))
    return SILENT_WORKER_TTL if seconds == _STOCK_WORKER_TTL else seconds


def keep_workers(cluster: LocalCluster, loop: Any) -> None:
    """After a worker of ``cluster`` (started here) was lost: make sure, once
    ``distributed.deploy.lost-worker-timeout`` has passed, that it was replaced. A local
    cluster closes a worker's nanny for good when no worker of its name is there that long
    after one was removed: a replacement restarted again at that very moment would be
    lost. Rescaling to the same size starts whatever was closed."""

    def check() -> None:
        wanted = len(cluster.worker_spec)
        if cluster.status.name == "running" and len(cluster.workers) < wanted:
            cluster.scale(wanted)

    import dask
    from dask.utils import parse_timedelta

    delay = float(parse_timedelta(dask.config.get("distributed.deploy.lost-worker-timeout")))
    # (add_callback: the only thread-safe way onto the loop.)
    loop.add_callback(loop.call_later, delay + _KILL_SECONDS, check)


_KILL_SECONDS = 5.0  # how long a nanny takes to kill a worker that does not close


def disconnect(
    client: Client | None, topics: Sequence[str], own_client: bool, cluster: LocalCluster | None
) -> None:
    """Stop listening to ``topics``; close the client if it is ours, the cluster if we
    started it."""
    # A Ctrl-C in the middle left a cluster half closed, for distributed's exit handler to
    # wait its whole timeout (10 s) on: it is raised once the cluster is closed.
    with ctrl_c_held() as interrupted:
        try:
            if client is not None:
                for topic in topics:
                    with contextlib.suppress(Exception):
                        client.unsubscribe_topic(topic)
                if own_client:
                    client.close()
        finally:
            if cluster is not None:
                cluster.close()
        if interrupted():
            raise KeyboardInterrupt


def gather(client: Client, futures: list[Future]) -> list[tuple[bool, Any]]:
    """Each future's value, as ``(True, value)``, or ``(False, exception)`` for a value
    that could not be brought back: all in one call unless one of them fails."""
    try:
        return [(True, value) for value in client.gather(futures)]
    except Exception:
        pass
    found: list[tuple[bool, Any]] = []
    for future in futures:
        try:
            found.append((True, future.result()))
        except Exception as exc:
            found.append((False, exc))
    return found


def registered(client: Client, address: str, seconds: float) -> dict[str, Any] | None:
    """What the scheduler knows of the worker at ``address``, which it has announced
    (``nthreads``, ``host``...); None if it does not register within ``seconds`` (the
    scheduler announces a worker before it registers it, and a worker may leave again at
    once)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        info: dict[str, Any] | None = client.scheduler_info(n_workers=-1)["workers"].get(address)
        if info is not None:
            return info
        time.sleep(0.05)
    return None


def _cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1
