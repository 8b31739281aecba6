"""Faults of ranks with work queued on them, in real MPI jobs: frozen ranks, tasks deep
in a rank's queue, results that cannot travel, and what each leaves behind.

Every job runs in a session of its own, killed whole when it outlives its time: a hang
fails the test and leaves no rank behind."""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

import pytest
from mpi_jobs import HERE, MISSING, MPIEXEC, command, script

pytestmark = [pytest.mark.mpi, pytest.mark.timeout(150)]

if MPIEXEC is None:
    pytest.skip(MISSING, allow_module_level=True)


def ended_job(
    ranks: int, *args: str, env: dict[str, str] | None = None, timeout: float = 60
) -> tuple[int | None, str, str]:
    """Run a job; its exit status (``None`` when it had not ended after ``timeout``
    seconds, and was killed), output and errors."""
    process = subprocess.Popen(
        command(ranks, *args),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=HERE,
        env={**os.environ, **(env or {})},
        start_new_session=True,
    )
    try:
        out, err = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        out, err = process.communicate()
        return None, out, err
    return process.returncode, out, err


# The first call freezes its rank (SIGSTOP), once per job, after a large argument of the
# run was sent there: rank 0's sends to a frozen rank never complete.
FREEZES_ONCE = """
import os, signal, sys
from dispatcher import Op, run

def freeze_once(marker, i, payload):
    if i == 0 and not os.path.exists(marker):
        open(marker, "w").close()
        os.kill(os.getpid(), signal.SIGSTOP)
    return i

values = run([Op(freeze_once, sys.argv[1], i, bytes(4_000_000)) for i in range(8)], executor="mpi")
print("values", values, flush=True)
"""


def test_a_job_whose_rank_froze_with_sends_on_their_way_ends(tmp_path: Path) -> None:
    program = script(tmp_path, FREEZES_ONCE)
    status, out, err = ended_job(
        3, program, str(tmp_path / "frozen"), env={"DISPATCHER_MPI_SILENCE_LIMIT": "2"}
    )
    assert "values [0, 1, 2, 3, 4, 5, 6, 7]" in out, err[-3000:]
    assert status is not None, "the job did not end: " + err[-3000:]
    assert "do not answer" in err


# Holds its rank's GIL for seconds (backtracking), untimed; timed tasks that need its
# result are sent ahead, to wait behind it on its rank.
BEHIND_A_GIL_HOLDER = """
import re
from dispatcher import Op, op, run

def hog(n):
    re.match(r"(a*)*b", "a" * n)
    return 1

def after(x, i):
    return x + i

head = Op(hog, 26)
results = run([op(after, timeout=1)(head, i) for i in range(50)], executor="mpi", throw=False)
errors = sorted({repr(r.error) for r in results if not r.ok})
print("ok", sum(r.ok for r in results), "errors", errors, flush=True)
"""


def test_timed_tasks_queued_behind_a_task_holding_the_gil_wait_for_it(tmp_path: Path) -> None:
    program = script(tmp_path, BEHIND_A_GIL_HOLDER)
    status, out, err = ended_job(3, program, timeout=120)
    assert status == 0, err[-3000:]
    assert "ok 50 errors []" in out, out + err[-3000:]


# Rank 0 freezes the rank that does not run the gate, once the inputs are made and held
# on both ranks; the sum then runs where the gate's large result is, and fetches the
# inputs held by the frozen rank.
FROZEN_WHILE_IDLE = """
import os, signal, threading, time
from dispatcher import Op, run
from dispatcher_mpi import _transport

def make(i):
    return i

def gate(seconds):
    time.sleep(seconds)
    return bytes(20_000_000)

def total(large, *values):
    return sum(values)

root = _transport._root

def freeze_the_idle_rank():
    time.sleep(1.5)
    busy = {spec.worker for spec in list(root.transport.inflight.tasks.values())}
    idle = [rank for rank in root.ranks if root.names[rank] not in busy]
    os.kill(root.peers[idle[0]][1], signal.SIGSTOP)
    frozen.append(idle[0])

frozen = []
threading.Thread(target=freeze_the_idle_rank, daemon=True).start()
value = run(Op(total, Op(gate, 3), *[Op(make, i) for i in range(200)]), executor="mpi")
print("value", value == sum(range(200)), flush=True)
os.kill(root.peers[frozen[0]][1], signal.SIGCONT)
"""


