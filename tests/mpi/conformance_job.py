"""Run inside an MPI job: the conformance suite against the mpi executor."""

from __future__ import annotations

from typing import Any, ClassVar

from dispatcher.testing import ExecutorConformance


class TestMpi(ExecutorConformance):
    executor = "mpi"
    options: ClassVar[dict[str, Any]] = {}
