"""Run inside an MPI job on the emulated hosts: results that tasks on other hosts fetch.

``fetching_job.py MARKERS TASKS``: TASKS tasks each make a 1 MiB array, and TASKS more
each add two of them, made on any host. The second array a host starts touches
``MARKERS/HOSTNAME``: the host then holds one its rank reported, which others will fetch.
Prints the total and "the job finished".
"""

from __future__ import annotations

import pathlib
import socket
import sys
import time

import numpy as np

from dispatcher import Op, run


def make(i: int, markers: str) -> np.ndarray:
    host = socket.gethostname()
    first = pathlib.Path(markers, f"{host}.first")
    if first.exists():
        pathlib.Path(markers, host).touch()
    first.touch()
    time.sleep(0.2)
    return np.full(1 << 17, i, dtype=np.float64)


def combine(a: np.ndarray, b: np.ndarray) -> float:
    time.sleep(0.2)
    return float(a.sum() + b.sum())


if __name__ == "__main__":
    markers, tasks = sys.argv[1], int(sys.argv[2])
    made = [Op(make, i, markers) for i in range(tasks)]
    sums = [Op(combine, made[i], made[(i + 5) % tasks]) for i in range(tasks)]
    print("total", sum(run(sums, executor="mpi")))
    print("the job finished")
