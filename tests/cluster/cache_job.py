"""Run inside an MPI job on the emulated hosts: a cached pipeline, computed, then read back.

``cache_job.py CACHE MARKERS``: twelve 2 MiB arrays, each summed by a task that is never
cached; run twice on ``CACHE``. Each call of ``make`` leaves a file in ``MARKERS``. Prints
``stored [...]`` (the workers that made the arrays the first time), ``hits [...]`` (the
workers that read them back the second time), ``crossed N`` (bytes that crossed between
hosts during the second run), ``calls N`` (calls of ``make`` in all) and ``same True``.
"""

from __future__ import annotations

import os
import sys
import uuid
from typing import Any

import netns_cluster
import numpy as np

from dispatcher import hookimpl, op, run

ARRAYS = 12
ELEMENTS = 256 * 1024  # 2 MiB of float64


def make(markers: str, i: int) -> Any:
    open(os.path.join(markers, uuid.uuid4().hex), "w").close()
    return np.full(ELEMENTS, float(i))


def total(array: Any) -> float:
    return float(array.sum())


class Where:
    """Which worker made or read back each ``make``."""

    def __init__(self) -> None:
        self.finished: list[str] = []
        self.cached: list[str] = []

    @hookimpl
    def dispatcher_task_finished(self, node: Any, worker: str) -> None:
        if node.label.startswith("make"):
            self.finished.append(worker)

    @hookimpl
    def dispatcher_task_cached(self, node: Any, worker: str) -> None:
        self.cached.append(worker)


def pipeline(markers: str) -> list[Any]:
    return [
        op(total, cache=False, label=f"total-{i}")(op(make, label=f"make-{i}")(markers, i))
        for i in range(ARRAYS)
    ]


if __name__ == "__main__":
    cache, markers = sys.argv[1], sys.argv[2]
    first = Where()
    computed = run(pipeline(markers), executor="mpi", cache=cache, plugins=[first])
    print("stored", sorted(set(first.finished)))
    second = Where()
    before = netns_cluster.crossing_bytes()
    read = run(pipeline(markers), executor="mpi", cache=cache, plugins=[second])
    print("crossed", netns_cluster.crossing_bytes() - before)
    print("hits", sorted(second.cached))
    print("calls", len(os.listdir(markers)))
    print("same", read == computed == [float(i * ELEMENTS) for i in range(ARRAYS)], flush=True)
