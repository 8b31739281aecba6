"""How the caller learns that dask tasks settled."""

from __future__ import annotations

from typing import Any

import dask_tasks
import pytest

from dispatcher import Op, get_executor

pytestmark = pytest.mark.timeout(120)


def test_finished_tasks_are_reported_on_the_event_loop_and_failed_ones_still_are(
    dask_client: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # dask's add_done_callback hands each future to a thread of its own: a thread switch
    # per task in the caller's process. A task that finished is reported without it; one
    # that failed (its error is read by a blocking call) still goes that way.
    from distributed import Future

    handed: list[str] = []
    add_done_callback = Future.add_done_callback

    def counted(future: Any, callback: Any) -> None:
        handed.append(future.key)
        add_done_callback(future, callback)

    monkeypatch.setattr(Future, "add_done_callback", counted)
    address = dask_client.scheduler.address
    with get_executor("dask", address=address, retries=0) as executor:
        sources = [Op(dask_tasks.total, i) for i in range(8)]
        assert executor.run(Op(dask_tasks.total, *sources)) == 28
        assert handed == []
        results = executor.run(Op(dask_tasks.plain_failure), throw=False)
    assert len(handed) == 1
    assert isinstance(results.error, RuntimeError)
