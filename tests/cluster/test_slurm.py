"""A dispatcher job under ``srun`` on Slurm, one slurmd per emulated host."""

from __future__ import annotations

import ast
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import emulated_slurm
import netns_cluster
import pytest
from cluster_plugin import Cluster

pytestmark = [pytest.mark.mpi, pytest.mark.timeout(300)]

MIB = 1024 * 1024

BUSY_JOB = str(Path(__file__).with_name("busy_job.py"))

HOSTS_JOB = Path(__file__).with_name("hosts_job.py")


@pytest.fixture
def slurm(cluster: Cluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """Slurm up on the emulated hosts for one test: the environment srun needs."""
    reason = emulated_slurm.unavailable()
    if reason is not None:
        pytest.skip(f"no emulated Slurm: {reason}")
    with emulated_slurm.running(tmp_path_factory.mktemp("slurm"), cluster.hosts) as env:
        yield {**env, **netns_cluster.TCP_ONLY}


def srun(*args: str) -> list[str]:
    """``srun`` of a dispatcher job, one rank on each of the three hosts."""
    return [
        "srun",
        "-N",
        "3",
        "-n",
        "3",
        "--mpi=pmi2",
        sys.executable,
        "-m",
        "dispatcher_mpi",
        *args,
    ]


def test_srun_runs_a_dispatcher_job_on_three_hosts(
    cluster: Cluster, slurm: dict[str, str], tmp_path: Path
) -> None:
    before = {host: netns_cluster.link_bytes(host) for host in cluster.hosts}
    done = subprocess.run(
        srun(str(HOSTS_JOB)),
        capture_output=True,
        text=True,
        timeout=240,
        cwd=tmp_path,
        env=slurm,
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


def test_a_dead_host_ends_the_srun_job_and_slurm_names_it(
    cluster: Cluster, slurm: dict[str, str], tmp_path: Path
) -> None:
    markers = tmp_path / "working"
    markers.mkdir()
    job = subprocess.Popen(
        srun(BUSY_JOB, str(markers), "3000"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=tmp_path,
        env=slurm,
    )
    try:
        for _ in range(1200):
            if (markers / "node3").exists() or job.poll() is not None:
                break
            time.sleep(0.1)
        if not (markers / "node3").exists():
            job.kill()
            pytest.fail(f"node3 never started work: {job.communicate()}")
        # slurmd, its step daemon and the rank: the whole host goes.
        assert netns_cluster.kill("node3")
        # Nothing in the job notices: it ends when slurmctld declares node3 dead
        # (SlurmdTimeout, 10 s here), which a hang would outlast.
        out, err = job.communicate(timeout=180)
    finally:
        if job.poll() is None:
            job.kill()
            job.communicate()
    print(f"exit status {job.returncode}\n--- stdout\n{out}\n--- stderr\n{err}")
    assert job.returncode != 0
    assert "the job finished" not in out
    assert "Node failure on node3" in err, err


def test_a_failing_script_fails_the_srun_job(slurm: dict[str, str], tmp_path: Path) -> None:
    program = tmp_path / "fail.py"
    program.write_text("import sys\nsys.exit(3)\n")
    done = subprocess.run(
        srun(str(program)), capture_output=True, text=True, timeout=240, cwd=tmp_path, env=slurm
    )
    # The step's status is the script's, as under mpiexec.
    assert done.returncode == 3, done.stdout[-3000:] + done.stderr[-3000:]
