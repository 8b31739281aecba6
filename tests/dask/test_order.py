"""The order a dask worker runs dispatcher's tasks in."""

from __future__ import annotations

from typing import Any

import dask_tasks
import pytest

from dispatcher import Op, run

pytestmark = pytest.mark.timeout(120)


def test_a_task_runs_once_its_inputs_are_made_before_the_tasks_sent_after_them(
    dask_client: Any,
) -> None:
    # Sixteen sources of 0.1 s, all sent at once (each worker queues eight), summed in
    # pairs, each pair sent once both of its inputs are reported. A pair goes before the
    # sources still queued: its inputs are freed as soon as they are read (W5 held most of
    # its arrays at once, the pairs waiting behind every source). prefetch=16: queues
    # that deep whatever the tasks' run times, as they would be before any is known.
    sources = [Op(dask_tasks.started_then_slept, 0.1, i) for i in range(16)]
    pairs = [
        Op(dask_tasks.started_then_slept, 0.0, sources[i], sources[i + 1]) for i in range(0, 16, 2)
    ]
    address = dask_client.scheduler.address
    started, pairs_started = run([sources, pairs], executor="dask", address=address, prefetch=16)
    first_pair = min(pairs_started)
    # In the order sent, a pair would have waited for its worker's last source; here
    # the first starts after two or three of the sixteen, and the others meanwhile.
    assert sum(start > first_pair for start in started) >= 6
