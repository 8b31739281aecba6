"""The conformance suite against core's own executors."""

from __future__ import annotations

from typing import Any, ClassVar

from dispatcher.testing import ExecutorConformance

# In the caller's thread (sync, and async with threads=0) a task's KeyboardInterrupt cannot
# be told from the user's Ctrl-C, so it stops the run instead of failing its node: kept as
# a known departure from the fault check, on purpose.
KEYBOARD_INTERRUPT_STOPS_THE_CALLER = {
    "test_odd_exception_fails_its_node[KeyboardInterrupt]": "in the caller's thread a "
    "KeyboardInterrupt is taken for Ctrl-C: it stops the run instead of failing its node"
}


class TestSync(ExecutorConformance):
    executor = "sync"
    known_faults = KEYBOARD_INTERRUPT_STOPS_THE_CALLER


class TestAsyncThreads(ExecutorConformance):
    executor = "async"
    options: ClassVar[dict[str, Any]] = {"threads": 4}


class TestAsyncInline(ExecutorConformance):
    executor = "async"
    options: ClassVar[dict[str, Any]] = {"threads": 0}
    known_faults = KEYBOARD_INTERRUPT_STOPS_THE_CALLER


class TestAsyncTrio(ExecutorConformance):
    executor = "async"
    options: ClassVar[dict[str, Any]] = {"backend": "trio"}
