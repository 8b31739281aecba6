"""The result cache on a directory every emulated host sees, as a cluster's shared file
system: worker ranks on other hosts store results and read hits themselves, so a hit
never crosses a link through the caller."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import netns_cluster
import pytest
from cluster_plugin import Cluster

pytestmark = [pytest.mark.mpi, pytest.mark.timeout(300)]

JOB = str(Path(__file__).with_name("cache_job.py"))
MIB = 1024 * 1024


def _printed(stdout: str, name: str) -> str:
    return stdout.split(f"\n{name} ", 1)[1].splitlines()[0]


def test_ranks_on_other_hosts_store_and_read_the_cache_themselves(
    cluster: Cluster, tmp_path: Path
) -> None:
    markers = tmp_path / "calls"
    markers.mkdir()
    launch = cluster.launch(3, 1, netns_cluster.TCP_ONLY)
    done = subprocess.run(
        [
            *launch,
            sys.executable,
            "-m",
            "dispatcher_mpi",
            JOB,
            str(tmp_path / "cache"),
            str(markers),
        ],
        capture_output=True,
        text=True,
        timeout=240,
        cwd=Path(__file__).parent,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    stdout = "\n" + done.stdout
    stored = ast.literal_eval(_printed(stdout, "stored"))
    hits = ast.literal_eval(_printed(stdout, "hits"))
    # Rank 0 (the caller) is on node1; the workers on node2 and node3.
    assert {worker.partition("@")[2] for worker in stored} == {"node2", "node3"}, stored
    assert len(hits) == 12, hits
    assert {worker.partition("@")[2] for worker in hits} <= {"node2", "node3"}, hits
    assert int(_printed(stdout, "calls")) == 12  # the second run called nothing
    assert _printed(stdout, "same") == "True"
    # 24 MiB of arrays were read back where their sums ran: only the sums (and the
    # tasks) crossed, not the arrays through the caller.
    assert int(_printed(stdout, "crossed")) < 2 * MIB, stdout
