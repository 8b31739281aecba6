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


@pytest.mark.skipif(not os.path.isdir("/dev/shm"), reason="no /dev/shm")
def test_ctrl_c_while_a_segment_is_written_leaves_no_descriptor_and_no_segment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The descriptor and the segment were left (until the process exited) when a
    KeyboardInterrupt came while the pages were reserved or copied."""
    prefix = f"dispatcher-test-{os.getpid()}-interrupted-"
    shm = SharedMemory(prefix)

    def interrupted(fd: int, offset: int, length: int) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "posix_fallocate", interrupted)
    fds_before = len(os.listdir("/proc/self/fd"))
    with pytest.raises(KeyboardInterrupt):
        shm.dump(os.urandom(SHM_THRESHOLD * 2))
    assert len(os.listdir("/proc/self/fd")) == fds_before
    assert not [n for n in os.listdir("/dev/shm") if n.startswith(prefix)]