def test_a_fetch_from_a_rank_frozen_while_idle_ends(tmp_path: Path) -> None:
    program = script(tmp_path, FROZEN_WHILE_IDLE)
    status, out, err = ended_job(3, program, env={"DISPATCHER_MPI_SILENCE_LIMIT": "2"})
    assert "value True" in out, err[-3000:]
    assert status == 0, err[-3000:]


# Messages no one receives, as a rank that thawed late sends them (an answer to a fetch
# given up on): one to rank 0, sent by a task; one to worker rank 1, sent by rank 0 before
# the end.
UNRECEIVED = """
from mpi4py import MPI
from dispatcher import Op, run

def stray():
    MPI.COMM_WORLD.send("late", dest=0, tag=4242)
    return 1

assert run(Op(stray), executor="mpi") == 1
print("done", flush=True)
MPI.COMM_WORLD.send("late", dest=1, tag=4242)
"""


def test_a_message_no_one_received_does_not_fail_a_job_that_did_its_work(
    tmp_path: Path,
) -> None:
    status, out, err = ended_job(3, script(tmp_path, UNRECEIVED))
    assert "done" in out, err[-3000:]
    assert "unmatched" not in err, err[-3000:]
    assert status == 0, err[-3000:]


# How programs end: MPI used in the program's own exit hook, MPI.Finalize() called by the
# program (a common habit), and a thread the program leaves running graphs.
PROGRAM_ENDINGS = """
import atexit, threading
from mpi4py import MPI
from dispatcher import Op, run

atexit.register(lambda: print("hook sees", MPI.COMM_WORLD.Get_size(), "ranks", flush=True))

def later():
    print("thread", sum(run([Op(abs, -i) for i in range(50)], executor="mpi")), flush=True)

threading.Thread(target=later).start()
MPI.Finalize()
"""


def test_a_program_may_use_mpi_at_exit_finalize_and_leave_a_thread_running_graphs(
    tmp_path: Path,
) -> None:
    # The exit hook failed (MPI already finalised); MPI.Finalize() hung the job, its hub
    # cut off; the thread's run found the ranks stopped, and rank 0 was killed.
    status, out, err = ended_job(3, script(tmp_path, PROGRAM_ENDINGS))
    assert status == 0, err[-3000:]
    assert "thread 1225" in out, err[-3000:]
    assert "hook sees 3 ranks" in out, err[-3000:]
    assert "MPI.Finalize() is left to dispatcher_mpi" in err


# Rank 0 holds the GIL for under a second, past the deadline of a task that returned in
# time: its report waits for the hub, which was held up between reading and judging.
STALLED_BEFORE_THE_REPORT = """
import re, threading, time
from dispatcher import op, run

failed = 0
for _ in range(3):
    out = []
    def go():
        out.append(run([op(time.sleep, timeout=0.4)(0.15)], executor="mpi", throw=False)[0])
    thread = threading.Thread(target=go)
    thread.start()
    time.sleep(0.05)
    re.match(r"(a*)*b", "a" * 24)  # holds the GIL for most of a second
    thread.join()
    failed += out[0].error is not None
print("failed", failed, flush=True)
"""


def test_a_report_waiting_behind_a_short_stall_of_rank_0_counts_before_its_deadline(
    tmp_path: Path,
) -> None:
    status, out, err = ended_job(3, script(tmp_path, STALLED_BEFORE_THE_REPORT))
    assert "failed 0" in out, out + err[-3000:]
    assert status == 0, err[-3000:]
