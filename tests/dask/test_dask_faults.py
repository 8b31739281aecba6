"""The dask executor when workers die, arrive, or the run is abandoned; and what it
reports."""

from __future__ import annotations

import io
import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import dask_tasks
import psutil
import pytest

from dispatcher import DispatcherError, Op, WorkerLostError, get_executor, hookimpl, op, run
from dispatcher.testing import tasks
from dispatcher.transport import worker_host
from dispatcher_dask._cluster import name_of

pytestmark = pytest.mark.timeout(120)


class Seen:
    """Where each task started, what was retried, and what finished tasks reported."""

    def __init__(self) -> None:
        self.started: list[tuple[Any, str]] = []
        self.retried: list[tuple[Any, BaseException]] = []
        self.finished: dict[Any, tuple[float, int | None]] = {}
        self._lock = threading.Lock()

    @hookimpl
    def dispatcher_task_started(self, node: Any, worker: str) -> None:
        with self._lock:
            self.started.append((node, worker))

    @hookimpl
    def dispatcher_task_retried(self, node: Any, error: BaseException) -> None:
        with self._lock:
            self.retried.append((node, error))

    @hookimpl
    def dispatcher_task_finished(
        self, node: Any, worker: str, duration: float, nbytes: int | None
    ) -> None:
        with self._lock:
            self.finished[node] = (duration, nbytes)


def signal_once_written(
    marker: Path, signum: int = signal.SIGKILL
) -> tuple[threading.Thread, list[int]]:
    """A thread that sends ``signum`` to the worker whose pid a task writes to
    ``marker``."""
    signalled: list[int] = []

    def watch() -> None:
        for _ in range(3000):
            if marker.exists() and marker.read_text():
                signalled.append(int(marker.read_text()))
                os.kill(signalled[0], signum)
                return
            time.sleep(0.02)

    thread = threading.Thread(target=watch)
    thread.start()
    return thread, signalled


def descendants() -> set[int]:
    return {p.pid for p in psutil.Process().children(recursive=True)}


def wait_gone(pids: set[int], seconds: float = 30) -> set[int]:
    """Those of ``pids`` still alive after up to ``seconds`` (zombies count as gone)."""
    deadline = time.monotonic() + seconds
    while True:
        alive = set()
        for p in pids:
            try:
                if psutil.Process(p).status() != psutil.STATUS_ZOMBIE:
                    alive.add(p)
            except psutil.NoSuchProcess:
                pass
        if not alive or time.monotonic() > deadline:
            return alive
        time.sleep(0.1)


def scheduler_tasks(client: Any) -> list[str]:
    """What the scheduler holds: each task's key, state and the clients that want it."""
    return list(
        client.run_on_scheduler(
            lambda dask_scheduler: [
                f"{k} {ts.state} {ts.who_wants}" for k, ts in dask_scheduler.tasks.items()
            ]
        )
    )


def worker_names(client: Any) -> set[str]:
    """What dispatcher calls the workers of ``client``'s cluster now."""
    info = client.scheduler_info(n_workers=-1)["workers"]
    return {name_of(address, worker["host"]) for address, worker in info.items()}


def test_worker_killed_mid_run_result_still_right(tmp_path: Path, dask_client: Any) -> None:
    """The killed worker held results a later task needs: dispatcher recomputes them,
    reruns the task it was running, and the nanny's replacement worker gets work."""
    address = dask_client.scheduler.address
    before = worker_names(dask_client)
    marker = tmp_path / "pid"
    parts = [Op(dask_tasks.sleep_then, 0.05, i) for i in range(6)]
    victim = op(dask_tasks.report_pid_then_sleep, label="victim")(str(marker), 3)
    top = Op(dask_tasks.total, *parts, Op(dask_tasks.pid, victim))
    seen = Seen()
    with get_executor("dask", address=address, retries=1) as ex:
        killer, killed = signal_once_written(marker)
        result = ex.run(top, plugins=[seen])
        killer.join()
        assert killed, "the victim never started"
        assert result - sum(range(6)) != killed[0]  # it ran again, elsewhere
        assert any(isinstance(e, WorkerLostError) for _, e in seen.retried)
        # The nanny starts a replacement under a new address: it is a new worker, and
        # the executor gives it work.
        dask_client.wait_for_workers(2, timeout=60)
        replaced = worker_names(dask_client) - before
        assert replaced
        seen = Seen()
        assert ex.run([Op(dask_tasks.sleep_then, 0.2, i) for i in range(8)], plugins=[seen])
        assert replaced & {w for _, w in seen.started}


