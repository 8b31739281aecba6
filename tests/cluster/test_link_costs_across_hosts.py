"""Across hosts, the moves ranks report are told apart by link: within a host, or across."""

from __future__ import annotations

from pathlib import Path

import pytest
from cluster_plugin import Cluster
from test_across_hosts import dispatcher_job

pytestmark = [pytest.mark.mpi, pytest.mark.timeout(240)]

JOB = str(Path(__file__).with_name("link_costs_job.py"))


def test_moves_within_a_host_and_across_are_learned_apart(cluster: Cluster) -> None:
    # Rank 0 and one worker rank on node1, two worker ranks on node2 and on node3.
    done = dispatcher_job(cluster, 6, 2, JOB)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    learned = {
        words[0]: (int(words[1]), float(words[2]), float(words[3]))
        for words in map(str.split, done.stdout.splitlines())
        if words and words[0] in ("within", "across")
    }
    assert set(learned) == {"within", "across"}, done.stdout
    # Moves of each kind happened, and each class learned from its own.
    for samples, latency, bandwidth in learned.values():
        assert samples > 0
        assert latency > 0
        assert bandwidth > 0
