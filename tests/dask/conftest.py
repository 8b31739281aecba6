"""One small dask cluster for the whole directory: starting one costs seconds, so every
test that does not need a cluster of its own runs on this one, through ``address=``."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

# Task functions for these tests live in dask_tasks.py, importable by worker processes.
sys.path.insert(0, str(Path(__file__).parent))


@pytest.fixture(scope="session")
def dask_cluster() -> Iterator[Any]:
    """Two worker processes of one thread each, with nannies that restart a dead worker."""
    import dask
    from distributed import LocalCluster

    # A local cluster closes a worker's nanny when no worker of its name is back
    # ``lost-worker-timeout`` after one was removed, judging by whoever is there when
    # that time comes: a worker restarted by one test and killed by the next within that
    # time would be closed for good. Tests that kill or restart workers wait for them.
    with dask.config.set({"distributed.deploy.lost-worker-timeout": "1h"}):
        cluster = LocalCluster(
            n_workers=2,
            threads_per_worker=1,
            processes=True,
            dashboard_address=None,
            scheduler_kwargs={"dashboard_address": ":0"},
        )
        try:
            yield cluster
        finally:
            cluster.close()


@pytest.fixture
def dask_client(dask_cluster: Any) -> Iterator[Any]:
    """A client of the shared cluster, which waits for its two workers first: a test
    before may have killed one, and its nanny takes a moment to start another."""
    from distributed import Client

    client = Client(dask_cluster, set_as_default=False)
    try:
        client.wait_for_workers(2, timeout=60)
        yield client
    finally:
        client.close()
