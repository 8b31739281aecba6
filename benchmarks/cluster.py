"""Benchmarks across three emulated hosts (network namespaces on this machine; needs root).

    python benchmarks/cluster.py [--quick] [--repeat N] [--sections links,workloads,placement]

Brings up the hosts of ``tests/cluster`` (node1..node3, TCP between them, see
docs/clusters.md), runs, and takes them down; prints a Markdown table:

- links: what a move costs within a host and across hosts: raw MPI (a byte's round trip,
  1 and 16 MiB into a fresh buffer; both links taking turns in one job), and a dispatcher
  result timed from the moment it is made to its consumer on another rank having it
  (which includes the report to rank 0 and the placement of the consumer);
- workloads: W2, W4, W5, W6 with one rank per host (rank 0 and three worker ranks), for
  the ``mpi`` executor beside mpi4py.futures (backoff 0), with the raw MPI floors;
- placement: W4's random edges with 1 MiB results, two worker ranks per host, with the
  topology-aware move cost as learned from the moves so far and with the assumed one (the
  rough constants of ``dispatcher._links``), and with a placement that ignores hosts (with
  either cost of its one class of move), taking turns in one job: wall time, bytes across
  hosts (on the wire, and as input moves the scheduler caused), and the link costs
  learned by the end.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "cluster"))

import netns_cluster
from workloads import DESCRIPTIONS

from dispatcher import hookimpl
from dispatcher.transport import worker_host

HERE = Path(__file__).resolve().parent
MIB = 1024 * 1024
SECTIONS = ("links", "workloads", "placement")
WORKLOADS = ("W2", "W4", "W5", "W6")


# -- in the jobs --------------------------------------------------------------------------


def leaf_mib(i: int) -> Any:
    import numpy as np

    return np.full(MIB // 8, float(i))


def add_mib(a: Any, b: Any) -> Any:
    return a + b  # a fresh 1 MiB array


def checksum(a: Any) -> float:
    return float(a[0])


def stamped(nbytes: int) -> tuple[float, Any]:
    import numpy as np

    data = np.ones(nbytes, dtype=np.uint8)
    return time.time(), data


def arrival(first: tuple[float, Any], second: tuple[float, Any]) -> float:
    return time.time() - max(first[0], second[0])


def w4_mib(layers: int, width: int) -> list[Any]:
    """W4's random edges over 1 MiB results; the sinks reduced to a float each, so that
    what reaches the caller is the same small amount however the tasks were placed."""
    from dispatcher import Op

    rng = random.Random(42)
    layer = [Op(leaf_mib, j) for j in range(width)]
    used: set[int] = set()
    sinks: list[Any] = []
    for _ in range(1, layers):
        picks = [(rng.randrange(width), rng.randrange(width)) for _ in range(width)]
        used = {i for pick in picks for i in pick}
        sinks += [Op(checksum, node) for i, node in enumerate(layer) if i not in used]
        layer = [Op(add_mib, layer[a], layer[b]) for a, b in picks]
    return sinks + [Op(checksum, node) for node in layer]


class CrossHostMoves:
    """An observer that adds up the bytes of the inputs a task found on another host than
    its own (a result moved across hosts because of where the task was placed)."""

    def __init__(self) -> None:
        self.made: dict[Any, tuple[str | None, int]] = {}
        self.nbytes = 0
        self.placed = 0  # tasks with inputs made on workers
        self.away = 0  # ... placed on a host that held none of them

    @hookimpl
    def dispatcher_task_finished(self, node: Any, worker: str, nbytes: int | None) -> None:
        self.made[node] = (worker_host(worker), nbytes or 0)

    @hookimpl
    def dispatcher_task_started(self, node: Any, worker: str) -> None:
        host = worker_host(worker)
        homes = set()
        for dep in node.dependencies():
            made = self.made.get(dep)
            if made is not None:
                homes.add(made[0])
                if made[0] != host:
                    self.nbytes += made[1]
        if homes:
            self.placed += 1
            self.away += host not in homes


def placement_job(layers: int, width: int, repeat: int, across: str | None) -> None:
    """Inside the job: W4 with 1 MiB results, taking turns: host-aware or blind to hosts,
    with the link costs learned from the moves so far or with the assumed ones."""
    import dispatcher._placement as placement
    from dispatcher import get_executor

    ignoring_hosts = lambda worker: None  # noqa: E731 - every worker on one host
    with get_executor("mpi") as executor:
        links = executor.link_costs
        if across:
            latency, bandwidth = map(float, across.split(","))
            links.across.assumed = placement.Link(latency, bandwidth)
            links.across.forget()
        executor.run(w4_mib(4, width // 4 or 1))  # untimed: imports, first calls
        for i in range(repeat):
            modes = ["aware", "blind", "assumed", "blind-assumed"]
            for mode in modes[i % 4 :] + modes[: i % 4]:
                blind, assumed = mode.startswith("blind"), mode.endswith("assumed")
                placement.worker_host = ignoring_hosts if blind else worker_host
                learned = links.within.link, links.across.link
                if assumed:  # what placement did before it measured its links
                    links.learning = False
                    links.within.link, links.across.link = (
                        links.within.assumed,
                        links.across.assumed,
                    )
                targets = w4_mib(layers, width)
                counter = CrossHostMoves()
                wire = netns_cluster.crossing_bytes()
                start = time.perf_counter()
                executor.run(targets, plugins=[counter])
                seconds = time.perf_counter() - start
                wire = netns_cluster.crossing_bytes() - wire
                if assumed:
                    links.learning = True
                    links.within.link, links.across.link = learned
                hosts = [host for host, _ in counter.made.values()]
                share = {host: hosts.count(host) for host in sorted(set(hosts), key=str)}
                row = {
                    "mode": mode,
                    "run": seconds,
                    "moved": counter.nbytes,
                    "wire": wire,
                    "tasks": share,
                    "away": counter.away / (counter.placed or 1),
                    "links": links.summary() if mode == "aware" else None,
                }
                print(json.dumps(row), flush=True)
    placement.worker_host = worker_host


def links_job(repeat: int) -> None:
    """Inside a job of three ranks, 0 and 1 on one host and 2 on another: raw MPI between
    rank 0 and each, taking turns so that both links see the same load on the machine.
    Prints, per link, the median round trip of a byte and one-way seconds per size, each
    message received into a fresh buffer (as a rank receives a result)."""
    import numpy as np
    from mpi4py import MPI

    comm = MPI.COMM_WORLD
    rank = comm.Get_rank()
    byte = np.zeros(1, dtype=np.uint8)
    sizes = (MIB, 16 * MIB)
    sent = {size: np.ones(size, dtype=np.uint8) for size in sizes}
    times: dict[tuple[int, str], list[float]] = {}
    for turn in range(max(repeat, 5) * 4):
        for peer in (1, 2):
            what = [("rtt", 200)] + [(str(size), 1) for size in sizes]
            for label, count in what:
                comm.Barrier()
                start = time.perf_counter()
                for _ in range(count):
                    if label == "rtt":
                        if rank == 0:
                            comm.Send(byte, dest=peer)
                            comm.Recv(byte, source=peer)
                        elif rank == peer:
                            comm.Recv(byte, source=0)
                            comm.Send(byte, dest=0)
                    elif rank == 0:
                        comm.Send(sent[int(label)], dest=peer)
                        comm.Recv(byte, source=peer)  # it has it all
                    elif rank == peer:
                        comm.Recv([bytearray(int(label)), MPI.BYTE], source=0)
                        comm.Send(byte, dest=0)
                seconds = (time.perf_counter() - start) / count
                if turn:  # the first turn warms the connections up
                    times.setdefault((peer, label), []).append(seconds)
    if rank == 0:
        for (peer, label), seconds in times.items():
            link = "within a host" if peer == 1 else "across hosts"
            print(json.dumps({"link": link, "what": label, "run": statistics.median(seconds)}))


def moves_job(repeat: int) -> None:
    """Inside a job with two worker ranks: a result moved between them, timed from the
    moment it was made to its consumer having it (as the ``move`` rows of run.py)."""
    from dispatcher import Op, get_executor

    with get_executor("mpi") as executor:
        for nbytes in (8, MIB, 64 * MIB):
            seconds = []
            for _ in range(max(repeat, 5)):
                seconds.append(executor.run(Op(arrival, Op(stamped, nbytes), Op(stamped, nbytes))))
            print(json.dumps({"nbytes": nbytes, "run": statistics.median(seconds)}), flush=True)


# -- outside: the hosts and the jobs --------------------------------------------------------


@contextmanager
def emulated_hosts(reuse: bool) -> Iterator[None]:
    reason = netns_cluster.unavailable()
    if reason is not None:
        sys.exit(f"cannot emulate hosts here: {reason}")
    if netns_cluster.namespaces() and not reuse:
        sys.exit(
            "emulated hosts are up already (a test session?): wait for it to end, or pass "
            "--reuse to run on them and leave them up"
        )
    if not netns_cluster.namespaces():
        netns_cluster.up()
        reuse = False
    try:
        yield
    finally:
        if not reuse:
            netns_cluster.down()


def mpiexec() -> str:
    return str(Path(sys.executable).parent / "mpiexec")


# Ranks of one host share memory, as on a real machine, and reach other hosts over TCP
# only: MPICH's own shared-memory module pairs the ranks whose hostnames match, and each
# emulated host has its own (the placement rows check it: the bytes on the links are the
# moves across hosts, not every move). UCX's shared memory would cross hosts here.
SHARED_WITHIN_HOSTS = netns_cluster.OFI_TCP


def launch(
    ranks: int,
    per_host: int,
    hosts: tuple[str, ...] = netns_cluster.HOSTS,
    transport: dict[str, str] = netns_cluster.TCP_ONLY,
) -> list[str]:
    prefix = netns_cluster.mpiexec_prefix(mpiexec(), per_host, hosts, transport)
    return [*prefix, "-genv", "MPI4PY_FUTURES_BACKOFF", "0", "-n", str(ranks)]


def json_lines(command: list[str], timeout: float = 3600) -> list[dict[str, Any]]:
    done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, cwd=HERE)
    if done.returncode:
        sys.stderr.write(f"{' '.join(command[-6:])}: exit {done.returncode}\n")
        sys.stderr.write(done.stdout[-2000:] + done.stderr[-3000:])
    return [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]


MOVES = {
    # Two worker ranks on one host, or on two; rank 0 on node1.
    "within a host": (3, 3, ("node1",)),
    "across hosts": (3, 1, ("node1", "node2", "node3")),
}


def link_rows(repeat: int) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    python = sys.executable
    # Ranks 0 and 1 on node1, rank 2 on node2.
    command = netns_cluster.mpiexec_prefix(mpiexec(), 1, ("node1",))
    command[command.index("-hosts") + 1] = "node1:2,node2:1"
    for row in json_lines([*command, "-n", "3", python, "cluster.py", "--inside-links"]):
        if row["what"] == "rtt":
            what, note = "round trip of a byte", f"{row['run'] * 1e6:.0f} µs"
        else:
            nbytes = int(row["what"])
            what = f"{nbytes // MIB} MiB one way"
            note = f"{nbytes / row['run'] / 1e9:.2f} GB/s"
        rows.append(
            {
                "runner": f"floor: MPI {what}, {row['link']}",
                "build": 0.0,
                "run": row["run"],
                "tasks": 1,
                "note": note,
            }
        )
    for label, (ranks, per_host, hosts) in MOVES.items():
        command = [
            *launch(ranks, per_host, hosts),
            *(python, "-m", "dispatcher_mpi", "cluster.py", "--inside-moves"),
            *("--repeat", str(repeat)),
        ]
        for row in json_lines(command):
            size = "8 B" if row["nbytes"] < MIB else f"{row['nbytes'] // MIB} MiB"
            note = f"{row['nbytes'] / row['run'] / 1e9:.2f} GB/s" if row["nbytes"] >= MIB else ""
            rows.append(
                {
                    "runner": f"dispatcher mpi: {size} result to a consumer, {label}",
                    "build": 0.0,
                    "run": row["run"],
                    "tasks": 1,
                    "note": note,
                }
            )
    return [{**row, "workload": "links"} for row in rows]


def workload_rows(repeat: int, quick: bool) -> list[dict[str, Any]]:
    """W2, W4, W5, W6 with rank 0 and three worker ranks, one on each host."""
    common = ["--workloads", ",".join(WORKLOADS), "--repeat", str(repeat)]
    if quick:
        common.append("--quick")
    python = sys.executable
    rows: list[dict[str, Any]] = []
    for runner in ("dispatcher_mpi", "mpi4py.futures"):
        inside = "--inside-mpi" if runner == "dispatcher_mpi" else "--inside-mpi4py"
        command = [*launch(4, 1), python, "-m", runner, "run.py", inside, *common]
        for row in json_lines(command):
            if "mpi4py" in row["runner"]:
                row["runner"] += " (backoff 0)"
            row["runner"] += ", 3 hosts"
            rows.append(row)
    return rows


def placement_rows(repeat: int, quick: bool, within: str) -> list[dict[str, Any]]:
    layers, width = (20, 30) if quick else (40, 60)
    command = [
        *launch(7, 2, transport=SHARED_WITHIN_HOSTS if within == "shm" else netns_cluster.TCP_ONLY),
        *(sys.executable, "-m", "dispatcher_mpi", "cluster.py", "--inside-placement"),
        *("--repeat", str(repeat), "--layers", str(layers), "--width", str(width)),
    ]
    runs = json_lines(command)
    rows = []
    for mode, label in (
        ("aware", "host-aware, link costs learned"),
        ("assumed", "host-aware, link costs assumed"),
        ("blind", "ignoring hosts, link costs learned"),
        ("blind-assumed", "ignoring hosts, link costs assumed"),
    ):
        mine = [r for r in runs if r["mode"] == mode]
        if not mine:
            continue
        moved = statistics.median(r["moved"] for r in mine)
        wire = statistics.median(r["wire"] for r in mine)
        away = statistics.median(r["away"] for r in mine)
        busiest = statistics.median(
            max(r["tasks"].values()) / sum(r["tasks"].values()) for r in mine
        )
        rows.append(
            {
                "workload": "W4 1 MiB",
                "runner": f"dispatcher mpi, {label}, 3 hosts x 2 worker ranks",
                "build": 0.0,
                "run": statistics.median(r["run"] for r in mine),
                "tasks": layers * width,
                "moved": moved,
                "wire": wire,
                "note": f"{moved / MIB:,.0f} MiB of inputs across hosts; "
                f"{wire / MIB:,.0f} MiB on the links; {away:.0%} of tasks on a host "
                f"holding none of their inputs; {busiest:.0%} on the busiest host"
                + _learned(mine[-1].get("links")),
            }
        )
    return rows


def _learned(links: dict[str, list[float]] | None) -> str:
    """The link costs placement had learned by the end of the last run, for a note."""
    if not links:
        return ""
    said = [
        f"{label} {latency * 1e6:.0f} µs + {bandwidth / 1e9:.2f} GB/s"
        + ("" if samples else " (assumed)")
        for label, (latency, bandwidth, samples) in links.items()
    ]
    return "; learned: " + ", ".join(said)


def table(rows: list[dict[str, Any]]) -> str:
    lines = ["| workload | runner | run s | µs/task | notes |", "|---|---|---:|---:|---|"]
    for row in rows:
        total = row["build"] + row["run"]
        per_task = total / row["tasks"] * 1e6 if row.get("tasks") else float("nan")
        lines.append(
            f"| {row['workload']} | {row['runner']} | {total:.3f} | {per_task:.1f} "
            f"| {row.get('note', '')} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sections", default=",".join(SECTIONS))
    parser.add_argument("--quick", action="store_true", help="workloads about 10x smaller")
    parser.add_argument(
        "--within-host",
        choices=("tcp", "shm"),
        default="tcp",
        help="placement section: how ranks of one host talk (tcp: like ranks on two hosts; "
        "shm: shared memory, as MPI does on a real machine)",
    )
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--reuse", action="store_true", help="run on hosts that are up already")
    parser.add_argument("--inside-placement", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--inside-moves", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--inside-links", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--layers", type=int, default=40, help=argparse.SUPPRESS)
    parser.add_argument("--width", type=int, default=60, help=argparse.SUPPRESS)
    parser.add_argument("--across", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.inside_placement:
        placement_job(args.layers, args.width, args.repeat, args.across)
        return
    if args.inside_moves:
        moves_job(args.repeat)
        return
    if args.inside_links:
        links_job(args.repeat)
        return
    sections = [s for s in args.sections.split(",") if s]
    unknown = [s for s in sections if s not in SECTIONS]
    if unknown:
        parser.error(f"--sections: unknown {', '.join(unknown)}; choose from {', '.join(SECTIONS)}")
    rows: list[dict[str, Any]] = []
    with emulated_hosts(args.reuse):
        if "links" in sections:
            rows += link_rows(args.repeat)
        if "workloads" in sections:
            rows += workload_rows(args.repeat, args.quick)
            rows += [
                {**row, "workload": "floor", "runner": row["runner"] + " across hosts"}
                for row in json_lines([*launch(2, 1), sys.executable, "floors.py", "mpi"])
            ]
        if "placement" in sections:
            rows += placement_rows(args.repeat, args.quick, args.within_host)
    rows.sort(key=lambda r: (r["workload"], r["runner"]))
    print(
        f"\n{os.cpu_count()} CPUs, 3 emulated hosts (TCP over veth), Python "
        f"{sys.version.split()[0]}, median of {args.repeat}"
        f"{', quick sizes' if args.quick else ''}\n"
    )
    for name in WORKLOADS:
        print(f"- {name}: {DESCRIPTIONS[name]}")
    print()
    print(table(rows))


if __name__ == "__main__":
    main()
