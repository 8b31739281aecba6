"""The conformance suite against the mp executor."""

from __future__ import annotations

from typing import Any, ClassVar

from dispatcher.testing import ExecutorConformance

# Checks mp fails today; each entry goes once mp passes it.
KNOWN_FAULTS: dict[str, str] = {}
KNOWN_HANGS = {
    "test_work_abandoned_by_fail_fast_does_not_hold_the_next_run": "the abandoned task keeps "
    "its worker; the next run's task queued there waits behind it",
    "test_work_abandoned_by_a_cancelled_arun_does_not_hold_the_next_run": "the tasks of the "
    "cancelled run keep their workers; the next run hangs behind them",
    "test_work_abandoned_at_its_timeout_does_not_hold_the_next_run": "after tasks are "
    "killed at their timeout, the next run does not always get both workers at once",
}


class TestMp(ExecutorConformance):
    executor = "mp"
    options: ClassVar[dict[str, Any]] = {"workers": 2}
    known_faults = KNOWN_FAULTS
    known_hangs = KNOWN_HANGS


class TestMpSpawn(ExecutorConformance):
    executor = "mp"
    options: ClassVar[dict[str, Any]] = {"workers": 2, "start_method": "spawn", "prefetch": 0}
    known_faults = KNOWN_FAULTS
    known_hangs = KNOWN_HANGS
