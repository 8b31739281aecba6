"""Placement across hosts: a task goes to its data's host first, which the links show."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from cluster_plugin import Cluster
from test_across_hosts import dispatcher_job

pytestmark = [pytest.mark.mpi, pytest.mark.timeout(240)]

PLACEMENT_JOB = str(Path(__file__).with_name("placement_job.py"))
MIB = 1024 * 1024


def test_a_task_goes_to_the_host_of_its_data_and_its_data_stays_there(
    cluster: Cluster,
) -> None:
    done = dispatcher_job(cluster, 7, 2, PLACEMENT_JOB)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    lines = dict(
        (words[0], words[1:]) for words in map(str.split, done.stdout.splitlines()) if words
    )
    name = re.compile(r"rank-\d@node\d$")
    for mode in ("aware", "blind"):
        producer, consumers, _ = lines[mode]
        assert name.match(producer), producer
        assert all(name.match(c) for c in consumers.split(",")), consumers

    producer, consumers, crossed = lines["aware"]
    host = producer.split("@")[1]
    # Both consumers ran on the producer's host (one of them beside the producer's
    # worker, which was busy): the 16 MiB never crossed a link between hosts.
    assert {c.split("@")[1] for c in consumers.split(",")} == {host}, lines["aware"]
    assert producer in consumers.split(",")
    assert int(crossed) < 4 * MIB, lines["aware"]

    # Blind to hosts, the busy worker's neighbour is no nearer than any other worker:
    # the second consumer went to another host, and the 16 MiB crossed.
    producer, consumers, crossed = lines["blind"]
    assert {c.split("@")[1] for c in consumers.split(",")} != {producer.split("@")[1]}
    assert int(crossed) >= 16 * MIB, lines["blind"]
