"""Races between a batch of tasks being sent (the outbox's thread, between reading what
the tasks need and recording them) and what happens on other threads meanwhile: a worker
lost, a task's word that it started, a worker lost while the executor starts. Each window
is milliseconds wide by nature; each test here widens it on purpose (a patched step that
waits), so that the race is met on every run."""

from __future__ import annotations

import os
import signal
import time
from typing import Any

import dask_tasks
import pytest
from test_dask_faults import wait_for

from dispatcher import TaskTimeoutError, get_executor, op
from dispatcher.testing import tasks
from dispatcher_dask._graphs import TaskGraphs
from dispatcher_dask._transport import DaskTransport

pytestmark = pytest.mark.timeout(90)


def kill_worker(client: Any, address: str) -> None:
    os.kill(client.run(os.getpid, workers=[address])[address], signal.SIGKILL)


def test_a_worker_lost_while_a_batch_reading_its_results_is_sent_loses_no_reader(
    dask_client: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The run hung: the loss, handled while the batch was being sent, looked for the
    # tasks reading results made there before the batch recorded its own; the batch's
    # reader then waited in dask for a result that was gone.
    record = TaskGraphs._register
    killed: list[str] = []

    def record_late(self: Any, made: Any, submitted: Any) -> None:
        for members, _, reads, _ in made:
            for spec in members:
                for key in reads:
                    maker = self._made.get(key)
                    if not killed and maker is not None and maker.worker != spec.worker:
                        killed.append(maker.worker)
                        kill_worker(self.client, self._names.address[maker.worker])
                        time.sleep(1.5)  # the loss is handled now, if nothing holds it
        record(self, made, submitted)

    monkeypatch.setattr(TaskGraphs, "_register", record_late)
    a = [op(tasks.sleep_then, label=f"a{i}")(0.2, i) for i in range(8)]
    b = [op(dask_tasks.total, label=f"b{i}")(a[i], a[(i + 1) % 8]) for i in range(8)]
    try:
        with get_executor("dask", address=dask_client.scheduler.address, retries=3) as ex:
            assert ex.run(b) == [i + (i + 1) % 8 for i in range(8)]
        assert killed, "no task read a result made on another worker"
    finally:
        dask_client.wait_for_workers(2, timeout=60)


def test_a_timed_task_whose_start_is_heard_before_its_send_is_recorded_times_out(
    dask_client: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The run hung: the word that the task started came while the batch was still being
    # recorded, was dropped, and the task, which never returns, never got its deadline.
    record = TaskGraphs._register

    def record_late(self: Any, made: Any, submitted: Any) -> None:
        time.sleep(0.5)
        record(self, made, submitted)

    monkeypatch.setattr(TaskGraphs, "_register", record_late)
    stuck = op(dask_tasks.forever, label="stuck", timeout=1.0)()
    try:
        with get_executor("dask", address=dask_client.scheduler.address) as ex:
            [result] = ex.run([stuck], throw=False)
        assert isinstance(result.error, TaskTimeoutError), result
    finally:
        dask_client.restart(wait_for_workers=True, timeout=60)


def test_a_worker_lost_while_the_executor_starts_is_given_no_task(
    dask_client: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The run hung: the executor took the workers the transport named at its start, the
    # one lost meanwhile included, and placed tasks there that no one would run.
    start = DaskTransport.start
    lost: list[str] = []

    def start_and_lose_one(self: DaskTransport, events: Any) -> Any:
        workers = start(self, events)
        address = next(iter(self._workers))
        lost.append(self._names.of[address])
        kill_worker(self.client, address)
        assert wait_for(lambda: address not in self._workers), "the loss was never heard"
        return workers

    monkeypatch.setattr(DaskTransport, "start", start_and_lose_one)
    try:
        with get_executor("dask", address=dask_client.scheduler.address) as ex:
            assert lost[0] not in ex._workers
            assert ex.run([op(tasks.sleep_then)(0.05, i) for i in range(20)]) == list(range(20))
    finally:
        dask_client.wait_for_workers(2, timeout=60)
