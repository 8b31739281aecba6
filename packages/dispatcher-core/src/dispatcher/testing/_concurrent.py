"""The checks of runs on several threads at once, on one executor: each gets its own
results, and what one run sends a worker never overtakes what another run's tasks need."""

from __future__ import annotations

import threading
from typing import Any

import pytest

from .. import Executor, Op
from . import tasks
from ._harness import ExecutorHarness

__all__ = ["ExecutorConcurrentRuns"]


class ExecutorConcurrentRuns(ExecutorHarness):
    """Runs from several threads share one executor."""

    @pytest.mark.timeout(120)
    def test_concurrent_runs_on_one_executor(self, ex: Executor) -> None:
        results: dict[int, Any] = {}

        def one(i: int) -> None:
            chain = Op(tasks.inc, i)
            for _ in range(10):
                chain = Op(tasks.inc, chain)
            try:
                results[i] = ex.run(chain)
            except BaseException as exc:  # reported below
                results[i] = exc

        threads = [threading.Thread(target=one, args=(i,)) for i in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert results == {i: i + 11 for i in range(4)}

    @pytest.mark.timeout(120)
    def test_concurrent_runs_first_using_one_function(self, ex: Executor) -> None:
        # Each round's function is new to every worker, and four runs send it at once:
        # whichever run sends it, no worker may get a task before the function.
        failures: list[str] = []
        for round_ in range(12):
            add_round = tasks.adder(round_)
            barrier = threading.Barrier(4)

            def one(
                i: int, n: int = round_, add_round: Any = add_round, barrier: Any = barrier
            ) -> None:
                try:
                    barrier.wait(timeout=30)
                    got = ex.run([Op(add_round, 10 * i + k) for k in range(3)])
                    want = [10 * i + k + n for k in range(3)]
                    if got != want:
                        failures.append(f"round {n}, run {i}: {got} != {want}")
                except BaseException as exc:  # reported below
                    failures.append(f"round {n}, run {i}: {exc!r}")

            threads = [threading.Thread(target=one, args=(i,)) for i in range(4)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
        assert not failures, "\n".join(failures)
