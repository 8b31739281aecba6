"""The dask executor's own options are checked before anything is started or reached."""

from __future__ import annotations

from typing import Any

import pytest

from dispatcher import get_executor

# No scheduler listens there: an option that was not refused first would wait on it.
NOWHERE = "tcp://127.0.0.1:9"


@pytest.mark.timeout(30)
@pytest.mark.parametrize(
    ("options", "named"),
    [
        ({"workers": True}, "workers must be a positive int, got True"),
        ({"workers": "2"}, "workers must be a positive int, got '2'"),
        ({"workers": -1}, "workers must be a positive int, got -1"),
        ({"workers": 0}, "workers must be a positive int, got 0"),
        ({"workers": 0, "address": NOWHERE}, "workers must be a positive int, got 0"),
        ({"workers": True, "address": NOWHERE}, "workers must be a positive int, got True"),
        ({"threads_per_worker": True}, "threads_per_worker must be a positive int, got True"),
        ({"threads_per_worker": "2"}, "threads_per_worker must be a positive int, got '2'"),
        ({"threads_per_worker": -1}, "threads_per_worker must be a positive int, got -1"),
        ({"threads_per_worker": 0}, "threads_per_worker must be a positive int, got 0"),
        ({"prefetch": True}, "prefetch must be a non-negative int, got True"),
        ({"prefetch": -1}, "prefetch must be a non-negative int, got -1"),
    ],
)
def test_bad_counts_are_named(options: dict[str, Any], named: str) -> None:
    # workers=True started one worker, -1 and "2" failed deep in dask, and 0 with
    # address= waited for no worker at all.
    with pytest.raises(ValueError, match=named):
        get_executor("dask", **options)
