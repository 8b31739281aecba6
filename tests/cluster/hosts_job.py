"""Run inside an MPI job on the emulated hosts: where each rank runs, and results that move.

Prints ``seen [(rank, hostname, MPI processor name), ...]`` for rank 0 and every worker rank
that ran a task, then ``sum S`` of two 64 MiB results made on worker ranks and sent to rank 0.
"""

from __future__ import annotations

import socket
import time
from typing import Any

import numpy as np
from mpi4py import MPI

from dispatcher import Op, run


def where(_: object) -> tuple[int, str, str]:
    time.sleep(0.05)  # long enough that every worker rank gets some
    return MPI.COMM_WORLD.Get_rank(), socket.gethostname(), MPI.Get_processor_name()


def big(fill: float) -> Any:
    return np.full(8 * 1024 * 1024, fill, dtype=np.float64)  # 64 MiB


if __name__ == "__main__":
    seen = set(run([Op(where, i) for i in range(48)], executor="mpi"))
    seen.add(where(None))
    print("seen", sorted(seen))
    arrays = run([Op(big, 1.0), Op(big, 2.0)], executor="mpi")
    print("sum", float(sum(a.sum() for a in arrays)))
