"""A dask cluster across emulated hosts: its scheduler on one, two worker processes on each
of two others, the caller outside them all. Workers are named with their host, which the
progress bar and the report show, and a task goes to its data's host first."""

from __future__ import annotations

import io
import os
import re
import shlex
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import netns_cluster
import pytest
from cluster_plugin import Cluster

pytest.importorskip("distributed", reason="dispatcher-dask is not installed here")

from distributed import Client

from dispatcher import get_executor, op
from dispatcher.testing import Recorder
from dispatcher.transport import worker_host

pytestmark = pytest.mark.timeout(240)

SCHEDULER_HOST = "node3"
WORKER_HOSTS = ("node1", "node2")
WORKERS_PER_HOST = 2
PORT = 8786
MIB = 1024 * 1024


def on_host(host: str, command: list[str], log: Path) -> subprocess.Popen[bytes]:
    """Start ``command`` on ``host`` (through its launcher, which execs it: the process is
    the command), its output to ``log``."""
    with log.open("wb") as out:
        return subprocess.Popen(
            [str(netns_cluster.LAUNCHER), host, shlex.join(command)],
            stdout=out,
            stderr=subprocess.STDOUT,
            # The workers import the tasks below from this folder.
            env={**os.environ, "PYTHONPATH": str(Path(__file__).parent)},
        )


@pytest.fixture
def dask_client(cluster: Cluster, tmp_path: Path) -> Iterator[Client]:
    """A client of a dask cluster whose scheduler runs on node3 and whose workers, two
    single-threaded processes per host, run on node1 and node2."""
    address = f"tcp://{netns_cluster.address(SCHEDULER_HOST)}:{PORT}"
    started: list[tuple[str, subprocess.Popen[bytes]]] = []
    try:
        scheduler = [sys.executable, "-m", "distributed.cli.dask_scheduler"]
        scheduler += ["--host", netns_cluster.address(SCHEDULER_HOST), "--port", str(PORT)]
        scheduler += ["--no-dashboard"]
        log = tmp_path / "scheduler.log"
        started.append((SCHEDULER_HOST, on_host(SCHEDULER_HOST, scheduler, log)))
        for host in WORKER_HOSTS:
            worker = [sys.executable, "-m", "distributed.cli.dask_worker", address]
            worker += ["--nworkers", str(WORKERS_PER_HOST), "--nthreads", "1"]
            worker += ["--no-dashboard", "--death-timeout", "60"]
            worker += ["--local-directory", str(tmp_path / host)]
            started.append((host, on_host(host, worker, tmp_path / f"{host}.log")))
        client = Client(address, timeout="60s", set_as_default=False)
        try:
            client.wait_for_workers(WORKERS_PER_HOST * len(WORKER_HOSTS), timeout=120)
            yield client
        finally:
            client.close()
    except BaseException:
        for path in sorted(tmp_path.glob("*.log")):
            print(f"--- {path.name}\n{path.read_text()[-3000:]}", file=sys.stderr)
        raise
    finally:
        # Workers first (their nannies leave when told), then the scheduler; whatever
        # is still there after that is killed with its host's processes.
        for _, process in reversed(started):
            process.terminate()
        deadline = time.monotonic() + 20
        for host, process in reversed(started):
            try:
                process.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                netns_cluster.kill(host)
                process.wait()


def test_dask_workers_are_named_with_their_hosts(dask_client: Client, tmp_path: Path) -> None:
    import numpy as np
    from placement_job import consume

    from dispatcher._progress import ProgressBar

    lines = io.StringIO()  # not a terminal: status lines
    report = tmp_path / "report.html"
    with get_executor("dask", client=dask_client, prefetch=0) as executor:
        nodes = [op(consume)(np.ones(4, dtype=np.uint8), i % 4) for i in range(12)]
        assert (
            executor.run(nodes, plugins=[ProgressBar(file=lines)], report=str(report)) == [1] * 12
        )
    hosts = {netns_cluster.address(host) for host in WORKER_HOSTS}
    names = set(re.findall(r"<td>(dask-\d+@[\d.]+)</td>", report.read_text()))
    assert {worker_host(name) for name in names} == hosts, names
    html = report.read_text()
    assert "<th>host</th>" in html
    assert re.search(r'<div class="v">2</div><div class="k">hosts</div>', html)
    assert ", on 2 hosts" in lines.getvalue()


def test_a_task_goes_to_its_data_host_first(dask_client: Client) -> None:
    """A producer makes 16 MiB and a slow consumer reads it. The consumer is sent as soon
    as the producer is, while the producer's worker is busy: it waits for its input there or
    goes to the other worker of the producer's host (an input's wait holds on every worker
    alike), never to one of the idle workers of the other host, and the 16 MiB never
    crosses a link between hosts."""
    import numpy as np
    from placement_job import consume, produce

    with get_executor("dask", client=dask_client, prefetch=0) as executor:
        executor.run([op(consume)(np.ones(1, dtype=np.uint8), 0) for _ in range(4)])  # imports
        for _ in range(2):
            data = op(produce, label="producer")()
            reader = op(consume, label="consumer")(data, 0)
            recorder = Recorder()
            before = netns_cluster.crossing_bytes()
            assert executor.run(reader, plugins=[recorder]) == 1
            crossed = netns_cluster.crossing_bytes() - before
            workers = {node.label: worker for _, node, worker in recorder.of("started")}
            producer, consumer = workers["producer"], workers["consumer"]
            assert worker_host(producer) in {netns_cluster.address(h) for h in WORKER_HOSTS}
            assert worker_host(consumer) == worker_host(producer), workers
            assert crossed < 4 * MIB, (crossed, workers)
