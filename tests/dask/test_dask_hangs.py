"""The dask executor never waits for ever: a task past its timeout fails at its deadline,
threads held by tasks given up on are won back (a cluster of the executor's own) or named
in a clear error (a user's cluster), a frozen worker is lost in bounded time, and dask's
own log stays quiet about failures dispatcher reports itself."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import textwrap
import threading
from pathlib import Path
from typing import Any

import dask_tasks
import psutil
import pytest
from test_dask_faults import (
    Seen,
    descendants,
    signal_once_written,
    small_cluster,
    wait_for,
    wait_gone,
)

from dispatcher import DispatcherError, Op, TaskTimeoutError, WorkerLostError, get_executor, op
from dispatcher.testing import tasks
from dispatcher_dask import _completions


def started_since(before: set[int]) -> set[int]:
    """The processes started since ``before`` was taken, but for multiprocessing's
    resource tracker (one per caller, started with the first worker, kept for others)."""
    started = set()
    for pid in descendants() - before:
        try:
            if "resource_tracker" not in " ".join(psutil.Process(pid).cmdline()):
                started.add(pid)
        except psutil.NoSuchProcess:
            pass
    return started


def restart_workers(client: Any) -> None:
    """Win back the shared cluster's threads that a test left running for ever."""
    client.restart(wait_for_workers=True, timeout=60)


@pytest.mark.timeout(60)
def test_a_task_that_never_returns_fails_at_its_deadline(dask_client: Any) -> None:
    # It hung: the timeout was checked only when the call returned.
    stuck = op(dask_tasks.forever, label="stuck", timeout=1)()
    try:
        with (
            pytest.raises(TaskTimeoutError, match="stuck") as raised,
            get_executor("dask", address=dask_client.scheduler.address) as ex,
        ):
            ex.run(stuck)
        assert raised.value.node is stuck
    finally:
        restart_workers(dask_client)


@pytest.mark.timeout(60)
def test_a_coroutine_past_its_timeout_is_cancelled_and_gives_back_its_thread(
    dask_client: Any, tmp_path: Path
) -> None:
    # It hung like any task that never returns; unlike a plain function, a coroutine can
    # be stopped, so its thread is free for the next run, which needs both workers.
    stuck = op(dask_tasks.forever_async, label="stuck", timeout=1)()
    meet = [op(tasks.meet)(str(tmp_path), "meet", 2, 30, i) for i in range(2)]
    # (prefetch=0: a task waits for a free thread, rather than queue behind the other.)
    with get_executor("dask", address=dask_client.scheduler.address, prefetch=0) as ex:
        with pytest.raises(TaskTimeoutError, match="stuck"):
            ex.run(stuck)
        assert ex.run(meet) == [0, 1]


@pytest.mark.timeout(60)
def test_a_deadline_counts_from_the_start_not_from_the_queue(dask_client: Any) -> None:
    # Ten tasks of 0.5 s on two one-thread workers: the last ones wait about 2 s in
    # their worker's queue, longer than their timeout, and still pass.
    nodes = [op(dask_tasks.sleep_then, timeout=1.5)(0.5, i) for i in range(10)]
    seen = Seen()
    with get_executor("dask", address=dask_client.scheduler.address) as ex:
        assert ex.run(nodes, plugins=[seen]) == list(range(10))
    assert len(seen.finished) == 10


