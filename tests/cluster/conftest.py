"""The cluster tests run on emulated hosts: load the plugin that makes them, once."""

from __future__ import annotations

from collections.abc import Iterator

import cluster_plugin
import netns_cluster
import pytest


def pytest_configure(config: pytest.Config) -> None:
    if not config.pluginmanager.is_registered(cluster_plugin):
        config.pluginmanager.register(cluster_plugin, "cluster_plugin")


@pytest.fixture(autouse=True)
def _nothing_left_behind(request: pytest.FixtureRequest) -> Iterator[None]:
    # Every job a test starts on the hosts must be gone, on every host, once it is done.
    cluster = request.getfixturevalue("cluster")
    yield
    # Slurm's node daemons stay up between the tests that share them; their jobs must not.
    daemons = frozenset({"slurmd"} if "slurm" in request.fixturenames else ())
    left = netns_cluster.wait_empty(cluster.hosts, daemons=daemons)
    # Ranks killed on purpose leave MPICH's segments behind, like any killed MPICH rank.
    netns_cluster.clear_shared_memory(cluster.hosts)
    assert not left, f"processes left behind on the hosts: {left}"
