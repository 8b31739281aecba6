"""The kit's failure path on ``mp``: every failure of a run of many reported, each with its
own error (the kit's own tests are in tests/core/test_remote_failures.py)."""

from __future__ import annotations

import mp_tasks
import pytest

from dispatcher import RemoteError, op, run

pytestmark = pytest.mark.timeout(60)


def test_a_run_of_many_failures_reports_each_one() -> None:
    nodes = [op(mp_tasks.refuse_number if i % 4 else abs, label=f"n{i}")(i) for i in range(400)]
    results = run(nodes, executor="mp", workers=2, throw=False, retries=0)
    for i, result in enumerate(results):
        if i % 4:
            assert isinstance(result.error, (ValueError, RemoteError)), f"{result.error}"
            assert str(result.error) == f"bad {i}"
        else:
            assert result.value == i
