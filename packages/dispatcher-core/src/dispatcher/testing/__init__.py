"""Testing tools for dispatcher and for backends built on its transport SPI.

* :class:`ExecutorConformance` -- the behavioural contract as a pytest class; subclass it
  with ``executor = "name"`` to prove a backend.
* :class:`FakeTransport` and :func:`fake_executor` -- an in-memory transport with several
  pretend workers and fault injection, so scheduler tests need no processes.
* :class:`Recorder` -- an observer plugin that keeps every hook call.

Importing this module needs pytest.
"""

from ._conformance import ExecutorConformance as ExecutorConformance
from ._conformance import Recorder as Recorder
from ._fake import FakeTransport as FakeTransport
from ._fake import fake_executor as fake_executor

__all__ = ["ExecutorConformance", "FakeTransport", "Recorder", "fake_executor"]
