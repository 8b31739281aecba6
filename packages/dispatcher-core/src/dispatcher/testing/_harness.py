"""What every executor test class shares: the executor under test, its capabilities, and
the list of checks it is known to fail."""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, ClassVar

import pytest

from .. import Executor, get_executor, run
from ..transport import Capabilities

__all__ = ["ExecutorHarness"]

RUN_KNOWN_HANGS = "DISPATCHER_RUN_KNOWN_HANGS"
"""Set this environment variable to ``1`` to run the checks listed in ``known_hangs``."""


class ExecutorHarness:
    """The executor a test class checks, and how it runs targets on it.

    Subclasses set :attr:`executor` (a registered name) and :attr:`options`. A backend
    that fails some checks today lists them, with the reason, by test name (every case
    of a parametrized check) or by case (``"test_x[param]"``):

    * :attr:`known_faults` -- failures that end promptly: marked ``xfail(strict=True)``,
      so the day the backend is fixed the check reports it and the entry must go;
    * :attr:`known_hangs` -- checks that hang, leave a broken executor behind, or only
      fail at a long guard: skipped, unless the environment variable
      ``DISPATCHER_RUN_KNOWN_HANGS=1`` asks to run them (each still fails at its
      per-test timeout instead of stalling).
    """

    executor: ClassVar[str] = ""
    options: ClassVar[dict[str, Any]] = {}
    known_faults: ClassVar[Mapping[str, str]] = {}
    known_hangs: ClassVar[Mapping[str, str]] = {}

    _capabilities: ClassVar[Capabilities | None] = None

    @pytest.fixture(autouse=True)
    def _known_failures(self, request: pytest.FixtureRequest) -> None:
        # An entry names a check ("test_x", every parameter) or one case ("test_x[a]").
        full = request.node.name
        names = (full, getattr(request.node, "originalname", full))
        hang = next((self.known_hangs[n] for n in names if n in self.known_hangs), None)
        if hang is not None and os.environ.get(RUN_KNOWN_HANGS) != "1":
            pytest.skip(
                f"known to hang on {self.executor!r}: {hang} (set {RUN_KNOWN_HANGS}=1 to run it)"
            )
        fault = next((self.known_faults[n] for n in names if n in self.known_faults), None)
        if fault is not None:
            reason = f"known to fail on {self.executor!r}: {fault}"
            request.applymarker(pytest.mark.xfail(strict=True, reason=reason))

    @property
    def capabilities(self) -> Capabilities:
        """What this executor, configured with :attr:`options`, says it can do."""
        cls = type(self)
        known = cls.__dict__.get("_capabilities")  # never a base class's: options differ
        if known is None:
            with get_executor(self.executor, **self.options) as executor:
                known = cls._capabilities = executor.capabilities
        return known

    def require(self, capability: str) -> None:
        """Skip the check unless the executor declares ``capability``."""
        if not getattr(self.capabilities, capability):
            pytest.skip(f"the {self.executor!r} executor declares no {capability}")

    def run(self, targets: Any, **kwargs: Any) -> Any:
        """``dispatcher.run`` on a fresh executor made with :attr:`options`."""
        return run(targets, executor=self.executor, **self.options, **kwargs)

    @pytest.fixture
    def log(self, tmp_path: Path) -> str:
        """A directory for the marker files tasks leave (see ``tasks.logged``)."""
        path = tmp_path / "calls"
        path.mkdir()
        return str(path)

    @pytest.fixture
    def ex(self) -> Iterator[Executor]:
        """An executor kept across the runs of one check."""
        with get_executor(self.executor, **self.options) as executor:
            # Known from now on without opening a second executor, which some backends
            # (mpi) do not allow while this one is open.
            type(self)._capabilities = executor.capabilities
            yield executor
