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
