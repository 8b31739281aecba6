"""MPI jobs whose ranks sit on three emulated hosts and talk over the links between them."""

from __future__ import annotations

import ast
import subprocess
import sys
import textwrap
from collections.abc import Mapping
from pathlib import Path

import netns_cluster
import pytest
from cluster_plugin import Cluster

pytestmark = [pytest.mark.mpi, pytest.mark.timeout(300)]

MPI_TESTS = Path(__file__).parents[1] / "mpi"
MIB = 1024 * 1024


def dispatcher_job(
    cluster: Cluster,
    ranks: int,
    per_host: int,
    *args: str,
    timeout: float = 240,
    transport: Mapping[str, str] = netns_cluster.TCP_ONLY,
) -> subprocess.CompletedProcess[str]:
    """``mpiexec ... python -m dispatcher_mpi ARGS`` across the hosts."""
    launch = cluster.launch(ranks, per_host, transport)
    return subprocess.run(
        [*launch, sys.executable, "-m", "dispatcher_mpi", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=MPI_TESTS,
    )


def write(tmp_path: Path, body: str) -> str:
    path = tmp_path / "program.py"
    path.write_text(textwrap.dedent(body))
    return str(path)


HOSTS_JOB = str(Path(__file__).with_name("hosts_job.py"))


@pytest.mark.parametrize(
    ("ranks", "per_host", "transport"),
    [
        (3, 1, netns_cluster.TCP_ONLY),
        (6, 2, netns_cluster.TCP_ONLY),
        (3, 1, netns_cluster.OFI_TCP),
    ],
    ids=["ucx-1-per-host", "ucx-2-per-host", "ofi-1-per-host"],
)
def test_ranks_sit_on_three_hosts_and_results_cross_the_links(
    cluster: Cluster, ranks: int, per_host: int, transport: dict[str, str]
) -> None:
    before = {host: netns_cluster.link_bytes(host) for host in cluster.hosts}
    done = dispatcher_job(cluster, ranks, per_host, HOSTS_JOB, transport=transport)
    after = {host: netns_cluster.link_bytes(host) for host in cluster.hosts}
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]

    seen = ast.literal_eval(done.stdout.split("seen", 1)[1].splitlines()[0].strip())
    expected = {r: cluster.hosts[(r // per_host) % len(cluster.hosts)] for r in range(ranks)}
    # Every rank reports the hostname its host gave it, and MPI names the same node.
    assert all(host == expected[rank] for rank, host, _ in seen), seen
    assert all(host == processor for _, host, processor in seen), seen
    assert len({processor for _, _, processor in seen}) == 3, seen
    assert float(done.stdout.split("sum", 1)[1]) == 3.0 * 8 * MIB

    # The two 64 MiB results were made on worker ranks and sent to rank 0 on node1. With
    # one rank per host, both crossed a link; the bridge counts each byte twice: leaving
    # its host, and arriving on node1.
    if per_host == 1:
        sent = {host: after[host][0] - before[host][0] for host in cluster.hosts}
        received = {host: after[host][1] - before[host][1] for host in cluster.hosts}
        assert received["node1"] >= 2 * 64 * MIB, (sent, received)
        assert sent["node2"] + sent["node3"] >= 2 * 64 * MIB, (sent, received)


def test_without_tcp_only_the_wheel_moves_data_past_the_links(
    cluster: Cluster, tmp_path: Path
) -> None:
    # Why the cluster's mpiexec says UCX_TLS=tcp,self: left alone, UCX finds the other
    # "hosts" on this machine and moves the data through shared memory. If this ever
    # fails, the links are no longer proof of anything without that setting.
    program = write(
        tmp_path,
        """
        import numpy as np
        from mpi4py import MPI

        comm = MPI.COMM_WORLD
        if comm.Get_rank() == 1:
            comm.Send(np.ones(32 * 1024 * 1024, dtype=np.uint8), dest=0)
        elif comm.Get_rank() == 0:
            buffer = np.empty(32 * 1024 * 1024, dtype=np.uint8)
            comm.Recv(buffer, source=1)
            print("received", int(buffer.sum()))
        """,
    )
    results = {}
    for label, command in (("shared", cluster.launch(2, transport={})), ("tcp", cluster.launch(2))):
        before = netns_cluster.link_bytes("node2")[0]
        done = subprocess.run(
            [*command, sys.executable, program], capture_output=True, text=True, timeout=120
        )
        assert done.returncode == 0, done.stderr[-3000:]
        assert f"received {32 * MIB}" in done.stdout
        results[label] = netns_cluster.link_bytes("node2")[0] - before
    assert results["tcp"] >= 32 * MIB, results
    assert results["shared"] < MIB, results


@pytest.mark.parametrize(("ranks", "per_host"), [(3, 1), (6, 2)])
def test_conformance_suite_across_hosts(cluster: Cluster, ranks: int, per_host: int) -> None:
    done = dispatcher_job(
        cluster,
        ranks,
        per_host,
        "-m",
        "pytest",
        "-q",
        "-p",
        "no:cacheprovider",
        "conformance_job.py",
        timeout=280,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert " passed" in done.stdout
