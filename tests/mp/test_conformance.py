"""The conformance suite against the mp executor."""

from __future__ import annotations

from typing import Any, ClassVar

from dispatcher.testing import ExecutorConformance


class TestMp(ExecutorConformance):
    executor = "mp"
    options: ClassVar[dict[str, Any]] = {"workers": 2}


class TestMpSpawn(ExecutorConformance):
    executor = "mp"
    options: ClassVar[dict[str, Any]] = {"workers": 2, "start_method": "spawn", "prefetch": 0}
