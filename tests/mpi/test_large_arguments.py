"""A large plain argument given to many tasks reaches each rank once per run, not with
every task; the ranks drop it when the run ends, however it ended."""

from __future__ import annotations

from pathlib import Path

import pytest
from mpi_jobs import MISSING, MPIEXEC, job, script

pytestmark = [pytest.mark.mpi, pytest.mark.timeout(180)]

if MPIEXEC is None:
    pytest.skip(MISSING, allow_module_level=True)
pytest.importorskip("numpy")

# The start of every program below: on rank 0, counts the bytes of every message its hub
# posts (the pickle and the raw buffers: what goes over the links to the ranks).
PRELUDE = """
import os, time
import numpy as np
import dispatcher_mpi._channel as channel
from dispatcher import DataNode, get_executor, op

SENT = [0]
_encode = channel.encode

def counting(message):
    header, buffers = _encode(message)
    SENT[0] += len(header) + sum(b.nbytes for b in buffers)
    return header, buffers

channel.encode = counting

def sent_during(ex, nodes, **options):
    SENT[0] = 0
    results = ex.run(nodes, **options)
    return results, SENT[0]

def item(values, i):
    return float(values[i]) + len(values)

def lengths(pair, mapping, i, *, extra):
    return len(pair[0]) + len(mapping["blob"]) + len(extra) + i

def same_as_before(values, i, seen=[]):
    seen.append(values)
    return all(s is values for s in seen)

def held(_):
    from dispatcher_mpi._held_arguments import held_count
    time.sleep(0.05)  # so that the other rank gets some too
    return os.environ["PMI_RANK"], held_count()

def nothing_held(ex):
    answers = ex.run([op(held)(i) for i in range(8)])
    return {count for _, count in answers} == {0}, sorted({rank for rank, _ in answers})

def fail_at(values, i, bad):
    if i == bad:
        raise ValueError(f"task {i} fails on purpose")
    time.sleep(0.01)
    return float(values[0])

def sleep_given(values, seconds):
    time.sleep(seconds)
    return len(values)
"""

MEBIBYTE = 1 << 20


def printed(lines: list[str], what: str) -> int:
    """The number the program printed after ``what``."""
    return int(next(line for line in lines if line.startswith(what + " ")).split()[-1])


def assert_sent_at_most(lines: list[str], most: int, what: str = "sent") -> None:
    """The bytes the program printed after ``what`` are fewer than ``most``."""
    sent = printed(lines, what)
    assert sent < most, f"{sent / MEBIBYTE:.1f} MiB {what}"


def run_program(tmp_path: Path, body: str) -> list[str]:
    """Run ``PRELUDE`` then ``body`` on 3 ranks (2 workers); the lines it printed."""
    done = job(3, script(tmp_path, PRELUDE + body))
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    return done.stdout.splitlines()


def test_a_large_array_given_to_many_tasks_reaches_each_rank_once(tmp_path: Path) -> None:
    lines = run_program(
        tmp_path,
        """
values = np.arange(2**20, dtype=float)  # 8 MiB
with get_executor("mpi") as ex:
    ex.run([op(item)(np.zeros(4), i) for i in range(4)])  # functions shipped, ranks up
    results, sent = sent_during(ex, [op(item)(values, i) for i in range(40)])
    assert results == [float(i) + len(values) for i in range(40)], results
    print("sent", sent)
    # The same object, unpickled once per rank, for every task of the run there.
    assert ex.run([op(same_as_before)(values, i) for i in range(20)]) == [True] * 20
    print("released", *nothing_held(ex))
""",
    )
    # Two ranks: at most two copies of 8 MiB, not forty.
    assert_sent_at_most(lines, 2 * 8 * MEBIBYTE + MEBIBYTE, "sent")
    assert "released True ['1', '2']" in lines, lines


