"""The conformance suite against core's own executors."""

from __future__ import annotations

from typing import Any, ClassVar

from dispatcher.testing import ExecutorConformance

# A task called in the caller's thread that raises a BaseException which is not an
# Exception escapes the run instead of failing its node (the in-caller call sites catch
# Exception only).
BASE_EXCEPTION_ESCAPES_THE_CALLER = {
    f"test_odd_exception_fails_its_node[{kind}]": "a BaseException raised in the caller "
    "escapes run(throw=False) instead of failing its node"
    for kind in ("KeyboardInterrupt", "SystemExit", "GeneratorExit", "CustomBaseError")
}


class TestSync(ExecutorConformance):
    executor = "sync"
    known_faults = BASE_EXCEPTION_ESCAPES_THE_CALLER


class TestAsyncThreads(ExecutorConformance):
    executor = "async"
    options: ClassVar[dict[str, Any]] = {"threads": 4}


class TestAsyncInline(ExecutorConformance):
    executor = "async"
    options: ClassVar[dict[str, Any]] = {"threads": 0}
    known_faults = BASE_EXCEPTION_ESCAPES_THE_CALLER


class TestAsyncTrio(ExecutorConformance):
    executor = "async"
    options: ClassVar[dict[str, Any]] = {"backend": "trio"}
