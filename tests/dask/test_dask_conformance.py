"""The conformance suite against the dask executor, on the shared cluster of conftest.py."""

from __future__ import annotations

from typing import Any, ClassVar

import pytest

from dispatcher.testing import ExecutorConformance

# Fault checks dask fails today; each entry goes once it passes.
KNOWN_HANGS = {
    "test_result_whose_unpickling_exits": "the client unpickles gathered results on its "
    "own event loop: a SystemExit there closes that loop and the run waits forever",
    "test_work_abandoned_by_fail_fast_does_not_hold_the_next_run": "dask cannot stop the "
    "abandoned task's thread, and the scheduler, not told that its worker is still busy, "
    "places the next run's task behind it",
    "test_work_abandoned_by_a_cancelled_arun_does_not_hold_the_next_run": "as above",
    "test_argument_whose_unpickling_exits": "dask unpickles a task's arguments on the "
    "worker's event loop: a SystemExit there kills the worker (its nanny starts another), "
    "so the node fails with WorkerLostError instead",
}


class TestDask(ExecutorConformance):
    executor = "dask"
    options: ClassVar[dict[str, Any]] = {}
    known_hangs = KNOWN_HANGS

    @pytest.fixture(autouse=True)
    def _on_the_shared_cluster(self, request: pytest.FixtureRequest, dask_client: Any) -> None:
        # The cluster is made once per session, so its address is known only now.
        request.cls.options = {"address": dask_client.scheduler.address}

    @pytest.mark.timeout(90)
    def test_fail_fast_does_not_wait(self, log: str, dask_client: Any) -> None:
        try:
            super().test_fail_fast_does_not_wait(log)
        finally:
            # dask cannot stop the abandoned two-minute task's thread: restart the
            # workers rather than let the next tests queue behind it.
            dask_client.restart(wait_for_workers=True, timeout=60)
