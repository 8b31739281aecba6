"""A result or exception slow to unpickle on rank 0 holds up its own run only: rank 0's
communication thread never unpickles, the run's driver does. Each test is one real job;
a hang fails it at its timeout."""

from __future__ import annotations

import os
import re
import textwrap
from pathlib import Path

import pytest
from mpi_jobs import MISSING, MPIEXEC, job, script

pytestmark = [pytest.mark.mpi, pytest.mark.timeout(150)]

if MPIEXEC is None:
    pytest.skip(MISSING, allow_module_level=True)


PROGRAM = """
import sys, threading, time
from dispatcher import Op, TaskTimeoutError, get_executor, op
from dispatcher.testing import tasks

log, gate = sys.argv[1], sys.argv[2]

def until(condition):
    while not condition():
        time.sleep(0.01)

with get_executor("mpi") as ex:
    outcomes = {}

    def held(name, target):
        outcomes[name] = ex.run(target, throw=False)

    value = op(tasks.make_held_when_loaded, label="value")(log, "value", gate, 300.0, "v")
    error = op(tasks.fail_held_when_loaded, label="error")(log, "error", gate, 300.0, "m")
    threads = [
        threading.Thread(target=held, args=("value", value)),
        threading.Thread(target=held, args=("error", error)),
    ]
    for thread in threads:
        thread.start()
    # Both runs' drivers are unpickling, and wait.
    until(lambda: tasks.calls(log, "value-loading") + tasks.calls(log, "error-loading") == 2)
    print("others:", ex.run([Op(abs, -i) for i in range(6)]), flush=True)
    late = op(tasks.sleep_then, label="late", timeout=0.2)(1.0, "late")
    timed = ex.run(late, throw=False)
    print("timed out:", isinstance(timed.error, TaskTimeoutError), flush=True)
    print("still held:", tasks.calls(log, "value-loaded") + tasks.calls(log, "error-loaded"))
    open(gate, "w").close()
    for thread in threads:
        thread.join()
    print("value:", outcomes["value"].value, flush=True)
    print("error:", repr(outcomes["error"].error), flush=True)

with open("/proc/self/maps") as maps:  # the MPICH segments this rank maps, by name
    print("segments", sorted({l.split()[5] for l in maps if "/dev/shm/mpich_shm_" in l}))
"""


def test_values_slow_to_unpickle_hold_up_only_their_runs(tmp_path: Path) -> None:
    log = tmp_path / "calls"
    log.mkdir()
    program = script(tmp_path, textwrap.dedent(PROGRAM))
    done = job(3, program, str(log), str(tmp_path / "gate"), timeout=120)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "others: [0, 1, 2, 3, 4, 5]" in done.stdout
    assert "timed out: True" in done.stdout
    assert "still held: 0" in done.stdout
    assert "value: v" in done.stdout
    assert "error: ValueError('m')" in done.stdout
    # The job ended (every rank exited), leaving none of its MPICH segments.
    found = re.search(r"segments (\[.*\])", done.stdout)
    assert found is not None, done.stdout
    segments: list[str] = eval(found.group(1))  # a list of str, printed by the program
    assert segments, "MPICH made no segment: nothing to check"
    assert [n for n in segments if os.path.exists(n)] == []