def test_sizes_and_durations_are_reported(dask_client: Any) -> None:
    big = Op(dask_tasks.megabyte_after, 0.2)
    seen = Seen()
    assert run(
        Op(dask_tasks.length, big),
        executor="dask",
        address=dask_client.scheduler.address,
        plugins=[seen],
    ) == (1 << 20)
    duration, nbytes = seen.finished[big]
    assert nbytes == 1 << 20
    assert duration >= 0.2


def test_existing_client_is_used_and_left_open(dask_client: Any, tmp_path: Path) -> None:
    assert run([Op(dask_tasks.total, 1, 2)], executor="dask", client=dask_client, workers=2) == [3]
    assert dask_client.status == "running"
    assert dask_client.submit(dask_tasks.total, 4, 5).result() == 9
    # A scheduler file, as dask-mpi and dask-jobqueue write them, works as an address.
    path = tmp_path / "scheduler.json"
    path.write_text(json.dumps({"address": dask_client.scheduler.address}))
    assert run(Op(dask_tasks.total, 1, 2), executor="dask", address=str(path)) == 3


def test_nothing_is_left_on_an_existing_cluster(dask_client: Any) -> None:
    """A run abandoned midway (cancelled, as Ctrl-C cancels it) and a run failed fast
    leave the cluster holding none of their tasks or results."""
    import anyio

    address = dask_client.scheduler.address
    held = [Op(dask_tasks.sleep_then, 0, i) for i in range(4)]
    slow = [Op(dask_tasks.sleep_then, 1.5, Op(dask_tasks.total, *held)) for _ in range(4)]

    async def abandon() -> None:
        with get_executor("dask", address=address) as ex:
            with anyio.move_on_after(1):
                await ex.arun(slow)
            assert wait_for(lambda: not scheduler_tasks(dask_client)), scheduler_tasks(dask_client)
            with pytest.raises(ValueError, match="first"):
                ex.run([Op(dask_tasks.total, *held), Op(tasks.fail, "first"), *slow])
            assert wait_for(lambda: not scheduler_tasks(dask_client)), scheduler_tasks(dask_client)

    anyio.run(abandon)


def wait_for(check: Any, seconds: float = 30) -> bool:
    deadline = time.monotonic() + seconds
    while not check():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def test_fail_fast_leaves_no_cluster_process_behind() -> None:
    """With a cluster of its own, a failed run's executor closes it: every worker and
    nanny process is gone, the two-minute task's included."""
    before = descendants()
    bad = Op(tasks.fail, "first")
    slow = Op(dask_tasks.sleep_then, 120, "slow")
    started: list[int] = []
    with get_executor("dask", workers=2) as ex:
        started.extend(descendants() - before)
        with pytest.raises(ValueError, match="first"):
            ex.run([bad, slow])
    assert started, "the executor started no worker process"
    assert not wait_gone(set(started))


def test_the_workers_of_a_cluster_started_here_leave_ctrl_c_to_the_caller() -> None:
    # The terminal sends Ctrl-C to every process of its group, the cluster's workers
    # included: they died of it, with a traceback each, and were started again.
    with get_executor("dask", workers=2, threads_per_worker=1) as ex:
        workers = set(ex.run([Op(tasks.sleep_then, 0.3, Op(tasks.pid, i)) for i in range(4)]))
        assert len(workers) == 2
        for worker in workers:
            os.kill(worker, signal.SIGINT)
        time.sleep(1)
        assert all(psutil.pid_exists(worker) for worker in workers)
        again = set(ex.run([Op(tasks.sleep_then, 0.3, Op(tasks.pid, i)) for i in range(4)]))
        assert again == workers


