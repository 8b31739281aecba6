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


@pytest.mark.timeout(120)
def test_the_caller_neither_reads_nor_writes_entries(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from dispatcher._cache import Cache

    def not_here(*args: Any) -> Any:
        raise AssertionError("the caller touched an entry")

    monkeypatch.setattr(Cache, "load", not_here)
    monkeypatch.setattr(Cache, "save", not_here)
    p = Pipeline(tmp_path, "mp", {"workers": 2})
    for _ in range(2):
        assert p.run(p.graph()) == "total=19"
    assert p.take_calls() == {"load": 2, "square": 2, "total": 1, "report": 1}
