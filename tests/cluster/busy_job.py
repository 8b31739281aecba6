"""Run inside an MPI job on the emulated hosts: many short tasks, to be interrupted.

``busy_job.py MARKERS TASKS``: runs TASKS tasks of 0.2 s; each touches ``MARKERS/HOSTNAME``
so that a test knows which hosts have started work. Prints "the job finished" at the end.
"""

from __future__ import annotations

import pathlib
import socket
import sys
import time

from dispatcher import Op, run


def work(i: int, markers: str) -> int:
    pathlib.Path(markers, socket.gethostname()).touch()
    time.sleep(0.2)
    return i


if __name__ == "__main__":
    markers, tasks = sys.argv[1], int(sys.argv[2])
    run([Op(work, i, markers) for i in range(tasks)], executor="mpi")
    print("the job finished")