def test_nested_and_keyword_arguments_travel_once_with_their_values(tmp_path: Path) -> None:
    lines = run_program(
        tmp_path,
        """
blob, other, extra = os.urandom(2**20), bytearray(2**20), b"x" * 2**20
with get_executor("mpi") as ex:
    ex.run([op(item)(np.zeros(4), i) for i in range(4)])
    nodes = [op(lengths)((blob, i), {"blob": other}, i, extra=extra) for i in range(30)]
    results, sent = sent_during(ex, nodes)
    assert results == [3 * 2**20 + i for i in range(30)], results
    print("sent", sent)
    print("released", *nothing_held(ex))
    # A DataNode's value reaches its readers as an input sent with each: the same way.
    data = DataNode(np.full(2**17, 3.0))
    results, sent = sent_during(ex, [op(item)(data, i) for i in range(30)])
    assert results == [3.0 + 2**17] * 30, results
    print("data sent", sent)
    print("released", *nothing_held(ex))
""",
    )
    # Three arguments of 1 MiB, at most once to each of two ranks.
    assert_sent_at_most(lines, 6 * MEBIBYTE + MEBIBYTE // 2, "sent")
    assert_sent_at_most(lines, 2 * MEBIBYTE + MEBIBYTE // 2, "data sent")
    assert lines.count("released True ['1', '2']") == 2, lines


def test_a_large_string_given_to_many_tasks_reaches_each_rank_once(tmp_path: Path) -> None:
    lines = run_program(
        tmp_path,
        """
text = "dispatcher" * 2**20  # 10 MiB
with get_executor("mpi") as ex:
    ex.run([op(item)(np.zeros(4), i) for i in range(4)])  # functions shipped, ranks up
    results, sent = sent_during(ex, [op(len)(text) for i in range(30)])
    assert results == [len(text)] * 30, results
    print("sent", sent)
    print("released", *nothing_held(ex))
""",
    )
    assert_sent_at_most(lines, 2 * 10 * MEBIBYTE + MEBIBYTE, "sent")
    assert "released True ['1', '2']" in lines, lines


def test_a_run_after_a_failed_one_gets_the_values_as_they_are_now(tmp_path: Path) -> None:
    lines = run_program(
        tmp_path,
        """
values = np.ones(2**20)
with get_executor("mpi") as ex:
    try:
        ex.run([op(fail_at)(values, i, 5) for i in range(40)])
    except ValueError as exc:
        print("failed", exc)
    time.sleep(0.5)  # the tasks abandoned by the failure return: their ranks are back
    print("released after failure", *nothing_held(ex))
    values[0] = 7.0  # the same object, changed: the next run must see it so
    results, sent = sent_during(ex, [op(fail_at)(values, i, -1) for i in range(20)])
    assert results == [7.0] * 20, results
    print("sent", sent)
    print("released", *nothing_held(ex))
""",
    )
    assert "failed task 5 fails on purpose" in lines, lines
    assert "released after failure True ['1', '2']" in lines, lines
    assert "released True ['1', '2']" in lines, lines
    assert_sent_at_most(lines, 2 * 8 * MEBIBYTE + MEBIBYTE, "sent")


def test_a_rank_retired_mid_run_still_holds_the_argument_when_it_comes_back(
    tmp_path: Path,
) -> None:
    lines = run_program(
        tmp_path,
        """
from dispatcher import TaskTimeoutError

def item_on(values, i):
    time.sleep(0.1)
    return os.environ["PMI_RANK"], time.monotonic(), float(values[i]) + len(values)

def slow_then_say(values, path):
    time.sleep(1.5)
    with open(path, "w") as out:
        out.write(f"{os.environ['PMI_RANK']} {time.monotonic()}")
    return len(values)

values = np.ones(2**20)
values[1] = 2.0
said = os.path.join(os.path.dirname(os.path.abspath(__file__)), "slow.txt")
with get_executor("mpi") as ex:
    # The slow task's rank leaves scheduling at 0.5 s, its queue dropped, and comes back
    # at 1.5 s, within the run: its later tasks name the argument it was sent before.
    slow = op(slow_then_say, timeout=0.5)(values, said)
    nodes = [slow] + [op(item_on)(values, i % 2) for i in range(40)]
    results, sent = sent_during(ex, nodes, throw=False)
    assert isinstance(results[0].error, TaskTimeoutError), results[0]
    assert [r.value[2] for r in results[1:]] == [(1.0 + i % 2) + len(values) for i in range(40)]
    with open(said) as lines:
        rank, returned = lines.read().split()
    after = [r.value for r in results[1:] if r.value[0] == rank and r.value[1] > float(returned)]
    print("after its comeback", len(after))
    print("sent", sent)
    values[0] = 5.0
    results = ex.run([op(item)(values, i % 3) for i in range(30)])
    expected = [(5.0, 2.0, 1.0)[i % 3] + len(values) for i in range(30)]
    assert results == expected, results
    print("released", *nothing_held(ex))
""",
    )
    assert printed(lines, "after its comeback") > 0, lines
    assert_sent_at_most(lines, 2 * 8 * MEBIBYTE + MEBIBYTE, "sent")
    assert "released True ['1', '2']" in lines, lines


def test_the_ranks_drop_the_arguments_of_a_run_stopped_by_ctrl_c(tmp_path: Path) -> None:
    lines = run_program(
        tmp_path,
        """
import signal, threading

values = np.ones(2**20)
with get_executor("mpi") as ex:
    ex.run([op(item)(np.zeros(4), i) for i in range(4)])
    threading.Timer(1.0, os.kill, (os.getpid(), signal.SIGINT)).start()
    try:
        ex.run([op(sleep_given)(values, 0.2) for _ in range(40)])
    except KeyboardInterrupt:
        print("interrupted")
    time.sleep(1.0)  # the abandoned tasks return: their ranks are back
    print("released", *nothing_held(ex))
""",
    )
    assert "interrupted" in lines, lines
    assert "released True ['1', '2']" in lines, lines


def test_past_the_budget_a_rank_drops_the_arguments_no_task_out_names(tmp_path: Path) -> None:
    lines = run_program(
        tmp_path,
        """
def count_held(values, i):
    from dispatcher_mpi._held_arguments import held_count
    return float(values[0]), held_count()

arrays = [np.full(2**16, float(i)) for i in range(12)]  # 512 KiB each, one per task
with get_executor("mpi", workers=1, prefetch=0) as ex:
    ex._transport.held.budget = 0
    results = ex.run([op(count_held)(a, i) for i, a in enumerate(arrays)])
    assert [value for value, _ in results] == [float(i) for i in range(12)], results
    print("most held", max(count for _, count in results))
    # The same arrays again, in the same run: the dropped ones are sent anew.
    nodes = [op(count_held)(a, i) for i, a in enumerate(arrays + arrays)]
    results = ex.run(nodes)
    assert [value for value, _ in results] == [float(i) for i in range(12)] * 2, results
    print("released", *nothing_held(ex))
""",
    )
    # One task at a time on the one rank: it holds its own argument and none of the
    # eleven before it.
    assert "most held 1" in lines, lines
    assert "released True ['1']" in lines, lines
