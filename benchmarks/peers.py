"""The peers, each in its strongest honest setting, and the floors.

Every peer runs the same task spec (see ``workloads``); building the peer's graph is timed
apart from running it.
"""

from __future__ import annotations

import itertools
import statistics
import time
from collections.abc import Callable
from concurrent.futures import Future, ProcessPoolExecutor
from queue import SimpleQueue
from typing import Any

from workloads import WORKLOADS, Dep, Spec, sinks

PEERS = (
    "dask-get",
    "dask-delayed-sync",
    "dask-delayed-threads",
    "dask-delayed-processes",
    "distributed",
    "distributed-delayed",
    "ppe",
    "mpi4py-futures",
)

Runner = tuple[Callable[[Spec], Any], Callable[[Any], Any], Any]


def _dask_graph(spec: Spec, tag: str = "") -> tuple[dict[str, Any], list[str]]:
    # dask's low-level graph: a dict of task tuples; strings naming keys are dependencies.
    return {
        name + tag: (func, *[str(a) + tag if isinstance(a, Dep) else a for a in args])
        for name, (func, args) in spec.items()
    }, [name + tag for name in sinks(spec)]


_builds = itertools.count()


def _fresh_dask_graph(spec: Spec) -> tuple[dict[str, Any], list[str]]:
    # A cluster keeps results it still holds under their keys: new keys for every build,
    # so no repetition is served from the one before.
    return _dask_graph(spec, f"-{next(_builds)}")


def _delayed(spec: Spec) -> Any:
    import dask

    nodes: dict[str, Any] = {}
    for name, (func, args) in spec.items():
        nodes[name] = dask.delayed(func, pure=False)(
            *[nodes[a] if isinstance(a, Dep) else a for a in args]
        )
    return [nodes[name] for name in sinks(spec)]


class PoolDriver:
    """Submit each task to a ProcessPoolExecutor as soon as its inputs are done."""

    def __init__(self, workers: int = 2) -> None:
        self.pool = ProcessPoolExecutor(workers)
        list(self.pool.map(abs, range(workers * 4)))  # start the workers outside timing

    @staticmethod
    def build(spec: Spec) -> tuple[Spec, list[str]]:
        """Which tasks to return is worked out at build time, as for the other runners."""
        return spec, sinks(spec)

    def execute(self, built: tuple[Spec, list[str]]) -> Any:
        return self.run(*built)

    def run(self, spec: Spec, targets: list[str]) -> Any:
        waiting = {
            name: {a for a in args if isinstance(a, Dep)} for name, (_, args) in spec.items()
        }
        dependents: dict[str, list[str]] = {}
        for name, deps in waiting.items():
            for d in deps:
                dependents.setdefault(d, []).append(name)
        values: dict[str, Any] = {}
        finished: SimpleQueue[tuple[str, Future[Any]]] = SimpleQueue()

        def submit(name: str) -> None:
            func, args = spec[name]
            future = self.pool.submit(func, *[values[a] if isinstance(a, Dep) else a for a in args])
            # A callback per future, not wait() over all of them: O(1) per completion.
            future.add_done_callback(lambda f, name=name: finished.put((name, f)))

        outstanding = 0
        for name, deps in waiting.items():
            if not deps:
                submit(name)
                outstanding += 1
        while outstanding:
            name, future = finished.get()
            outstanding -= 1
            values[name] = future.result()
            for dependent in dependents.get(name, ()):
                waiting[dependent].discard(name)
                if not waiting[dependent]:
                    submit(dependent)
                    outstanding += 1
        return [values[name] for name in targets]

    def close(self) -> None:
        self.pool.shutdown(cancel_futures=True)


def make(key: str) -> Runner | None:
    try:
        if key == "dask-get":
            import dask

            return _dask_graph, lambda graph: dask.get(*graph), None
        if key.startswith("dask-delayed-"):
            import dask

            scheduler = key.rsplit("-", 1)[1]
            return _delayed, lambda d: dask.compute(*d, scheduler=scheduler), None
        if key == "distributed":
            from distributed import Client, LocalCluster

            cluster = LocalCluster(
                n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None
            )
            client = Client(cluster)

            class Handle:
                def close(self) -> None:
                    client.close()
                    cluster.close()

            return _fresh_dask_graph, lambda graph: client.get(*graph), Handle()
        if key == "distributed-delayed":
            # dask.delayed on a cluster of the same shape (pure=False: fresh keys per build).
            import dask
            from distributed import Client, LocalCluster

            cluster = LocalCluster(
                n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None
            )
            client = Client(cluster)

            class DelayedHandle:
                def close(self) -> None:
                    client.close()
                    cluster.close()

            return (
                _delayed,
                lambda d: dask.compute(*d, scheduler=client),
                DelayedHandle(),
            )
        if key == "ppe":
            driver = PoolDriver(2)
            return PoolDriver.build, driver.execute, driver
    except ImportError:
        return None
    return None


def _interpret(spec: Spec, targets: list[str]) -> Any:
    """The floor: a plain dict-walking interpreter."""
    values: dict[str, Any] = {}
    for name, (func, args) in spec.items():
        values[name] = func(*[values[a] if isinstance(a, Dep) else a for a in args])
    return [values[name] for name in targets]


def floor_rows(args: Any) -> list[dict[str, Any]]:
    scale = 0.1 if args.quick else 1.0
    rows = []
    for workload in ("W1", "W2", "W3", "W4"):
        if workload in args.workloads:
            spec = WORKLOADS[workload](scale)
            targets = sinks(spec)
            times = []
            for _ in range(args.repeat):
                start = time.perf_counter()
                _interpret(spec, targets)
                times.append(time.perf_counter() - start)
            rows.append(
                {
                    "workload": workload,
                    "runner": "floor: dict interpreter",
                    "build": 0.0,
                    "run": statistics.median(times),
                    "tasks": len(spec),
                }
            )
    rows.append(_pipe_round_trip())
    return rows


def _echo(conn: Any) -> None:
    while True:
        message = conn.recv_bytes()
        if not message:
            return
        conn.send_bytes(message)


def _pipe_round_trip() -> dict[str, Any]:
    import multiprocessing

    parent, child = multiprocessing.Pipe()
    process = multiprocessing.get_context("spawn").Process(target=_echo, args=(child,))
    process.start()
    for _ in range(100):
        parent.send_bytes(b"x")
        parent.recv_bytes()
    n = 5000
    start = time.perf_counter()
    for _ in range(n):
        parent.send_bytes(b"x")
        parent.recv_bytes()
    elapsed = time.perf_counter() - start
    parent.send_bytes(b"")
    process.join()
    return {
        "workload": "floor",
        "runner": "floor: pipe round trip",
        "build": 0.0,
        "run": elapsed,
        "tasks": n,
    }


def mpi4py_rows(args: Any, run_one: Callable[..., dict[str, Any]]) -> list[dict[str, Any]]:
    """Inside `python -m mpi4py.futures`: a submit-when-ready driver over MPIPoolExecutor,
    measured by the runner's own ``run_one`` like every other runner."""
    from mpi4py.futures import MPIPoolExecutor

    scale = 0.1 if args.quick else 1.0
    with MPIPoolExecutor() as pool:
        list(pool.map(abs, range(8)))
        driver = PoolDriver.__new__(PoolDriver)
        driver.pool = pool  # type: ignore[assignment]
        return [
            run_one(args, "mpi4py.futures", w, PoolDriver.build, driver.execute, scale)
            for w in args.workloads
            if w in WORKLOADS and w != "W7"
        ]
