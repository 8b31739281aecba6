"""A large plain argument given to many tasks travels through shared memory once per run,
not pickled into every task's message; its segment goes when the run does."""

from __future__ import annotations

import os
import pickle
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import Any

import argument_tasks as tasks
import pytest

from dispatcher import get_executor, op, run
from dispatcher.remote import Run, to_wire
from dispatcher_mp import _process

pytestmark = [
    pytest.mark.timeout(120),
    pytest.mark.skipif(not os.path.isdir("/dev/shm"), reason="no /dev/shm here"),
]
np = pytest.importorskip("numpy")

MEGABYTES = 8


def segments() -> set[str]:
    """This process's segments (those of its executors)."""
    return {n for n in os.listdir("/dev/shm") if n.startswith(f"dispatcher-{os.getpid()}-")}


def segments_gone(before: set[str], seconds: float = 10.0) -> bool:
    """Wait (at most ``seconds``) until only the segments of ``before`` are left."""
    deadline = time.monotonic() + seconds
    while segments() - before and time.monotonic() < deadline:
        time.sleep(0.05)
    return not segments() - before


@pytest.fixture
def task_bytes(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The sizes of the task entries sent to workers, one per task."""
    sizes: list[int] = []
    send = _process.WorkerProcess.send

    def counting(self: Any, message: Any) -> None:
        if type(message) is Run:
            sizes.extend(len(pickle.dumps(to_wire(Run([t])), protocol=5)) for t in message.tasks)
        send(self, message)

    monkeypatch.setattr(_process.WorkerProcess, "send", counting)
    return sizes


def test_a_large_array_given_to_many_tasks_is_not_in_their_messages(
    task_bytes: list[int],
) -> None:
    values = np.arange(MEGABYTES * 1024 * 1024 // 8, dtype=float)
    with get_executor("mp", workers=2) as ex:
        results = ex.run([op(tasks.item_plus_size)(values, i) for i in range(40)])
        assert results == [float(i) + len(values) for i in range(40)]
        assert len(task_bytes) >= 40  # each sent (again, if taken back for an idle worker)
        assert max(task_bytes) < 4096, f"a task's message holds {max(task_bytes)} bytes"
        assert ex._transport.shared_arguments.writes == 1  # type: ignore[attr-defined]


def test_large_bytes_nested_in_a_tuple_and_given_by_keyword_travel_once(
    task_bytes: list[int],
) -> None:
    blob, extra = bytes(range(256)) * 4096, b"x" * (1 << 20)
    with get_executor("mp", workers=2) as ex:
        nodes = [op(tasks.first_item_length)((blob, i), i, extra=extra) for i in range(30)]
        assert ex.run(nodes) == [len(blob) + len(extra) + i for i in range(30)]
        assert max(task_bytes) < 4096, f"a task's message holds {max(task_bytes)} bytes"
        assert ex._transport.shared_arguments.writes == 2  # type: ignore[attr-defined]


@pytest.mark.parametrize("kind", [str, bytes, bytearray])
def test_a_large_string_or_bytes_given_to_many_tasks_travels_once(
    task_bytes: list[int], kind: type
) -> None:
    text = "dispatcher" * (1 << 20) if kind is str else kind(b"x" * (8 << 20))
    with get_executor("mp", workers=2) as ex:
        results = ex.run([op(tasks.length_plus)(text, i) for i in range(30)])
        assert results == [len(text) + i for i in range(30)]
        assert max(task_bytes) < 4096, f"a task's message holds {max(task_bytes)} bytes"
        assert ex._transport.shared_arguments.writes == 1  # type: ignore[attr-defined]


def test_a_worker_maps_the_argument_once_and_gives_every_task_the_same_value() -> None:
    values = np.ones(MEGABYTES * 1024 * 1024 // 8)
    with get_executor("mp", workers=1) as ex:
        assert ex.run([op(tasks.same_as_before)(values, i) for i in range(20)]) == [True] * 20


def test_a_change_a_task_makes_stays_in_its_worker_and_each_run_sees_the_callers_value() -> None:
    values = np.ones(MEGABYTES * 1024 * 1024 // 8)
    with get_executor("mp", workers=1) as ex:
        # One worker, tasks in order: the second sees what the first did to its copy.
        assert ex.run([op(tasks.set_first)(values, i) for i in range(2)]) == [1.0, -1.0]
        assert values[0] == 1.0  # the caller's own is untouched
        values[0] = 7.0  # a new run writes the value anew, as it is now
        assert ex.run(op(tasks.set_first)(values, 0)) == 7.0


def test_small_arguments_are_not_put_in_shared_memory(task_bytes: list[int]) -> None:
    with get_executor("mp", workers=2) as ex:
        assert ex.run([op(tasks.first_item_length)(("ab", i), i) for i in range(20)]) == [
            2 + i for i in range(20)
        ]
        assert ex._transport.shared_arguments.writes == 0  # type: ignore[attr-defined]
        assert not ex._transport.shared_arguments.runs  # type: ignore[attr-defined]


def test_a_worker_lost_mid_run_is_replaced_by_one_that_maps_the_same_segment(
    tmp_path: Path,
) -> None:
    values = np.ones(MEGABYTES * 1024 * 1024 // 8)
    with get_executor("mp", workers=2) as ex:
        nodes = [op(tasks.item_plus_size)(values, i) for i in range(20)]
        nodes.append(op(tasks.die_once_given)(values, str(tmp_path)))
        assert ex.run(nodes) == [1.0 + len(values)] * 20 + [len(values)]
        assert (tmp_path / "given.died").exists()
        assert ex._transport.shared_arguments.writes == 1  # type: ignore[attr-defined]


def test_the_segments_and_mappings_of_a_run_go_when_it_ends() -> None:
    before = segments()
    values = np.ones(MEGABYTES * 1024 * 1024 // 8)
    with get_executor("mp", workers=2) as ex:
        ex.run([op(tasks.item_plus_size)(values, i) for i in range(20)])
        assert segments_gone(before)  # the executor is still open
        # Workers were told before this run's tasks came: they hold no mapping.
        assert ex.run([op(tasks.mappings_held)(i) for i in range(8)]) == [0] * 8


def test_the_segments_of_a_failed_run_go_when_it_ends() -> None:
    before = segments()
    values = np.ones(MEGABYTES * 1024 * 1024 // 8)
    with get_executor("mp", workers=2, retries=0) as ex:
        with pytest.raises(ValueError, match="on purpose"):
            ex.run([op(tasks.fail_at)(values, i, 5) for i in range(20)])
        assert ex._transport.shared_arguments.writes == 1  # type: ignore[attr-defined]
        assert segments_gone(before)
        assert ex.run(op(tasks.fail_at)(values, 1, 5)) == 1  # still serving
        assert segments_gone(before)


def test_the_segments_of_a_run_stopped_by_ctrl_c_go_when_it_ends() -> None:
    before = segments()
    values = np.ones(MEGABYTES * 1024 * 1024 // 8)
    with get_executor("mp", workers=1) as ex:
        timer = threading.Timer(1.0, os.kill, (os.getpid(), signal.SIGINT))
        timer.start()
        try:
            with pytest.raises(KeyboardInterrupt):
                ex.run([op(tasks.sleep_given)(values, 3600.0)])
        finally:
            timer.join()
        assert ex._transport.shared_arguments.writes == 1  # type: ignore[attr-defined]
        assert segments_gone(before)


def test_a_run_named_by_executor_leaves_no_segment() -> None:
    before = segments()
    values = np.ones(MEGABYTES * 1024 * 1024 // 8)
    nodes = [op(tasks.argument_segments)(values, os.getpid()) for _ in range(10)]
    assert run(nodes, executor="mp", workers=2) == [1] * 10
    assert segments_gone(before)


@pytest.mark.parametrize("signal_name", ["SIGTERM", "SIGKILL"])
def test_a_killed_caller_leaves_no_segment_of_its_arguments(signal_name: str) -> None:
    code = textwrap.dedent(
        f"""
        import os, signal, threading, time
        import numpy as np
        from dispatcher import get_executor, op
        import argument_tasks as tasks

        def kill_when_written():
            mine = f"dispatcher-{{os.getpid()}}-"
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                names = sorted(n for n in os.listdir("/dev/shm") if n.startswith(mine))
                if any("-a-" in n for n in names):
                    print(names, flush=True)
                    os.kill(os.getpid(), signal.{signal_name})
            print([], flush=True)  # never written: nothing to test
            os._exit(3)

        if __name__ == "__main__":
            with get_executor("mp", workers=1) as ex:
                threading.Thread(target=kill_when_written, daemon=True).start()
                ex.run([op(tasks.set_first)(np.ones(2**20), i) for i in range(100)])
                time.sleep(60)
        """
    )
    env = {**os.environ, "PYTHONPATH": os.path.dirname(tasks.__file__)}
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, env=env
    )
    written = eval(done.stdout.strip().splitlines()[0])  # a list of names, printed
    assert any("-a-" in name for name in written), done.stdout + done.stderr
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and set(written) & segments():
        time.sleep(0.1)
    assert not set(written) & segments()


def test_past_the_budget_a_segment_no_task_out_names_goes_before_its_run_ends() -> None:
    # Ten arrays, one task each, one task out at a time: each write finds the others
    # unnamed, and unlinks them; without a budget, the tenth task would see ten.
    arrays = [np.full(2**17, float(i)) for i in range(10)]
    with get_executor("mp", workers=1, prefetch=0) as ex:
        ex._transport.shared_arguments.budget = 0  # type: ignore[attr-defined]
        nodes = [op(tasks.argument_segments)(a, os.getpid()) for a in arrays]
        assert ex.run(nodes) == [1] * 10
        nodes = [op(tasks.item_plus_size)(a, 0) for a in arrays]
        assert ex.run(nodes) == [float(i) + len(arrays[0]) for i in range(10)]
