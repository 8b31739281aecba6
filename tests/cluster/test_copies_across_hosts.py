"""A result read on another host is copied there once: later readers on that host take
the copy, not the original across the link again."""

from __future__ import annotations

from pathlib import Path

import pytest
from cluster_plugin import Cluster
from test_across_hosts import dispatcher_job

pytestmark = [pytest.mark.mpi, pytest.mark.timeout(240)]

FAN_OUT_JOB = str(Path(__file__).with_name("fan_out_job.py"))
MIB = 1024 * 1024


def test_a_result_read_on_other_hosts_crosses_to_each_about_once(cluster: Cluster) -> None:
    done = dispatcher_job(cluster, 7, 2, FAN_OUT_JOB)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    printed = dict(line.split() for line in done.stdout.splitlines() if line.strip())
    assert int(printed["hosts"]) == 3, printed  # the readers did spread over the hosts
    # The four worker ranks of the two other hosts take one copy each at most (its bytes
    # counted once, as they leave the producer's host): about 32 MiB. Before copies were
    # holders, each reader there took its own across, about 18 x 8 MiB.
    assert int(printed["crossed"]) < 6 * 8 * MIB, printed
