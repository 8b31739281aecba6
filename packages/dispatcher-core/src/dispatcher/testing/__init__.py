"""Testing tools for dispatcher and for backends built on its transport SPI.

* :class:`ExecutorConformance` -- the behavioural contract as a pytest class; subclass it
  with ``executor = "name"`` to prove a backend. It includes :class:`ExecutorFaults`, the
  fault checks (odd exceptions and values, bad timeouts, abandoned work).
* :class:`ExecutorHarness` -- what both share: the executor under test, its capabilities,
  and the checks a backend is known to fail (``known_faults``, ``known_hangs``).
* :class:`FakeTransport` and :func:`fake_executor` -- an in-memory transport with several
  pretend workers and fault injection, so scheduler tests need no processes.
* :class:`Recorder` -- an observer plugin that keeps every hook call.

Importing this module needs pytest.
"""

from ._conformance import ExecutorConformance as ExecutorConformance
from ._conformance import Recorder as Recorder
from ._fake import FakeTransport as FakeTransport
from ._fake import fake_executor as fake_executor
from ._faults import ExecutorFaults as ExecutorFaults
from ._harness import ExecutorHarness as ExecutorHarness

__all__ = [
    "ExecutorConformance",
    "ExecutorFaults",
    "ExecutorHarness",
    "FakeTransport",
    "Recorder",
    "fake_executor",
]
