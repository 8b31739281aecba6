"""Graphs whose tasks fail once in each worker process and are retried on mp: every
run ends with each target's result, never with the scheduler stalled."""

from __future__ import annotations

import random

import pytest
from per_process import fails_once_per_process

from dispatcher import DispatchNode, Op, get_executor
from dispatcher.testing import tasks

pytestmark = pytest.mark.timeout(120)


def _graph(seed: int, size: int) -> list[DispatchNode]:
    """A random graph: each node reads up to three of the fifty before it; a fifth of
    them fail their first call in each worker process."""
    rng = random.Random(seed)
    nodes: list[DispatchNode] = []
    for i in range(size):
        recent = nodes[-50:]
        inputs = rng.sample(recent, min(rng.randint(0, 3), len(recent)))
        draw = rng.random()
        if draw < 0.6:
            nodes.append(Op(tasks.total, *inputs, i))
        elif draw < 0.8:
            nodes.append(Op(tasks.sleep_then, 0.0005, Op(tasks.total, *inputs, i)))
        else:
            nodes.append(Op(fails_once_per_process, (seed, i), *inputs))
    return rng.sample(nodes, 20) + nodes[-5:]


@pytest.mark.xfail(
    strict=True,
    raises=RuntimeError,
    reason="about one such run in three ends in the driver's 'scheduler stalled: nothing "
    "is running or ready but N nodes remain' (dispatcher._driver.step): a report of "
    "inputs missing makes Recovery._recompute requeue a node that was DONE, whose own "
    "input has since FAILED or been SKIPPED (a recomputation of it failed on a fresh "
    "process): that node waits forever for an input that will never be made",
)
def test_runs_with_inputs_failing_once_per_worker_never_stall() -> None:
    with get_executor("mp", workers=2, retries=3, retry_on=(ValueError,)) as ex:
        for seed in range(60):
            results = ex.run(_graph(seed, 300), throw=False)
            assert len(results) == 25
