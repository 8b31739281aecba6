"""How the caller learns that dask tasks settled."""

from __future__ import annotations

from typing import Any

import dask_tasks
import pytest

from dispatcher import Op, get_executor

pytestmark = pytest.mark.timeout(120)


def test_tasks_are_reported_without_dasks_callback_thread(
    dask_client: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # dask's add_done_callback hands each future to a thread of its own: a thread switch
    # per task in the caller's process. A task that finished is reported on the event
    # loop; one that failed (its error is read by a blocking call) on the transport's own
    # gather thread, since dask's callback thread is shut down at interpreter exit.
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
        results = executor.run(Op(dask_tasks.plain_failure), throw=False)
    assert handed == []
    assert isinstance(results.error, RuntimeError)
