"""The conformance suite against the mp executor."""

from __future__ import annotations

from typing import Any, ClassVar

from dispatcher.testing import ExecutorConformance

# Checks mp fails today; each entry goes once mp passes it.
KNOWN_FAULTS: dict[str, str] = {}
KNOWN_HANGS: dict[str, str] = {}


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
