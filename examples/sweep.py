"""A parameter sweep: one graph, run on every executor this installation has.

    .venv/bin/python examples/sweep.py                    # sync, async, and mp if installed
    .venv/bin/mpiexec -n 3 .venv/bin/python -m dispatcher_mpi examples/sweep.py  # and mpi
    .venv/bin/python examples/sweep.py --executor mp      # just one
    .venv/bin/dispatcher run examples/sweep.py:sweep --executor mp

(``.venv`` is the environment the README's set-up command makes.)

Each point of the grid simulates a damped, driven oscillator (plain Python, a few
milliseconds of CPU) and reports how strongly it responds; the last node picks the point with
the strongest response. The graph does not know where it will run: the same nodes go to the
calling thread (``sync``), an event loop with threads (``async``), worker processes (``mp``)
or the ranks of an MPI job (``mpi``), and every executor gives the same answer.
"""

from __future__ import annotations

import argparse
import math
import time
from itertools import product

from dispatcher import DispatchNode, Executor, available_executors, get_executor, op

DAMPING = (0.05, 0.1, 0.2, 0.4)
DRIVE = (0.6, 0.8, 0.9, 1.0, 1.1, 1.25)  # driving frequency over natural frequency
EXECUTORS = ("sync", "async", "mp", "mpi")


@op
def simulate(damping: float, drive: float, steps: int = 50_000) -> float:
    """Peak amplitude, after the transient, of x'' + 2*damping*x' + x = cos(drive*t)."""
    dt = 0.01
    x = v = t = 0.0
    peak = 0.0
    for i in range(steps):
        a = math.cos(drive * t) - 2 * damping * v - x
        v += a * dt  # semi-implicit Euler: stable for oscillators
        x += v * dt
        t += dt
        if i > steps // 2:
            peak = max(peak, abs(x))
    return round(peak, 9)


@op
def strongest(points: list[tuple[float, float]], peaks: list[float]) -> dict[str, float]:
    """The grid point with the largest response."""
    best = max(range(len(peaks)), key=peaks.__getitem__)
    damping, drive = points[best]
    return {"damping": damping, "drive": drive, "peak": peaks[best]}


def sweep() -> DispatchNode:
    """The whole grid, and the node that picks its strongest point."""
    points = list(product(DAMPING, DRIVE))
    return strongest(points, [simulate(d, w) for d, w in points])


def open_executor(name: str, workers: int | None) -> Executor | str:
    """The executor, or why it cannot run here (e.g. ``mpi`` outside ``mpiexec``)."""
    options = {} if workers is None else {"workers": workers}
    try:
        return get_executor(name, **options)
    except Exception as exc:
        reason = " ".join(str(exc).split())  # the whole message, on one line
        return reason if len(reason) <= 160 else reason[:157] + "..."


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--executor", choices=EXECUTORS, help="run on this one only")
    parser.add_argument("--workers", type=int, help="workers for mp and mpi")
    args = parser.parse_args()

    installed = available_executors()
    names = [args.executor] if args.executor else [n for n in EXECUTORS if n in installed]
    executors: dict[str, Executor | str] = {}
    # Try mpi first: if this program runs inside an MPI job, its ranks are the workers, and
    # mp does not start processes of its own there.
    if "mpi" in names:
        executors["mpi"] = open_executor("mpi", args.workers)
    in_mpi_job = isinstance(executors.get("mpi"), Executor)
    for name in names:
        if name == "mp" and in_mpi_job and not args.executor:
            executors[name] = "not mixed with MPI: the job's ranks are the workers here"
        elif name not in executors:
            executors[name] = open_executor(name, args.workers)

    graph = sweep()
    points = len(DAMPING) * len(DRIVE)
    print(f"sweep of {points} points (damping x drive) on {', '.join(names)}")
    answers = {}
    for name in names:
        executor = executors[name]
        if isinstance(executor, str):
            print(f"  {name:<6} skipped: {executor}")
            continue
        with executor:
            start = time.perf_counter()
            answers[name] = executor.run(graph)
            elapsed = time.perf_counter() - start
        print(f"  {name:<6} {elapsed:6.2f} s  {answers[name]}")
    if not answers:
        raise SystemExit("no executor could run the sweep")
    if len({repr(a) for a in answers.values()}) != 1:
        raise SystemExit("the executors disagree: " + repr(answers))
    print(f"same answer on {', '.join(answers)}")


if __name__ == "__main__":
    main()
