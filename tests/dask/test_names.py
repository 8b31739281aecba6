"""What dispatcher calls a dask worker: its port and its host, as the scheduler knows it."""

from __future__ import annotations

import pytest

from dispatcher.transport import worker_host
from dispatcher_dask._cluster import name_of


@pytest.mark.parametrize(
    ("address", "host", "name"),
    [
        ("tcp://10.0.0.2:40001", "10.0.0.2", "dask-40001@10.0.0.2"),
        ("tls://node7.example.org:9000", "node7.example.org", "dask-9000@node7.example.org"),
        # Where the scheduler names no host, the address's own.
        ("tcp://10.0.0.2:40001", None, "dask-40001@10.0.0.2"),
        ("tcp://[::1]:4000", None, "dask-4000@::1"),
        ("inproc://10.0.0.2/77/3", "10.0.0.2", "dask-10.0.0.2/77/3@10.0.0.2"),
    ],
)
def test_a_dask_worker_is_named_by_its_port_and_host(
    address: str, host: str | None, name: str
) -> None:
    assert name_of(address, host) == name


def test_the_host_reads_back_from_the_name() -> None:
    assert worker_host(name_of("tcp://127.0.0.1:35001", "127.0.0.1")) == "127.0.0.1"
    # Two workers of one host differ by their port.
    assert name_of("tcp://127.0.0.1:1", "127.0.0.1") != name_of("tcp://127.0.0.1:2", "127.0.0.1")
