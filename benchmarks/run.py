"""Run every workload on every dispatcher executor and installed peer, in one run.

    python benchmarks/run.py [--executors sync,async0,async,mp,mpi,dask] [--peers ...]
                             [--workloads W1,...] [--quick] [--repeat N] [--json]

Prints a Markdown table: build and run time (medians), microseconds per task, and the
ratio of the total to the best peer on the same workload (below 1 is faster). MPI runners
are run in child jobs under mpiexec and merged in.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))

import peers
from workloads import DESCRIPTIONS, WORKLOADS, Dep, Spec, arrival_delay, sinks, stamped_array

EXECUTORS = {
    "sync": ("sync", {}),
    "async0": ("async", {"threads": 0}),
    "async": ("async", {}),
    "mp": ("mp", {"workers": 2}),
    "mp1": ("mp", {"workers": 2, "prefetch": 1}),  # at most one task queued per worker
    # A LocalCluster of the shape of the "distributed" peers': 2 processes, 1 thread each.
    "dask": ("dask", {"workers": 2, "threads_per_worker": 1}),
}


def build_dispatcher(spec: Spec) -> Any:
    from dispatcher import Op

    nodes: dict[str, Any] = {}
    for name, (func, args) in spec.items():
        nodes[name] = Op(func, *[nodes[a] if isinstance(a, Dep) else a for a in args])
    return [nodes[name] for name in sinks(spec)]


class PeakMemory:
    """Samples the resident memory of this process and its children."""

    def __init__(self) -> None:
        import psutil

        self.process = psutil.Process()
        self.peak = self.baseline = self._rss()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _rss(self) -> int:
        total = self.process.memory_info().rss
        for child in self.process.children(recursive=True):
            try:
                total += child.memory_info().rss
            except Exception:
                pass
        return total

    def _sample(self) -> None:
        while not self._stop.wait(0.005):
            self.peak = max(self.peak, self._rss())

    def __enter__(self) -> PeakMemory:
        self.baseline = self._rss()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def measure(
    build: Callable[[Spec], Any],
    execute: Callable[[Any], Any],
    spec_of: Callable[[], Spec],
    repeat: int,
    workload: str,
    warm_up: Callable[[], Spec] | None = None,
) -> dict[str, Any]:
    builds, runs, cpus, extra = [], [], [], {}
    if warm_up is not None:
        # One untimed pass at a tenth of the size, as for every runner: whoever runs
        # first must not carry the process's first calls, allocations and imports.
        execute(build(warm_up()))
    for _ in range(repeat):
        spec = spec_of()
        # Start every repetition with the garbage of the last one collected, so that a
        # full collection triggered by earlier runs does not land in this one's timing.
        gc.collect()
        start = time.perf_counter()
        graph = build(spec)
        built = time.perf_counter()
        cpu = time.process_time()
        if workload == "W7":
            with PeakMemory() as memory:
                execute(graph)
            extra["peak_arrays"] = (memory.peak - memory.baseline) / (10 * 1024 * 1024)
        else:
            execute(graph)
        done = time.perf_counter()
        cpus.append(time.process_time() - cpu)
        builds.append(built - start)
        runs.append(done - built)
    tasks = len(spec_of())
    return {
        "build": statistics.median(builds),
        "run": statistics.median(runs),
        # This process's CPU seconds for the run (all its threads: the scheduler, and
        # whatever runs here), steadier than wall time on a loaded machine.
        "cpu": statistics.median(cpus),
        "tasks": tasks,
        **extra,
    }


def dispatcher_runner(name: str, options: dict[str, Any]) -> tuple[Callable[..., Any], Any]:
    from dispatcher import get_executor

    executor = get_executor(name, **options)
    return (lambda graph: executor.run(graph)), executor


def run_all(args: argparse.Namespace, inside_mpi: bool = False) -> list[dict[str, Any]]:
    """Every runner on every workload. One runner exists at a time: a peer's background
    work (dask.distributed's cluster keeps a core busy even when idle) must not slow
    down the others."""
    scale = 0.1 if args.quick else 1.0
    rows: list[dict[str, Any]] = []
    workloads = [w for w in args.workloads if w in WORKLOADS]
    factories: list[tuple[str, Callable[[], Any]]] = []
    if inside_mpi:
        factories.append(("dispatcher mpi", lambda: dispatcher_runner("mpi", {})))
    else:
        from dispatcher import available_executors

        installed = available_executors()
        for key in args.executors:
            if key not in EXECUTORS or EXECUTORS[key][0] not in installed:
                continue
            name, options = EXECUTORS[key]
            factories.append(
                (f"dispatcher {key}", lambda n=name, o=options: dispatcher_runner(n, o))
            )
        factories += [(key, lambda k=key: peers.make(k)) for key in args.peers]
    for label, factory in factories:
        made = factory()
        if made is None:
            continue  # a peer that is not installed
        if label.startswith("dispatcher"):
            execute, handle = made
            build: Callable[[Spec], Any] = build_dispatcher
        else:
            build, execute, handle = made
        try:
            for workload in workloads:
                rows.append(run_one(args, label, workload, build, execute, scale))
            if "move" in args.workloads and label in ("dispatcher mp", "dispatcher mpi"):
                rows += move_rows(label, handle, args.repeat)
        finally:
            close = getattr(handle, "close", None)
            if close is not None:
                close()
    return rows


def run_one(
    args: argparse.Namespace,
    label: str,
    workload: str,
    build: Callable[[Spec], Any],
    execute: Callable[[Any], Any],
    scale: float,
) -> dict[str, Any]:
    if label.startswith("dask-delayed") and workload == "W1" and not args.quick:
        return {
            "workload": workload,
            "runner": label,
            "skipped": "building a 10,000-deep delayed chain takes minutes",
        }
    try:
        result = measure(
            build,
            execute,
            lambda: WORKLOADS[workload](scale),
            args.repeat,
            workload,
            warm_up=lambda: WORKLOADS[workload](scale / 10),
        )
    except Exception as exc:  # a peer that cannot do a workload says so
        return {
            "workload": workload,
            "runner": label,
            "skipped": f"{type(exc).__name__}: {exc}"[:80],
        }
    print(
        f"  {workload} {label}: {result['build'] + result['run']:.3f} s",
        file=sys.stderr,
        flush=True,
    )
    return {"workload": workload, "runner": label, **result}


MOVE_BYTES = 64 * 1024 * 1024  # as the raw Send/Recv floor


def move_rows(label: str, executor: Any, repeat: int) -> list[dict[str, Any]]:
    """How fast a result moves: 64 MiB between two workers (two producers, one consumer
    of both: one array must travel), and from a worker to the caller. Each is timed from
    the moment the array is ready, where it was made, to its arrival; that includes
    the completion report and the placement of the consumer, as a user would see it."""
    from dispatcher import Op

    between, to_caller = [], []
    for _ in range(max(repeat, 3)):
        first = Op(stamped_array, MOVE_BYTES)
        second = Op(stamped_array, MOVE_BYTES)
        between.append(executor.run(Op(arrival_delay, first, second)))
        stamp, _ = executor.run(Op(stamped_array, MOVE_BYTES))
        to_caller.append(time.time() - stamp)
    rows = []
    for what, seconds in (("worker to worker", between), ("worker to caller", to_caller)):
        median = statistics.median(seconds)
        rows.append(
            {
                "workload": "move",
                "runner": f"{label}: 64 MiB {what}",
                "build": 0.0,
                "run": median,
                "tasks": 1,
                "note": f"{MOVE_BYTES / median / 1e9:.2f} GB/s",
            }
        )
    return rows


def w8_rows() -> list[dict[str, Any]]:
    """W8 in a fresh interpreter: what the other workloads left alive (dask's and
    distributed's modules, their caches) would otherwise be scanned by every garbage
    collection the million allocations trigger, and measured as graph building."""
    out = subprocess.run(
        [sys.executable, __file__, "--inside-w8"], capture_output=True, text=True, check=True
    ).stdout
    return [json.loads(line) for line in out.splitlines() if line.startswith("{")]


def w8_build() -> list[dict[str, Any]]:
    import gc

    import psutil
    from workloads import add

    from dispatcher import DataNode, Op

    gc.collect()
    process = psutil.Process()
    before = process.memory_info().rss
    start = time.perf_counter()
    nodes: list[Any] = [DataNode(0)]
    append = nodes.append
    for i in range(1, 1_000_000):
        append(Op(add, nodes[i - 1], nodes[i // 2]))
    elapsed = time.perf_counter() - start
    per_node = (process.memory_info().rss - before) / 1_000_000
    return [
        {
            "workload": "W8",
            "runner": "dispatcher (any)",
            "build": elapsed,
            "run": 0.0,
            "tasks": 1_000_000,
            "bytes_per_node": per_node,
        }
    ]


W9_CALLS = 1000


def w9_rows(args: argparse.Namespace) -> list[dict[str, Any]]:
    """W9: the fixed cost of one call -- ``run()`` of a one-node graph, 1,000 times, as a
    script that runs a small graph in a loop (or a task running a nested graph) pays it;
    beside ``dask.compute`` of one delayed call, with dask's default (threads) scheduler."""
    from workloads import inc

    from dispatcher import Op, run

    callers: list[tuple[str, Callable[[], Any]]] = []
    if "async" in args.executors:
        callers.append(("dispatcher run() (default: async)", lambda: run(Op(inc, 1))))
    if "sync" in args.executors:
        callers.append(
            ("dispatcher run(executor='sync')", lambda: run(Op(inc, 1), executor="sync"))
        )
    if any(peer.startswith("dask") for peer in args.peers):
        try:
            import dask
        except ImportError:
            pass
        else:
            delayed_inc = dask.delayed(inc)
            callers.append(("dask.compute (threads)", lambda: dask.compute(delayed_inc(1))))
    calls = W9_CALLS // 10 if args.quick else W9_CALLS
    rows = []
    for label, call in callers:
        for _ in range(calls // 10):  # untimed: the first calls make executors, import
            call()
        times = []
        for _ in range(args.repeat):
            gc.collect()
            start = time.perf_counter()
            for _ in range(calls):
                call()
            times.append(time.perf_counter() - start)
        print(f"  W9 {label}: {statistics.median(times):.3f} s", file=sys.stderr, flush=True)
        rows.append(
            {
                "workload": "W9",
                "runner": label,
                "build": 0.0,
                "run": statistics.median(times),
                "tasks": calls,
            }
        )
    return rows


def mpi_rows(args: argparse.Namespace) -> list[dict[str, Any]]:
    mpiexec = Path(sys.executable).parent / "mpiexec"
    if not mpiexec.exists():
        return []
    rows: list[dict[str, Any]] = []
    workloads = [w for w in args.workloads if w in args.mpi_workloads]
    common = ["--workloads", ",".join(workloads), "--repeat", str(args.repeat)]
    if args.quick:
        common.append("--quick")
    jobs = []
    if "mpi" in args.executors:
        jobs.append(
            [
                str(mpiexec),
                "-n",
                "3",
                sys.executable,
                "-m",
                "dispatcher_mpi",
                __file__,
                "--inside-mpi",
                *common,
            ]
        )
    for backoff in ("0", None):
        if "mpi4py-futures" in args.peers:
            jobs.append(
                (
                    [
                        str(mpiexec),
                        "-n",
                        "3",
                        sys.executable,
                        "-m",
                        "mpi4py.futures",
                        __file__,
                        "--inside-mpi4py",
                        *common,
                    ],
                    backoff,
                )
            )
    for entry in jobs:
        command, backoff = (entry, None) if isinstance(entry[0], str) else entry
        env = dict(os.environ)
        if backoff is not None:
            env["MPI4PY_FUTURES_BACKOFF"] = backoff
        done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=3600)
        for line in done.stdout.splitlines():
            if line.startswith("{"):
                row = json.loads(line)
                if backoff is not None:
                    row["runner"] += f" (backoff {backoff})"
                elif "mpi4py" in row["runner"]:
                    row["runner"] += " (default backoff)"
                rows.append(row)
        if done.returncode:
            sys.stderr.write(done.stderr[-2000:])
    floor = Path(__file__).parent / "floors.py"
    for ranks in ("2", "3"):
        done = subprocess.run(
            [str(mpiexec), "-n", ranks, sys.executable, str(floor), "mpi"],
            capture_output=True,
            text=True,
            timeout=600,
        )
        rows += [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    return rows


def table(rows: list[dict[str, Any]]) -> str:
    best: dict[str, float] = {}
    for row in rows:
        if "skipped" in row or row["runner"].startswith(("dispatcher", "floor")):
            continue
        total = row["build"] + row["run"]
        best[row["workload"]] = min(best.get(row["workload"], total), total)
    lines = [
        "| workload | runner | build s | run s | µs/task | vs best peer | notes |",
        "|---|---|---:|---:|---:|---:|---|",
    ]
    for row in rows:
        if "skipped" in row:
            lines.append(f"| {row['workload']} | {row['runner']} | | | | | {row['skipped']} |")
            continue
        total = row["build"] + row["run"]
        per_task = total / row["tasks"] * 1e6 if row.get("tasks") else float("nan")
        ratio = f"{total / best[row['workload']]:.2f}x" if row["workload"] in best else ""
        notes = []
        if "peak_arrays" in row:
            notes.append(f"peak {row['peak_arrays']:.1f} arrays")
        if "bytes_per_node" in row:
            notes.append(f"{row['bytes_per_node']:.0f} bytes/node")
        if row["workload"] == "W6" and row["run"] > 0:
            ideal = row["tasks"] * 0.01 / 2
            notes.append(f"efficiency {ideal / row['run']:.0%} (2 workers)")
        if "note" in row:
            notes.append(row["note"])
        lines.append(
            f"| {row['workload']} | {row['runner']} | {row['build']:.3f} | {row['run']:.3f} "
            f"| {per_task:.1f} | {ratio} | {'; '.join(notes)} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--executors", default="sync,async0,async,mp,mpi,dask")
    parser.add_argument("--peers", default=",".join(peers.PEERS))
    parser.add_argument("--workloads", default="W1,W2,W3,W4,W5,W6,W7,W8,W9,move")
    parser.add_argument(
        "--mpi-workloads",
        default="W1,W2,W5,W6,W7,move",
        help="workloads for the MPI runners (mpi4py.futures with its default "
        "backoff needs minutes for the larger graphs)",
    )
    parser.add_argument("--quick", action="store_true", help="workloads about 10x smaller")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--json", action="store_true", help="print the rows as JSON lines")
    parser.add_argument("--inside-mpi", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--inside-mpi4py", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--inside-w8", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    # An empty list ("--peers ''") runs none of that kind.
    args.executors = [name for name in args.executors.split(",") if name]
    args.peers = [name for name in args.peers.split(",") if name]
    args.workloads = [name for name in args.workloads.split(",") if name]
    args.mpi_workloads = [name for name in args.mpi_workloads.split(",") if name]
    for option, given, known in (
        ("--executors", args.executors, [*EXECUTORS, "mpi"]),
        ("--peers", args.peers, list(peers.PEERS)),
        ("--workloads", args.workloads, [*WORKLOADS, "W8", "W9", "move"]),
        # (W9 is measured in this process only; compare.py passes it to both lists.)
        ("--mpi-workloads", args.mpi_workloads, [*WORKLOADS, "W9", "move"]),
    ):
        unknown = [name for name in given if name not in known]
        if unknown:
            parser.error(f"{option}: unknown {', '.join(unknown)}; choose from {', '.join(known)}")
    if args.inside_mpi:
        for row in run_all(args, inside_mpi=True):
            print(json.dumps(row))
        return
    if args.inside_w8:
        for row in w8_build():
            print(json.dumps(row))
        return
    if args.inside_mpi4py:
        for row in peers.mpi4py_rows(args, run_one):
            print(json.dumps(row))
        return
    rows = peers.floor_rows(args)
    rows += run_all(args)
    if "W8" in args.workloads:
        rows += w8_rows()
    if "W9" in args.workloads:
        rows += w9_rows(args)
    rows += mpi_rows(args)
    rows.sort(key=lambda r: (r["workload"], r["runner"]))
    if args.json:
        for row in rows:
            print(json.dumps(row))
        return
    print(
        f"\n{os.cpu_count()} CPUs, Python {sys.version.split()[0]}, median of {args.repeat} "
        f"after an untimed pass at a tenth of the size{', quick sizes' if args.quick else ''}\n"
    )
    for name, text in DESCRIPTIONS.items():
        if name in args.workloads:
            print(f"- {name}: {text}")
    print()
    print(table(rows))


if __name__ == "__main__":
    main()
