"""Run inside an MPI job on the emulated hosts, two worker ranks per host: where a task
goes when the worker holding its input is busy, and the bytes that cross between hosts.

A producer makes 16 MiB and two slow consumers read it. Each worker takes one task at a
time (``prefetch=0``), so the second consumer cannot queue behind the first on the
producer's worker: it goes to the other worker of the producer's host, whose input then
moves within that host; a placement blind to hosts takes the first free worker in rank
order instead, on another host. Prints one line per mode: ``MODE producer-worker
consumer-workers bytes-across-hosts``.
"""

from __future__ import annotations

import time
from typing import Any

import netns_cluster
import numpy as np

import dispatcher._placement as placement
from dispatcher import get_executor, hookimpl, op
from dispatcher.transport import worker_host

MIB = 1024 * 1024


def produce() -> Any:
    time.sleep(0.3)  # as long as a consumer: waiting for its worker costs more than a move
    return np.ones(16 * MIB, dtype=np.uint8)


def consume(data: Any, i: int) -> int:
    time.sleep(0.3)
    return int(data[i])


class Where:
    """Which worker each task was handed to, by label."""

    def __init__(self) -> None:
        self.workers: dict[str, str] = {}

    @hookimpl
    def dispatcher_task_started(self, node: Any, worker: str) -> None:
        self.workers[node.label] = worker


if __name__ == "__main__":
    with get_executor("mpi", prefetch=0) as executor:
        executor.run(op(consume)(np.ones(1, dtype=np.uint8), 0))  # functions shipped
        for mode in ("aware", "blind"):
            placement.worker_host = worker_host if mode == "aware" else lambda worker: None
            data = op(produce, label="producer")()
            readers = [op(consume, label=f"consumer{i}")(data, i) for i in range(2)]
            where = Where()
            before = netns_cluster.crossing_bytes()
            assert executor.run(readers, plugins=[where]) == [1, 1]
            crossed = netns_cluster.crossing_bytes() - before
            consumers = ",".join(sorted(where.workers[f"consumer{i}"] for i in range(2)))
            print(mode, where.workers["producer"], consumers, crossed, flush=True)
