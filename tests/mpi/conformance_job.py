"""Run inside an MPI job: the conformance suite against the mpi executor."""

from __future__ import annotations

from typing import Any, ClassVar

from dispatcher.testing import ExecutorConformance

# Fault checks mpi fails today, promptly; each entry goes once mpi passes it.
KNOWN_FAULTS = {
    "test_work_abandoned_by_a_cancelled_arun_does_not_hold_the_next_run": "a rank cannot be "
    "taken back from a running task (an MPI rank cannot be killed and kept): while every "
    "rank still runs an abandoned task, the next run fails after a wait with 'no capacity left'",
}


class TestMpi(ExecutorConformance):
    executor = "mpi"
    options: ClassVar[dict[str, Any]] = {}
    known_faults = KNOWN_FAULTS
