"""The thread that starts an executor's worker processes, as the executor closes."""

from __future__ import annotations

import threading

import pytest

from dispatcher import DispatcherError
from dispatcher_mp._process import Spawner


@pytest.mark.timeout(60)
def test_closing_waits_for_a_start_under_way_and_refuses_new_ones() -> None:
    # A start cut short by the interpreter exiting behind the daemon spawner thread left
    # a forkserver child reading half its instructions: "Ran out of input" on stderr.
    spawner = Spawner()
    begun, release = threading.Event(), threading.Event()
    started: list[str] = []

    def slow_start() -> str:
        begun.set()
        release.wait(30)
        return "started"

    caller = threading.Thread(target=lambda: started.append(spawner.call(slow_start)))
    caller.start()
    assert begun.wait(30)
    stopper = threading.Thread(target=spawner.stop)
    stopper.start()
    stopper.join(0.5)
    assert stopper.is_alive(), "stop() returned while a start was still under way"
    release.set()
    stopper.join(30)
    caller.join(30)
    assert not stopper.is_alive()
    assert started == ["started"]
    with pytest.raises(DispatcherError, match="closing"):
        spawner.call(lambda: "too late")
