"""Raw MPI floors, run under mpiexec: ping-pong round trip and Send/Recv bandwidth (into
a buffer used before, and into a fresh one)."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from typing import Any


def main() -> None:
    import numpy as np
    from mpi4py import MPI

    comm = MPI.COMM_WORLD
    rank, size = comm.Get_rank(), comm.Get_size()
    last = size - 1
    buffer = np.zeros(1, dtype=np.uint8)
    n = 20000
    comm.Barrier()
    start = time.perf_counter()
    for _ in range(n):
        if rank == 0:
            comm.Send(buffer, dest=last)
            comm.Recv(buffer, source=last)
        elif rank == last:
            comm.Recv(buffer, source=0)
            comm.Send(buffer, dest=0)
    elapsed = time.perf_counter() - start
    big = np.ones(64 * 1024 * 1024, dtype=np.uint8)  # 64 MiB

    def bandwidth(receive_into: Callable[[], Any]) -> float:
        """Seconds for five 64 MiB messages from rank 0 to the last rank."""
        comm.Barrier()
        start = time.perf_counter()
        for _ in range(5):
            if rank == 0:
                comm.Send(big, dest=last)
            elif rank == last:
                comm.Recv(receive_into(), source=0)
        comm.Barrier()
        return time.perf_counter() - start

    seconds = bandwidth(lambda: big)
    # The same into a fresh buffer each time, as any receiver of a new array must: on
    # machines where touching new memory is slow, that and not the wire sets the pace.
    fresh = bandwidth(lambda: [bytearray(big.nbytes), MPI.BYTE])
    if rank == 0:
        print(
            json.dumps(
                {
                    "workload": "floor",
                    "runner": f"floor: MPI ping-pong (-n {size})",
                    "build": 0.0,
                    "run": elapsed,
                    "tasks": n,
                }
            )
        )
        print(
            json.dumps(
                {
                    "workload": "floor",
                    "runner": f"floor: MPI Send/Recv (-n {size})",
                    "build": 0.0,
                    "run": seconds,
                    "tasks": 5,
                    "note": f"{5 * big.nbytes / seconds / 1e9:.2f} GB/s",
                }
            )
        )
        print(
            json.dumps(
                {
                    "workload": "floor",
                    "runner": f"floor: MPI Send/Recv into a fresh buffer (-n {size})",
                    "build": 0.0,
                    "run": fresh,
                    "tasks": 5,
                    "note": f"{5 * big.nbytes / fresh / 1e9:.2f} GB/s",
                }
            )
        )


if __name__ == "__main__" and sys.argv[1:] == ["mpi"]:
    main()
