"""The order a dask worker runs dispatcher's tasks in, as dask's priority of each."""

from __future__ import annotations

from typing import Any

__all__ = ["rank"]


def rank(task: Any) -> int:
    """Where a worker runs ``task`` among the tasks it holds (dask's priority, negated): a
    task reading no other task's result in the order sent (dask's own ordering of a graph
    might put a long task before a short one sent earlier); one reading results, at the
    place of the last sent of them, so it runs as soon as they are made, before the tasks
    sent after them, as dask's own ordering has it: its inputs are read while still in the
    processor's cache, and freed sooner (W5's pairs of arrays otherwise waited behind
    every array queued, most of them held at once). A task's dask key ends with its
    serial, the order it was made in, which is the order sent. On a shared worker, other
    clients' work, of priority 0, goes first."""
    inputs = task.dependencies
    return max(map(_serial, inputs)) if inputs else _serial(task.key)


def _serial(dask_key: str) -> int:
    return int(dask_key.rpartition("-")[2])
