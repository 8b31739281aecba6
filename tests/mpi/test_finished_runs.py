"""A run that ended leaves nothing on the ranks: whatever its tasks still out there keep
(the inputs an abandoned task fetches, its result) is dropped, even when their reports come
after the run stopped listening; and a rank taken out for such a task comes back however
the task ends."""

from __future__ import annotations

from pathlib import Path

import pytest
from mpi_jobs import MISSING, MPIEXEC, job, script

pytestmark = [pytest.mark.mpi, pytest.mark.timeout(120)]

if MPIEXEC is None:
    pytest.skip(MISSING, allow_module_level=True)
pytest.importorskip("numpy")

PRELUDE = """
import os, re, signal, threading, time
import numpy as np
from dispatcher import get_executor, op

def rank_of(_):
    time.sleep(0.05)  # so that every rank gets some
    return os.environ["PMI_RANK"]

def held(_):
    from dispatcher.remote import held_here
    time.sleep(0.05)
    return os.environ["PMI_RANK"], sum(held_here().values())

def held_on_ranks(ex):
    answers = ex.run([op(held)(i) for i in range(24)])
    return sorted(set(answers))

def slow_link(seconds):
    # Every fetch from another rank takes this long more, as over a slow link.
    import dispatcher_mpi._worker as worker
    fetch = worker.WorkerRank.remote_inputs
    if not hasattr(fetch, "slow"):
        def slowly(self, deps, sources):
            values = fetch(self, deps, sources)
            if values:
                time.sleep(seconds)
            return values
        slowly.slow = True
        worker.WorkerRank.remote_inputs = slowly
    return rank_of(None)

def make(n):
    time.sleep(0.1)
    return np.ones(n)

def first(a, b):
    return float(a[0] + b[0])

def fail_soon(_):
    time.sleep(0.4)
    raise ValueError("fails on purpose")
"""


def run_program(tmp_path: Path, body: str, ranks: int = 3) -> list[str]:
    """Run ``PRELUDE`` then ``body`` on ``ranks`` ranks (rank 0 and its workers); the
    lines it printed."""
    done = job(ranks, script(tmp_path, PRELUDE + body))
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    return done.stdout.splitlines()


def test_inputs_fetched_by_a_task_of_a_failed_run_are_dropped_when_it_reports(
    tmp_path: Path,
) -> None:
    lines = run_program(
        tmp_path,
        """
def slow(a):
    time.sleep(0.5)
    return float(a[0])

with get_executor("mpi", prefetch=0) as ex:  # one task per rank at a time
    assert set(ex.run([op(slow_link)(1.0) for _ in range(24)])) == {"1", "2", "3"}
    for _ in range(3):
        # ``a`` on one rank, ``fail_soon`` on another; of the two tasks that read ``a``,
        # one runs where it is, the other on the third rank, which fetches it: slowly,
        # so the run fails meanwhile, and the copy lands after the run is over.
        a = op(make)(2**20)
        try:
            ex.run([op(slow)(a), op(slow)(a), op(fail_soon)(None)])
        except ValueError as exc:
            print("failed", exc)
    time.sleep(2.0)  # the abandoned tasks return: their ranks are back
    print("held", held_on_ranks(ex))
""",
        ranks=4,
    )
    assert lines.count("failed fails on purpose") == 3, lines
    assert "held [('1', 0), ('2', 0), ('3', 0)]" in lines, lines


def test_a_rank_whose_abandoned_task_finds_its_inputs_gone_comes_back(tmp_path: Path) -> None:
    lines = run_program(
        tmp_path,
        """
def first(a, b):
    return float(a[0] + b[0])

with get_executor("mpi") as ex:
    assert set(ex.run([op(slow_link)(1.0) for _ in range(16)])) == {"1", "2"}
    # ``first`` goes where the larger input is and fetches the other, slowly; the run
    # fails meanwhile, its rank drops what it held, and ``first`` finds ``b`` gone.
    a, b = op(make)(2**20), op(make)(2**21)
    try:
        ex.run([op(first)(a, b), op(fail_soon)(a)])
    except ValueError as exc:
        print("failed", exc)
    time.sleep(1.5)
    print("ranks", sorted(set(ex.run([op(rank_of)(i) for i in range(16)]))))
""",
    )
    assert "failed fails on purpose" in lines, lines
    assert "ranks ['1', '2']" in lines, lines