def test_ctrl_c_while_the_executor_closes_is_raised_once_its_cluster_is_closed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # It cut the cluster's close short, and distributed's exit handler then waited its
    # whole timeout (10 s) on the half-closed cluster before the program could end.
    from distributed import LocalCluster

    closing: list[Any] = []
    close = LocalCluster.close

    def interrupted_close(self: Any, *args: Any, **kwargs: Any) -> Any:
        closing.append(self)
        os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C, as the cluster starts closing
        return close(self, *args, **kwargs)

    monkeypatch.setattr(LocalCluster, "close", interrupted_close)
    ex = get_executor("dask", workers=1)
    assert ex.run(Op(tasks.inc, 1)) == 2
    with pytest.raises(KeyboardInterrupt):
        ex.close()
    assert [str(cluster.status) for cluster in closing] == ["Status.closed"]


def test_the_workers_own_setup_leaves_the_configured_preloads_in_place(tmp_path: Path) -> None:
    # The executor's own preload replaced distributed.worker.preload.
    import dask
    import distributed  # noqa: F401  (its defaults, loaded inside the with, would go with it)

    marker = tmp_path / "preloaded"
    preload = tmp_path / "users_preload.py"
    preload.write_text(
        "import os, pathlib\n"
        "def dask_setup(worker):\n"
        f"    pathlib.Path({str(marker)!r} + str(os.getpid())).touch()\n"
    )
    with (
        dask.config.set({"distributed.worker.preload": [str(preload)]}),
        get_executor("dask", workers=2) as ex,
    ):
        assert ex.run(Op(tasks.inc, 1)) == 2
    assert len(list(tmp_path.glob("preloaded*"))) == 2


@pytest.mark.timeout(90)
def test_a_ctrl_c_that_reaches_a_worker_as_it_starts_leaves_it_be(tmp_path: Path) -> None:
    # The terminal sends Ctrl-C to the workers too (they are in its process group). One
    # that came before they set it aside killed them as they started, with a traceback
    # each. Here a preload sends it to its own worker as it starts.
    import dask
    import distributed  # noqa: F401  (its defaults, loaded inside the with, would go with it)

    preload = tmp_path / "interrupts_itself.py"
    preload.write_text(
        "import os, signal\ndef dask_setup(worker):\n    os.kill(os.getpid(), signal.SIGINT)\n"
    )
    with (
        dask.config.set({"distributed.worker.preload": [str(preload)]}),
        get_executor("dask", workers=2) as ex,
    ):
        pids = set(ex.run([Op(tasks.sleep_then, 0.3, Op(tasks.pid, i)) for i in range(4)]))
        assert len(pids) == 2  # both started, and stayed
        assert ex.run(Op(tasks.inc, 1)) == 2
        assert set(ex.run([Op(tasks.sleep_then, 0.3, Op(tasks.pid, i)) for i in range(4)])) == pids


SCRIPT = textwrap.dedent(
    """
    import sys, time
    from dispatcher import Op, run

    def slow(x):
        time.sleep(3600)

    if __name__ == "__main__":
        print("ready", flush=True)
        try:
            run([Op(slow, i) for i in range(3)], executor="dask", workers=2)
        except KeyboardInterrupt:
            print("interrupted", flush=True)
            raise
    """
)


