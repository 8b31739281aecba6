"""The conformance suite against the dask executor, on the shared cluster of conftest.py."""

from __future__ import annotations

from typing import Any, ClassVar

import pytest

from dispatcher.testing import ExecutorConformance


class TestDask(ExecutorConformance):
    executor = "dask"
    options: ClassVar[dict[str, Any]] = {}

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
