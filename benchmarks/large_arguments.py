"""One large array given as a plain argument to many tasks on ``mp`` or ``mpi``: time and
bytes sent.

    python benchmarks/large_arguments.py [--megabytes 32] [--tasks 100] [--workers 2]
                                         [--rounds 3]
    mpiexec -n 3 python -m dispatcher_mpi benchmarks/large_arguments.py --executor mpi [...]

Runs ``op(f)(array, i)`` for ``--tasks`` values of ``i`` on a kept executor (its workers
started before the clock does), ``--rounds`` times, and prints per round the wall time,
the bytes of the messages sent to workers (down the pipes on ``mp``; posted by rank 0 to
the worker ranks on ``mpi``, pickles and raw buffers), and the caller's peak RSS. Whatever
version of dispatcher is installed is measured: run it in two virtual environments
(``benchmarks/.venvs/...`` that ``compare.py`` made) to compare.
"""

from __future__ import annotations

import argparse
import pickle
import resource
import statistics
import time
from typing import Any

SENT = [0]


def item(values: Any, i: int) -> float:
    """What each task does: next to nothing, so that moving the argument is the cost."""
    return float(values[i % len(values)])


def _count_sent_bytes(executor: str) -> None:
    if executor == "mpi":
        _count_posted_bytes()
        return
    from dispatcher.remote import to_wire
    from dispatcher_mp import _process

    send = _process.WorkerProcess.send

    def counting(self: Any, message: Any) -> None:
        SENT[0] += len(pickle.dumps(to_wire(message), protocol=5))
        send(self, message)

    _process.WorkerProcess.send = counting  # type: ignore[method-assign]


def _count_posted_bytes() -> None:
    from dispatcher_mpi import _channel

    encode = _channel.encode  # what rank 0's hub calls on every message it posts

    def counting(message: Any) -> tuple[bytes, list[memoryview]]:
        header, buffers = encode(message)
        SENT[0] += len(header) + sum(b.nbytes for b in buffers)
        return header, buffers

    _channel.encode = counting


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--megabytes", type=int, default=32)
    parser.add_argument("--tasks", type=int, default=100)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--executor", choices=("mp", "mpi"), default="mp")
    args = parser.parse_args()

    import numpy as np

    from dispatcher import get_executor, op

    _count_sent_bytes(args.executor)
    values = np.arange(args.megabytes * 1024 * 1024 // 8, dtype=float)
    task = op(item)
    times, sent = [], []
    with get_executor(args.executor, workers=args.workers) as ex:
        ex.run([task(values, i) for i in range(args.workers)])  # workers up, item shipped
        for _ in range(args.rounds):
            nodes = [task(values, i) for i in range(args.tasks)]
            SENT[0] = 0
            start = time.perf_counter()
            results = ex.run(nodes)
            times.append(time.perf_counter() - start)
            sent.append(SENT[0])
            assert results == [float(i % len(values)) for i in range(args.tasks)]
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    print(
        f"{args.executor}: {args.tasks} tasks x {args.megabytes} MiB argument, "
        f"{args.workers} workers: "
        f"median {statistics.median(times):.3f} s per run "
        f"({', '.join(f'{t:.3f}' for t in times)}), "
        f"{statistics.median(sent) / args.tasks:,.0f} bytes sent per task, "
        f"caller peak RSS {peak:,.0f} MiB"
    )


if __name__ == "__main__":
    main()
