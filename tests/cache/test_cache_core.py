"""The cache on the in-process executors: sync, async with threads, async on the loop."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from cache_scenarios import SCENARIOS, Pipeline

EXECUTORS = [("sync", {}), ("async", {}), ("async", {"threads": 0})]


@pytest.mark.parametrize(("executor", "options"), EXECUTORS, ids=["sync", "async", "async-loop"])
@pytest.mark.parametrize("scenario", SCENARIOS, ids=lambda s: s.__name__)
def test_scenario(tmp_path: Path, executor: str, options: dict[str, Any], scenario: Any) -> None:
    scenario(Pipeline(tmp_path, executor, options))
