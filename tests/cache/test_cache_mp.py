"""The cache on worker processes: workers read hits and store results themselves."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from cache_scenarios import SCENARIOS, Pipeline

pytest.importorskip("dispatcher_mp")


@pytest.mark.timeout(120)
@pytest.mark.parametrize("scenario", SCENARIOS, ids=lambda s: s.__name__)
def test_scenario(tmp_path: Path, scenario: Any) -> None:
    scenario(Pipeline(tmp_path, "mp", {"workers": 2}))
