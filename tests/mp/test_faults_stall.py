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


def test_runs_with_inputs_failing_once_per_worker_never_stall() -> None:
    with get_executor("mp", workers=2, retries=3, retry_on=(ValueError,)) as ex:
        for seed in range(60):
            results = ex.run(_graph(seed, 300), throw=False)
            assert len(results) == 25