@pytest.mark.timeout(90)
def test_a_worker_of_its_own_held_by_a_stuck_task_is_restarted(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # The stuck task held the only worker's only thread: the next run waited for ever.
    before = descendants()
    stuck = op(dask_tasks.forever, label="stuck", timeout=1)()
    caplog.set_level(logging.WARNING, logger="dispatcher.dask")
    with get_executor("dask", workers=1) as ex:
        started = started_since(before)
        with pytest.raises(TaskTimeoutError, match="stuck"):
            ex.run(stuck)
        # The replacement takes the next run.
        assert ex.run(Op(dask_tasks.total, 1, 2)) == 3
    assert any("restart" in r.message and "'stuck'" in r.message for r in caplog.records), [
        r.message for r in caplog.records
    ]
    assert not wait_gone(started)


@pytest.mark.timeout(60)
def test_when_every_worker_is_held_by_a_task_holding_the_gil_the_run_goes_on(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A worker of its own was restarted only when a second look found it still held, and
    # a worker whose event loop a task starves is looked at again only once asking it
    # timed out: the run's other tasks failed first, for want of any capacity.
    from dispatcher_dask import _cluster

    monkeypatch.setattr(_cluster, "SILENT_WORKER_TTL", 600.0)
    greedy = [op(dask_tasks.hold_the_gil, label=f"greedy-{i}", timeout=1)(i) for i in range(2)]
    others = [Op(dask_tasks.total, i, 1) for i in range(2)]
    with get_executor("dask", workers=2, threads_per_worker=1) as ex:
        results = ex.run([*greedy, *others], throw=False)
        assert [type(r.error) for r in results[:2]] == [TaskTimeoutError] * 2
        assert [r.value for r in results[2:]] == [1, 2], [r.error for r in results[2:]]
        assert ex.run(Op(dask_tasks.total, 1, 2)) == 3


@pytest.mark.parametrize("threads", [1, 2])
def test_a_task_holding_the_gil_fails_at_its_deadline_and_its_worker_is_restarted(
    threads: int, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # The task starved its worker's event loop: the word that it started never left, so
    # it was never timed, and only dask's worker-ttl ended it (made longer than the test
    # here). With two threads, the other one never took work either.
    from dispatcher_dask import _cluster

    monkeypatch.setattr(_cluster, "SILENT_WORKER_TTL", 600.0)
    caplog.set_level(logging.WARNING, logger="dispatcher.dask")
    # The scheduler (in this process) logs on a logger of its own, not propagated.
    scheduler_errors = Recorded(logging.ERROR)
    logging.getLogger("distributed.scheduler").addHandler(scheduler_errors)
    before = descendants()
    greedy = op(dask_tasks.hold_the_gil, label="greedy", timeout=2)()
    try:
        with get_executor("dask", workers=1, threads_per_worker=threads) as ex:
            started = started_since(before)
            with pytest.raises(TaskTimeoutError, match="greedy") as raised:
                ex.run(greedy)
            assert raised.value.node is greedy
            # The replacement takes the next run.
            assert ex.run(Op(dask_tasks.total, 1, 2)) == 3
    finally:
        logging.getLogger("distributed.scheduler").removeHandler(scheduler_errors)
    assert any("restart" in r.message and "'greedy'" in r.message for r in caplog.records), [
        r.message for r in caplog.records
    ]
    assert not wait_gone(started)
    # The check of tasks given up on, still on its way to the worker restarted, failed:
    # expected, and told already as that worker's restart.
    assert not [m for m in scheduler_errors.messages if "broadcast" in m]


class Recorded(logging.Handler):
    """The messages logged through it, from ``level`` up."""

    def __init__(self, level: int) -> None:
        super().__init__(level)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


@pytest.mark.timeout(60)
def test_a_worker_of_its_own_with_a_thread_left_keeps_serving_and_its_results(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Restarting a worker loses every result it holds (dispatcher would recompute
    # them): one thread held by a stuck task only takes that thread's share away.
    caplog.set_level(logging.WARNING, logger="dispatcher.dask")
    stuck = op(dask_tasks.forever, label="stuck", timeout=1)()
    with get_executor("dask", workers=1, threads_per_worker=2) as ex:
        before = ex.run(Op(dask_tasks.pid, 0))
        with pytest.raises(TaskTimeoutError, match="stuck"):
            ex.run(stuck)
        assert ex.run([Op(dask_tasks.pid, i) for i in range(4)]) == [before] * 4
    assert not [r.message for r in caplog.records if "restart" in r.message]


@pytest.mark.timeout(60)
def test_a_task_holding_the_gil_on_a_users_cluster_fails_at_its_deadline(
    dask_client: Any,
) -> None:
    # Never timed (see above), it hung the run until the cluster's worker-ttl. The
    # worker is not ours to restart: the other one takes the next run.
    greedy = op(dask_tasks.hold_the_gil, label="greedy", timeout=1)()
    try:
        with get_executor("dask", address=dask_client.scheduler.address) as ex:
            with pytest.raises(TaskTimeoutError, match="greedy"):
                ex.run(greedy)
            assert ex.run([Op(dask_tasks.total, i, 1) for i in range(4)]) == [1, 2, 3, 4]
    finally:
        restart_workers(dask_client)


@pytest.mark.timeout(90)
def test_work_abandoned_by_fail_fast_on_a_cluster_of_its_own_gives_back_every_worker(
    tmp_path: Path,
) -> None:
    # The abandoned task kept its worker's thread for good: the next run, which needs
    # both workers at once, waited for ever.
    log, gate = str(tmp_path), tmp_path / "gate"
    blocker = op(tasks.blocked, label="blocked")(log, "blocked", str(gate), 300)
    failing = op(tasks.fail_once_started, label="fails")(log, "blocked", 30, "first")
    meet = [op(tasks.meet)(log, "meet", 2, 30, i) for i in range(2)]
    try:
        with get_executor("dask", workers=2, prefetch=0) as ex:
            with pytest.raises(ValueError, match="first"):
                ex.run([blocker, failing])
            assert ex.run(meet) == [0, 1]
            assert tasks.calls(log, "blocked-finished") == 0  # it never returned
    finally:
        gate.touch()


@pytest.mark.timeout(90)
def test_a_task_given_up_on_that_soon_returns_does_not_restart_its_worker(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # The first check that found a worker's only thread running a task given up on
    # restarted the worker (seconds each): runs failing fast restarted their workers
    # about once a run, though the tasks returned a moment later.
    log, never = str(tmp_path), str(tmp_path / "never")
    with get_executor("dask", workers=2, threads_per_worker=1, prefetch=0) as ex:
        for i in range(3):
            # The blocked task runs 0.4 s on one worker; the other fails meanwhile.
            blocker = op(tasks.blocked, label="blocked")(log, f"b{i}", never, 0.4)
            failing = op(tasks.fail_once_started, label="fails")(log, f"b{i}", 30, "x")
            with pytest.raises(ValueError, match="x"):
                ex.run([blocker, failing])
        assert ex.run([Op(tasks.inc, i) for i in range(4)]) == [1, 2, 3, 4]
    assert tasks.calls(log, "b2-finished") == 1
    assert "restarted" not in caplog.text


@pytest.mark.timeout(90)
def test_no_free_thread_on_a_users_cluster_is_a_clear_error(dask_client: Any) -> None:
    # Two stuck tasks held both workers' threads; the next run waited for ever.
    stuck = [op(dask_tasks.forever, label=f"stuck-{i}", timeout=1)() for i in range(2)]
    try:
        with get_executor("dask", address=dask_client.scheduler.address) as ex:
            results = ex.run(stuck, throw=False)
            assert all(isinstance(r.error, TaskTimeoutError) for r in results)
            with pytest.raises(DispatcherError, match="no capacity left") as raised:
                ex.run(Op(dask_tasks.total, 1, 2))
        message = str(raised.value)
        assert "'stuck-0'" in message
        assert "'stuck-1'" in message
        assert "restart" in message
    finally:
        restart_workers(dask_client)


@pytest.mark.timeout(60)
def test_tasks_placed_on_a_worker_after_it_was_found_full_are_moved(
    dask_client: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The run hung (about one time in three, in the conformance suite): tasks the
    # scheduler placed on a worker just after it was found full (before it heard that
    # the worker was paused) were never moved, as the worker was moved from only once.
    # Here the worker's pause reaches the scheduler late on purpose, so that the tasks
    # moved off the first worker found full are placed on full workers again.
    from dispatcher_dask._giving_up import GivingUp

    said = GivingUp._capacity_changed

    def said_late(self: GivingUp, address: str, holding: list[str]) -> None:
        threading.Timer(0.5, said, (self, address, holding)).start()

    monkeypatch.setattr(GivingUp, "_capacity_changed", said_late)
    stuck = [op(dask_tasks.forever, label=f"stuck-{i}", timeout=0.5)() for i in range(8)]
    try:
        with get_executor("dask", address=dask_client.scheduler.address) as ex:
            results = ex.run(stuck, throw=False)
        for result in results:
            if not isinstance(result.error, TaskTimeoutError):
                assert "no capacity left" in str(result.error), result
    finally:
        restart_workers(dask_client)


@pytest.mark.timeout(120)
def test_a_frozen_worker_is_lost_and_its_task_runs_elsewhere(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # dask's scheduler gave up on a silent worker after five minutes: the run hung.
    from dispatcher_dask import _cluster

    monkeypatch.setattr(_cluster, "SILENT_WORKER_TTL", 3.0)
    before = descendants()
    marker = tmp_path / "pid"
    victim = op(dask_tasks.stall_first_time, label="victim")(str(marker))
    with get_executor("dask", workers=2, retries=1) as ex:
        started = started_since(before)
        freezer, frozen = signal_once_written(marker, signal.SIGSTOP)
        seen = Seen()
        try:
            ran_on = ex.run(victim, plugins=[seen])
        finally:
            freezer.join()
        assert frozen, "the victim never started"
        assert ran_on != frozen[0]
        # Charged to the frozen worker, whose loss says why.
        [(node, error)] = seen.retried
        assert node is victim
        assert "did not answer the scheduler" in str(error)
    assert not wait_gone(started | set(frozen))


@pytest.mark.timeout(60)
def test_a_timed_task_on_a_frozen_worker_fails_at_its_deadline(tmp_path: Path) -> None:
    # Its worker frozen after the task started, nothing ever came back: the run hung.
    before = descendants()
    marker = tmp_path / "pid"
    victim = op(dask_tasks.stall_first_time, label="victim", timeout=2)(str(marker))
    with get_executor("dask", workers=2) as ex:
        started = started_since(before)
        freezer, frozen = signal_once_written(marker, signal.SIGSTOP)
        try:
            with pytest.raises(TaskTimeoutError, match="victim"):
                ex.run(victim)
        finally:
            freezer.join()
        assert frozen, "the victim never started"
        # The other worker takes the next run.
        assert ex.run(Op(dask_tasks.total, 1, 2)) == 3
    assert not wait_gone(started | set(frozen))


@pytest.mark.timeout(90)
def test_closing_with_a_frozen_worker_leaves_no_process() -> None:
    before = descendants()
    ex = get_executor("dask", workers=1)
    try:
        worker = ex.run(Op(dask_tasks.pid, 0))
        started = started_since(before)
        os.kill(worker, signal.SIGSTOP)
    finally:
        ex.close()
    assert worker in started
    assert not wait_gone(started)


QUIET = textwrap.dedent(
    """
    import logging
    from distributed import Client, LocalCluster
    from dispatcher import op, run
    import dask_tasks

    if __name__ == "__main__":
        with LocalCluster(
            n_workers=1, threads_per_worker=1, processes=True, dashboard_address=None,
            scheduler_kwargs={"dashboard_address": ":0"},
        ) as cluster, Client(cluster, set_as_default=False) as client:
            failed = run(
                op(dask_tasks.plain_failure, label="ours")(),
                executor="dask", address=cluster.scheduler_address, throw=False,
            )
            print("ours:", type(failed.error).__name__, flush=True)
            client.submit(dask_tasks.plain_failure, pure=False).exception()
            filters = client.run(
                lambda: len(logging.getLogger("distributed.worker").filters)
            )
            print("filters left:", sorted(filters.values()), flush=True)
    """
)


@pytest.mark.timeout(90)
def test_dask_logs_no_compute_failed_block_for_dispatchers_tasks(tmp_path: Path) -> None:
    # Every failing task printed dask's "Compute Failed" block on its worker's stderr,
    # beside the labelled error dispatcher raises.
    script = tmp_path / "quiet.py"
    script.write_text(QUIET)
    path = [str(Path(__file__).parent), os.environ.get("PYTHONPATH", "")]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in path if p)}
    done = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=80, env=env
    )
    assert "ours: RuntimeError" in done.stdout, done.stdout + done.stderr
    # The plain dask task's block is still there (a user's own tasks are not silenced);
    # the filter is gone with the executor.
    assert done.stderr.count("Compute Failed") == 1, done.stderr
    assert "Key:       plain_failure-" in done.stderr
    assert "filters left: [0]" in done.stdout


@pytest.mark.timeout(60)
def test_a_worker_whose_nanny_dask_closed_is_started_again(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A local cluster closes a worker's nanny for good when no worker of its name is
    # there lost-worker-timeout after a removal: a worker restarted twice in quick
    # succession (two stuck tasks in a row) was gone for the rest of the executor's life.
    import dask
    from distributed import Client

    from dispatcher_dask import _cluster

    monkeypatch.setattr(_cluster, "_KILL_SECONDS", 3.0)
    with (
        dask.config.set({"distributed.deploy.lost-worker-timeout": "0.2s"}),
        small_cluster(2) as cluster,
        Client(cluster, set_as_default=False) as client,
    ):
        # The nanny gone, the cluster drops it lost-worker-timeout after the removal.
        cluster.sync(next(iter(cluster.workers.values())).close)
        _cluster.keep_workers(cluster, client.loop)
        assert wait_for(lambda: len(cluster.workers) == 2, 45)
        client.wait_for_workers(2, timeout=30)


@pytest.mark.timeout(60)
def test_a_thread_of_the_caller_that_fails_fails_the_run_rather_than_hang(
    dask_client: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Its pool kept what escaped in a future no one read: the large result it was
    # bringing was never reported, and the run waited for ever.
    def broken(*args: Any) -> Any:
        raise RuntimeError("the gather broke")

    monkeypatch.setattr(_completions, "gather", broken)
    with (
        get_executor("dask", address=dask_client.scheduler.address, retries=0) as ex,
        pytest.raises(WorkerLostError, match="the gather broke"),
    ):
        ex.run(op(bytes, label="large")(8_000_000))
