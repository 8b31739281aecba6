"""Large ``bytes`` go through shared memory like arrays do, not down the pipe."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import pytest

from dispatcher_mp._wire import SHM_THRESHOLD, SharedMemory, load

pytestmark = pytest.mark.timeout(60)


@pytest.mark.skipif(not os.path.isdir("/dev/shm"), reason="no /dev/shm")
@pytest.mark.parametrize("wrap", [lambda b: b, lambda b: {"result": [b]}], ids=["bare", "nested"])
def test_large_bytes_travel_in_a_segment_and_come_back_intact(wrap: Callable[[bytes], Any]) -> None:
    value = wrap(os.urandom(SHM_THRESHOLD * 4))
    shm = SharedMemory(f"dispatcher-test-{os.getpid()}-")
    try:
        payload = shm.dump(value)
        assert payload.segment is not None
        assert payload.sizes == (SHM_THRESHOLD * 4,)
        assert len(payload.data) < 1024
        assert load(payload) == value
    finally:
        shm.sweep()
