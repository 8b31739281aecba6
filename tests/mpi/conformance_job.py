"""Run inside an MPI job: the conformance suite against the mpi executor."""

from __future__ import annotations

from typing import Any, ClassVar

from dispatcher.testing import ExecutorConformance


class TestMpi(ExecutorConformance):
    executor = "mpi"
    options: ClassVar[dict[str, Any]] = {}
    known_hangs: ClassVar[dict[str, str]] = {
        "test_argument_whose_pickling_exits": (
            "the arguments' pickling in rank 0 (_pack_arguments) turns only an Exception "
            "into SerializationError: a SystemExit or the like escapes run(), and leaves "
            "rank 0 believing a function was sent that never was ('no function N' in "
            "every later check using it)"
        ),
    }
