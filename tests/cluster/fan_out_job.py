"""Run inside an MPI job on the emulated hosts, two worker ranks per host: one 8 MiB
result read by 36 slow tasks, which spread over every worker rank of the three hosts.

Prints ``workers N`` (worker ranks that ran a reader), ``hosts N`` (their hosts) and
``crossed B`` (bytes between hosts during the run).
"""

from __future__ import annotations

import time
from typing import Any

import netns_cluster
import numpy as np

from dispatcher import get_executor, hookimpl, op
from dispatcher.transport import worker_host

MIB = 1024 * 1024


def produce() -> Any:
    return np.ones(8 * MIB, dtype=np.uint8)


def read(data: Any, i: int) -> int:
    time.sleep(0.05)  # long enough that spreading the readers beats queueing them
    return int(data[i])


class Where:
    def __init__(self) -> None:
        self.workers: set[str] = set()

    @hookimpl
    def dispatcher_task_started(self, node: Any, worker: str) -> None:
        if node.label.startswith("read"):
            self.workers.add(worker)


if __name__ == "__main__":
    with get_executor("mpi") as executor:
        executor.run(op(read)(np.ones(1, dtype=np.uint8), 0))  # functions shipped
        data = op(produce, label="produce")()
        readers = [op(read, label=f"read{i}")(data, i) for i in range(36)]
        where = Where()
        before = netns_cluster.crossing_bytes()
        assert executor.run(readers, plugins=[where]) == [1] * 36
        print("workers", len(where.workers))
        print("hosts", len({worker_host(w) for w in where.workers}))
        print("crossed", netns_cluster.crossing_bytes() - before, flush=True)
