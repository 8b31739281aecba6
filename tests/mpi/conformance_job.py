"""Run inside an MPI job: the conformance suite against the mpi executor."""

from __future__ import annotations

from typing import Any, ClassVar

from dispatcher.testing import ExecutorConformance

# Fault checks that hang the job today (each one stalls a rank or rank 0's communication
# thread, so the rest of the job could not run either); each entry goes once mpi passes it.
KNOWN_HANGS = {
    "test_work_abandoned_by_a_cancelled_arun_does_not_hold_the_next_run": "the tasks of the "
    "cancelled run keep their ranks; the next run hangs behind them",
}


class TestMpi(ExecutorConformance):
    executor = "mpi"
    options: ClassVar[dict[str, Any]] = {}
    known_hangs = KNOWN_HANGS
