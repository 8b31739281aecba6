"""Run inside an MPI job: the conformance suite against the mpi executor."""

from __future__ import annotations

from typing import Any, ClassVar

from dispatcher.testing import ExecutorConformance


class TestMpi(ExecutorConformance):
    executor = "mpi"
    options: ClassVar[dict[str, Any]] = {}
    known_hangs: ClassVar[dict[str, str]] = {
        "test_argument_whose_pickling_exits": (
            "the node fails as it should, but rank 0 then believes its function was sent "
            "to a rank that never got it: a later run using that function there fails "
            "with 'no function N' (test_a_failure_names_the_node_with_its_arguments)"
        ),
    }
