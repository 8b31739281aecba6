"""Tasks taken back from a worker's queue for an idle one, on real worker processes: each
runs once, whatever races the request (its start, its completion, its worker's death)."""

from __future__ import annotations

import itertools
import os
import signal
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import mp_tasks
import pytest

from dispatcher import get_executor, op
from dispatcher.testing import Recorder, tasks
from dispatcher.transport import Key


def _asked(ex: Any) -> list[tuple[str, list[Key]]]:
    """Record every request the executor's transport sends to take tasks back."""
    transport = ex._transport
    asked: list[tuple[str, list[Key]]] = []
    take_back = transport.take_back

    def recorded(worker: str, keys: Sequence[Key]) -> None:
        asked.append((worker, list(keys)))
        take_back(worker, keys)

    transport.take_back = recorded
    return asked


def _seconds(i: int) -> float:
    """How long task ``i`` of a round sleeps: one long first, some medium, most quick."""
    return 0.5 if i == 0 else 0.1 if i % 6 == 0 else 0.002


@pytest.mark.timeout(120)
def test_tasks_asked_back_amid_their_starts_and_completions_run_once(tmp_path: Path) -> None:
    count = 48
    recorder = Recorder()
    with get_executor("mp", workers=2) as ex:
        asked = _asked(ex)
        # The first task of each round outlasts the whole rest of it: what is queued
        # behind it waits while the other worker runs out of work, so every round asks
        # some back. Shorter long tasks among quick ones: queues form and drain behind
        # them, so requests meet tasks starting and finishing. At least three rounds,
        # and more until some task was asked back.
        for rounds in itertools.count(1):
            r = rounds - 1
            log = tmp_path / f"round{r}"
            log.mkdir()
            nodes = [
                op(mp_tasks.logged_sleep, label=f"t{i}")(str(log), f"t{i}", _seconds(i), i)
                for i in range(count)
            ]
            assert ex.run(nodes, plugins=[recorder]) == list(range(count))
            assert [tasks.calls(str(log), f"t{i}") for i in range(count)] == [1] * count
            if (rounds >= 3 and asked) or rounds == 20:
                break
    started = Counter(id(event[1]) for event in recorder.of("started"))
    assert len(started) == rounds * count
    assert set(started.values()) == {1}
    assert not recorder.of("retried")
    assert asked, "no task was asked back"


@pytest.mark.timeout(120)
def test_a_worker_dying_as_tasks_are_asked_back(tmp_path: Path) -> None:
    log = tmp_path / "log"
    log.mkdir()
    with get_executor("mp", workers=2, retries=1) as ex:
        ex.run([op(abs)(-i) for i in range(4)])  # both workers up
        transport = ex._transport
        killed: list[int] = []
        take_back = transport.take_back

        def killing(worker: str, keys: Sequence[Key]) -> None:
            if not killed:  # dies with the request on its way
                killed.append(transport.workers[worker].process.pid)
                os.kill(killed[0], signal.SIGKILL)
            take_back(worker, keys)

        transport.take_back = killing
        quick = op(len, label="quick")(op(mp_tasks.sleep_then)(0, "ab"))
        long = op(mp_tasks.logged_sleep, label="long")(str(log), "long", 2, 1)
        short = op(mp_tasks.logged_sleep, label="short")(str(log), "short", 0, 2)
        assert ex.run([quick, long, short]) == [2, 1, 2]
        assert killed, "nothing was asked back"
        assert tasks.calls(str(log), "short") == 1
        assert ex.run([op(abs)(-i) for i in range(4)]) == [0, 1, 2, 3]
