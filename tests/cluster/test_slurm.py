"""A dispatcher job under ``srun`` on Slurm, one slurmd per emulated host."""

from __future__ import annotations

import ast
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import emulated_slurm
import netns_cluster
import pytest
from cluster_plugin import Cluster

pytestmark = [pytest.mark.mpi, pytest.mark.timeout(300)]

MIB = 1024 * 1024

HOSTS_JOB = Path(__file__).with_name("hosts_job.py")


@pytest.fixture(scope="module")
def slurm(cluster: Cluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """Slurm up on the emulated hosts for this module: the environment srun needs."""
    reason = emulated_slurm.unavailable()
    if reason is not None:
        pytest.skip(f"no emulated Slurm: {reason}")
    with emulated_slurm.running(tmp_path_factory.mktemp("slurm"), cluster.hosts) as env:
        yield env


def test_srun_runs_a_dispatcher_job_on_three_hosts(
    cluster: Cluster, slurm: dict[str, str], tmp_path: Path
) -> None:
    before = {host: netns_cluster.link_bytes(host) for host in cluster.hosts}
    done = subprocess.run(
        [
            *("srun", "-N", "3", "-n", "3", "--mpi=pmi2"),
            *(sys.executable, "-m", "dispatcher_mpi", str(HOSTS_JOB)),
        ],
        capture_output=True,
        text=True,
        timeout=240,
        cwd=tmp_path,
        env={**slurm, **netns_cluster.TCP_ONLY},
    )
    after = {host: netns_cluster.link_bytes(host) for host in cluster.hosts}
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]

    seen = ast.literal_eval(done.stdout.split("seen", 1)[1].splitlines()[0].strip())
    assert {host for _, host, _ in seen} == set(cluster.hosts), seen
    assert all(host == processor for _, host, processor in seen), seen
    assert float(done.stdout.split("sum", 1)[1]) == 3.0 * 8 * MIB
    # Both 64 MiB results came to rank 0 from the other hosts, over the links.
    rank0_host = next(host for rank, host, _ in seen if rank == 0)
    received = after[rank0_host][1] - before[rank0_host][1]
    assert received >= 2 * 64 * MIB, received
