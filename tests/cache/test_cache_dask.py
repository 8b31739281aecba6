"""The cache on a dask.distributed cluster: dask workers read hits and store results."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from cache_scenarios import SCENARIOS, Pipeline

pytest.importorskip("dispatcher_dask")


@pytest.mark.timeout(180)
@pytest.mark.parametrize("scenario", SCENARIOS, ids=lambda s: s.__name__)
def test_scenario(tmp_path: Path, scenario: Any) -> None:
    scenario(Pipeline(tmp_path, "dask", {"workers": 2, "threads_per_worker": 1}))
