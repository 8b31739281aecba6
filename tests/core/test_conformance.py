"""The conformance suite against core's own executors."""

from __future__ import annotations

from typing import Any, ClassVar

from dispatcher.testing import ExecutorConformance


class TestSync(ExecutorConformance):
    executor = "sync"


class TestAsyncThreads(ExecutorConformance):
    executor = "async"
    options: ClassVar[dict[str, Any]] = {"threads": 4}


class TestAsyncInline(ExecutorConformance):
    executor = "async"
    options: ClassVar[dict[str, Any]] = {"threads": 0}


class TestAsyncTrio(ExecutorConformance):
    executor = "async"
    options: ClassVar[dict[str, Any]] = {"backend": "trio"}
