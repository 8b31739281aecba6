"""A pytest plugin that runs a test session on three emulated hosts.

``pytest -p cluster_plugin --cluster-ranks-per-host N tests/mpi`` (with this folder on
``PYTHONPATH``) brings the hosts up before collection, points ``DISPATCHER_TEST_MPIEXEC`` at
an ``mpiexec`` that places N ranks on each host in turn, and takes everything down at the
end of the session, whatever happened. Where the machine cannot make emulated hosts, every
test of such a session is skipped with the reason.

The tests under ``tests/cluster`` load the plugin themselves (their conftest) and reach the
hosts through the ``cluster`` fixture, which skips with the reason where there are none;
without ``--cluster-ranks-per-host`` the other tests of the session keep their own mpiexec.
"""

from __future__ import annotations

import os
import shlex
import shutil
import signal
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import netns_cluster
import pytest

_REASON = pytest.StashKey[str]()
_CLUSTER = pytest.StashKey["Cluster"]()


@dataclass(frozen=True)
class Cluster:
    """The emulated hosts of this session and how to start an MPI job across them."""

    hosts: tuple[str, ...]
    mpiexec: str

    def launch(
        self,
        ranks: int,
        ranks_per_host: int = 1,
        transport: Mapping[str, str] = netns_cluster.TCP_ONLY,
    ) -> list[str]:
        """``mpiexec ... -n ranks``: the ranks fill the hosts ``ranks_per_host`` at a time,
        with ``transport`` (environment variables) in every rank's environment."""
        prefix = netns_cluster.mpiexec_prefix(self.mpiexec, ranks_per_host, self.hosts, transport)
        return [*prefix, "-n", str(ranks)]


def find_mpiexec() -> str | None:
    """The mpiexec of this Python's environment (the wheel's), else the one on PATH."""
    return shutil.which("mpiexec", path=str(Path(sys.executable).parent)) or shutil.which("mpiexec")


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--cluster-ranks-per-host",
        type=int,
        default=None,
        help="run every MPI job of the session across the emulated hosts, N ranks per host",
    )


def pytest_configure(config: pytest.Config) -> None:
    mpiexec = find_mpiexec()
    reason = netns_cluster.unavailable()
    if reason is None and mpiexec is None:
        reason = "no mpiexec next to this Python or on PATH (pip install mpich)"
    if reason is not None or mpiexec is None:
        config.stash[_REASON] = reason or ""
        return
    config.add_cleanup(netns_cluster.down)
    _interrupt_on_sigterm(config)
    netns_cluster.up()
    cluster = Cluster(netns_cluster.HOSTS, mpiexec)
    config.stash[_CLUSTER] = cluster
    per_host = _ranks_per_host(config)
    if per_host is None:
        return
    previous = os.environ.get("DISPATCHER_TEST_MPIEXEC")
    os.environ["DISPATCHER_TEST_MPIEXEC"] = shlex.join(
        netns_cluster.mpiexec_prefix(mpiexec, per_host, cluster.hosts)
    )
    config.add_cleanup(lambda: _restore("DISPATCHER_TEST_MPIEXEC", previous))


def pytest_report_header(config: pytest.Config) -> str:
    if _REASON in config.stash:
        return f"emulated hosts: none ({config.stash[_REASON]})"
    hosts = config.stash[_CLUSTER].hosts
    listed = ", ".join(f"{h}={netns_cluster.address(h)}" for h in hosts)
    per_host = _ranks_per_host(config)
    placed = f"every MPI job: {per_host} rank(s) per host" if per_host else "cluster tests only"
    return f"emulated hosts: {listed}; {placed}"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if _REASON in config.stash and _ranks_per_host(config) is not None:
        skip = pytest.mark.skip(reason=f"no emulated hosts: {config.stash[_REASON]}")
        for item in items:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def cluster(pytestconfig: pytest.Config) -> Cluster:
    """The emulated hosts, up for the whole session."""
    if _REASON in pytestconfig.stash:
        pytest.skip(f"no emulated hosts: {pytestconfig.stash[_REASON]}")
    return pytestconfig.stash[_CLUSTER]


def _interrupt_on_sigterm(config: pytest.Config) -> None:
    # A session ended by SIGTERM (a CI or tox timeout) still takes its hosts down: pytest
    # runs its cleanups after a KeyboardInterrupt, not after the default SIGTERM death.
    if signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
        return

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    previous = signal.signal(signal.SIGTERM, interrupt)
    config.add_cleanup(lambda: signal.signal(signal.SIGTERM, previous))


def _ranks_per_host(config: pytest.Config) -> int | None:
    # A plugin registered by a conftest has no command-line option: it was not asked for.
    value = config.getoption("--cluster-ranks-per-host", default=None)
    return None if value is None else int(value)


def _restore(name: str, value: str | None) -> None:
    if value is None:
        os.environ.pop(name, None)
    else:
        os.environ[name] = value
