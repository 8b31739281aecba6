"""How wanted values reach the caller: a small one with its task's report, a large one
gathered from its worker."""

from __future__ import annotations

from typing import Any

import dask_tasks
import pytest

import dispatcher_dask._completions as completions
from dispatcher import Op, run

pytestmark = pytest.mark.timeout(120)


def test_small_values_come_with_their_reports_and_large_ones_are_gathered(
    dask_client: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    gathered: list[int] = []
    gather = completions.gather

    def counted(client: Any, futures: list[Any]) -> list[tuple[bool, Any]]:
        gathered.append(len(futures))
        return gather(client, futures)

    monkeypatch.setattr(completions, "gather", counted)
    address = dask_client.scheduler.address
    small = [Op(dask_tasks.total, i, 1) for i in range(6)]
    assert run(small, executor="dask", address=address) == [1, 2, 3, 4, 5, 6]
    assert gathered == []  # no round trip to fetch them
    big = Op(dask_tasks.megabyte_after, 0)
    assert len(run(big, executor="dask", address=address)) == 1 << 20
    assert gathered == [1]


def test_a_tasks_report_leaves_its_worker_with_its_completion(dask_client: Any) -> None:
    # Sent alone, a report leaves at once and holds the completion after it back for the
    # worker's batching interval (a few ms): a chain would wait that long between links.
    address = dask_client.scheduler.address
    links = 20
    chain = Op(dask_tasks.total, 0, 1)
    for _ in range(links - 1):
        chain = Op(dask_tasks.total, chain, 1)
    run(Op(dask_tasks.total, 0), executor="dask", address=address)  # workers warmed up
    before = dask_client.run(dask_tasks.batches_sent)
    assert run(chain, executor="dask", address=address) == links
    found = [
        ops
        for worker, since in before.items()
        for ops in dask_client.run(dask_tasks.reports_in_batches, since, workers=[worker])[worker]
    ]
    finished = sum(
        dask_client.run(dask_tasks.completions_sent, since, workers=[worker])[worker]
        for worker, since in before.items()
    )
    # One report per dask task (a link alone, or a fused run of links), each in a batch
    # of its own that its completion is in too.
    assert found
    assert len(found) == finished <= links
    for ops in found:
        assert "task-finished" in ops[ops.index("report") :], ops
