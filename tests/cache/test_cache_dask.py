"""The cache on a dask.distributed cluster: dask workers read hits and store results."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from cache_scenarios import SCENARIOS, Pipeline

pytest.importorskip("dispatcher_dask")


NOT_ON_DASK = {
    "storing_is_not_held_to_the_timeout": (
        "a dask task (dispatcher_dask._task.run_task) is timed, where it runs and at its"
        " deadline in the caller, until its result is stored: it neither sets"
        " _cache_plan.function_returned nor says when the function returned"
    ),
    "stores_that_fail_are_warned_in_the_caller": (
        "a dask worker's cache warnings go to its own stderr: run_task does not hand them"
        " to the caller (see _cache.send_warnings_to)"
    ),
}


def _marked(scenario: Any) -> Any:
    reason = NOT_ON_DASK.get(scenario.__name__)
    if reason is None:
        return scenario
    return pytest.param(scenario, marks=pytest.mark.xfail(reason=reason, strict=True))


@pytest.mark.timeout(180)
@pytest.mark.parametrize("scenario", [_marked(s) for s in SCENARIOS], ids=lambda s: s.__name__)
def test_scenario(tmp_path: Path, scenario: Any) -> None:
    scenario(Pipeline(tmp_path, "dask", {"workers": 2, "threads_per_worker": 1}))