def test_ctrl_c_leaves_no_cluster_process_behind(tmp_path: Path) -> None:
    script = tmp_path / "interrupted.py"
    script.write_text(SCRIPT)
    child = subprocess.Popen(
        [sys.executable, str(script)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        # A shell's background job ignores SIGINT; the child must see it as a terminal would.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    workers: set[int] = set()
    try:
        assert child.stdout is not None
        assert child.stdout.readline().strip() == "ready"
        parent = psutil.Process(child.pid)
        # Wait for the cluster: a process per worker (their nannies live in the caller).
        assert wait_for(lambda: len(parent.children(recursive=True)) >= 2, 60)
        time.sleep(1)  # let the tasks start
        workers = {p.pid for p in parent.children(recursive=True)}
        child.send_signal(signal.SIGINT)
        out, err = child.communicate(timeout=60)
    finally:
        if child.poll() is None:  # never leave a stuck child behind
            child.kill()
            child.wait()
    assert "interrupted" in out
    assert "KeyboardInterrupt" in err
    assert not wait_gone(workers)


def small_cluster(workers: int) -> Any:
    """A local cluster of its own for one test: ``workers`` processes of one thread, with
    nannies, and no dashboard."""
    from distributed import LocalCluster

    return LocalCluster(
        n_workers=workers,
        threads_per_worker=1,
        processes=True,
        dashboard_address=None,
        scheduler_kwargs={"dashboard_address": ":0"},
    )


def test_worker_added_mid_run_gets_work() -> None:
    from distributed import Client

    with (
        small_cluster(1) as cluster,
        Client(cluster, set_as_default=False) as client,
    ):
        first = worker_names(client)
        seen = Seen()
        # Nothing queued on a worker beyond the task it runs (prefetch=0): the tasks wait
        # in dispatcher's queue, for whichever worker is free first, the new one included.
        nodes = [Op(dask_tasks.sleep_then, 0.25, i) for i in range(40)]

        def grow() -> None:
            wait_for(lambda: bool(seen.started))
            cluster.scale(2)

        grower = threading.Thread(target=grow)
        grower.start()
        try:
            assert run(nodes, executor="dask", client=client, prefetch=0, plugins=[seen]) == list(
                range(40)
            )
        finally:
            grower.join()
        new = {w for _, w in seen.started} - first
        assert new, "the new worker got no task"
        # Named with its host, as the workers there from the start.
        assert new <= worker_names(client)
        assert {worker_host(w) for w in new} == {"127.0.0.1"}


def test_report_and_progress_from_a_dask_run(dask_client: Any, tmp_path: Path) -> None:
    """Workers are named with their host, ``dask-PORT@HOST``, wherever they show: hooks,
    the progress bar's hosts, the report's workers."""
    from dispatcher._progress import ProgressBar
    from dispatcher._report import ReportWriter

    report = ReportWriter(tmp_path / "report.html")
    bar, seen = ProgressBar(file=io.StringIO()), Seen()
    parts = [Op(dask_tasks.sleep_then, 0.01, i) for i in range(5)]
    assert (
        run(
            Op(dask_tasks.total, *parts),
            executor="dask",
            address=dask_client.scheduler.address,
            plugins=[report, bar, seen],
        )
        == 10
    )
    workers = worker_names(dask_client)
    assert all(re.fullmatch(r"dask-\d+@127\.0\.0\.1", name) for name in workers), workers
    assert {w for _, w in seen.started} <= workers
    assert bar.hosts == {"127.0.0.1"}
    assert report.record is not None
    ran = {a.worker for a in report.record.attempts}
    assert ran
    assert ran <= workers
    html = report.path.read_text()
    for name in ran:
        assert f"<td>{name}</td>" in html


def test_a_scheduler_file_that_never_appears_is_a_clear_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # dask's own client waits for the file with no limit: the run hung without a word.
    from dispatcher_dask import _cluster

    monkeypatch.setattr(_cluster, "SCHEDULER_FILE_WAIT", 0.3)
    missing = str(tmp_path / "scheduler.json")
    with pytest.raises(FileNotFoundError, match="no dask scheduler file at"):
        run(Op(abs, -1), executor="dask", address=missing)


def test_a_dask_run_inside_a_dask_task_is_refused_naming_what_to_use() -> None:
    # It failed after seconds with "Nanny failed to start" and a logged traceback.
    code = textwrap.dedent(
        """
        from dispatcher import DispatcherError, op, run

        def inner(n):
            return run([op(abs)(-i) for i in range(n)], executor="dask", workers=1)

        if __name__ == "__main__":
            try:
                run(op(inner)(3), executor="dask", workers=1)
            except DispatcherError as exc:
                print("refused:", exc)
        """
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=100)
    assert "refused: a dask executor cannot start a cluster of its own inside a dask task" in (
        done.stdout
    ), done.stdout + done.stderr
    assert "Nanny failed" not in done.stderr


def test_an_executor_never_closed_with_a_task_given_up_on_exits_without_a_traceback() -> None:
    # The task's end, at interpreter exit, went to dask's callback thread, already shut
    # down: a tornado ERROR with a RuntimeError traceback.
    code = textwrap.dedent(
        """
        import time
        from dispatcher import TaskTimeoutError, get_executor, op

        if __name__ == "__main__":
            ex = get_executor("dask", workers=1, threads_per_worker=2)
            try:
                ex.run(op(time.sleep, timeout=0.5)(3600))
            except TaskTimeoutError:
                print("timed out", flush=True)
        """
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=100)
    assert done.stdout == "timed out\n", done.stdout + done.stderr
    assert "Traceback" not in done.stderr, done.stderr


class FirstStart:
    """Set once the run's first task is started on a worker."""

    def __init__(self) -> None:
        self.event = threading.Event()

    @hookimpl
    def dispatcher_task_started(self, node: Any, worker: str) -> None:
        self.event.set()

    def then(self, action: Callable[[], object]) -> threading.Thread:
        """A thread (not started) that does ``action`` shortly after the first start."""

        def act() -> None:
            self.event.wait(60)
            time.sleep(0.3)
            action()

        return threading.Thread(target=act)


def test_a_users_client_closed_under_a_run_is_named_as_the_cause(dask_cluster: Any) -> None:
    """dask cancels every task of a client that closes: the error says the client was
    closed (and when to close it), not that the cluster cancelled the task."""
    from distributed import Client

    client = Client(dask_cluster, set_as_default=False)
    client.wait_for_workers(2, timeout=60)
    first = FirstStart()
    closer = first.then(client.close)
    closer.start()
    try:
        with pytest.raises(WorkerLostError) as raised:
            run(
                [Op(dask_tasks.sleep_then, 5, i) for i in range(4)],
                executor="dask",
                client=client,
                plugins=[first],
            )
    finally:
        closer.join()
        client.close()
    message = str(raised.value)
    assert "sleep_then(5, " in message
    assert "dask client was closed" in message, message
    assert "cluster cancelled" not in message


def test_a_scheduler_that_died_under_a_run_is_named_as_the_cause(tmp_path: Path) -> None:
    """An external cluster's scheduler killed mid-run: the run fails naming the node and
    the lost connection to the scheduler."""
    from distributed import Client

    scheduler_file = tmp_path / "scheduler.json"
    scheduler = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "distributed.cli.dask_scheduler",
            "--port",
            "0",
            "--no-dashboard",
            "--scheduler-file",
            str(scheduler_file),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    worker = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "distributed.cli.dask_worker",
            "--scheduler-file",
            str(scheduler_file),
            "--nthreads",
            "1",
            "--no-dashboard",
            "--no-nanny",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=env,
    )
    first = FirstStart()
    killer = first.then(scheduler.kill)
    try:
        assert wait_for(scheduler_file.exists, 60)
        with Client(scheduler_file=str(scheduler_file), timeout=60) as client:
            client.wait_for_workers(1, timeout=60)
        killer.start()
        with get_executor("dask", address=str(scheduler_file)) as ex:
            with pytest.raises(WorkerLostError) as raised:
                ex.run([Op(dask_tasks.sleep_then, 5, i) for i in range(2)], plugins=[first])
            # dask reconnects for a while, then closes the client: a later run fails at
            # once saying the same (not that the user closed the client, nor that no
            # worker's thread came free), whether its task was sent or not.
            with pytest.raises(DispatcherError) as later:
                ex.run(Op(dask_tasks.sleep_then, 0, 1))
    finally:
        first.event.set()
        if killer.ident is not None:  # started
            killer.join()
        for process in (scheduler, worker):
            process.kill()
            process.wait()
    message = str(raised.value)
    assert "sleep_then(5, " in message
    assert "lost its connection to the scheduler" in message, message
    message = str(later.value)
    assert "lost its connection to the scheduler" in message, message
