"""Fault checks every executor must pass, organised by fault class.

Each check injects one fault that any backend can meet -- a task raising an odd
exception, a value that fails on the way back or is slow to unpickle, a bad timeout, work
abandoned by a run that stopped -- and requires what the contract promises: the node fails
with the user's exception (or :class:`~dispatcher.RemoteError` when it cannot travel), the
run ends, and the executor keeps serving the next run, and any other run on it. Every
check runs under a hard per-test timeout, so a hang fails instead of stalling. Checks
that need a capability the executor does not declare are skipped with that reason;
checks a backend is known to fail are listed in its test class (see
:class:`~dispatcher.testing.ExecutorHarness`).

Faults that only some backends can meet (killed or frozen workers, lost ranks) belong to
those backends' own tests.
"""

from __future__ import annotations

import functools
import math
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import anyio
import pytest

from .. import (
    DependencyError,
    DispatcherError,
    Executor,
    Op,
    RemoteError,
    SerializationError,
    TaskTimeoutError,
    get_executor,
    op,
)
from . import tasks
from ._harness import ExecutorHarness

__all__ = ["ExecutorFaults"]

T = TypeVar("T")

ODD_KINDS = [*tasks.ODD_EXCEPTIONS, "WeirdCause"]
"""What the odd-exception checks make a task raise (see :func:`tasks.raise_odd`)."""

BAD_TIMEOUTS = [float("nan"), 0, -1, "1"]

LONG = 300.0
"""How long a blocked task waits at most: a guard so none outlives its test for long."""

MEET = 30.0
"""How long tasks that must run at the same time wait for each other at most."""

_OUTCOMES = (pytest.fail.Exception, pytest.skip.Exception)
"""pytest's own exceptions (a per-test timeout is one): never taken for a run's."""


def _expected(kind: str) -> type[BaseException]:
    return ValueError if kind == "WeirdCause" else tasks.ODD_EXCEPTIONS[kind][0]


def _check_odd_error(kind: str, error: BaseException | None) -> None:
    """``error`` is what a task raising the odd exception ``kind`` must fail with."""
    expected = _expected(kind)
    if isinstance(error, RemoteError):
        assert expected.__name__ in error.type_name, (kind, error.type_name)
        return
    assert isinstance(error, expected), f"{kind}: the node failed with {error!r}"
    if kind == "WeirdCause":
        assert error.args == ("chained to a Weird",)


def _no_escape(call: Callable[[], T], what: str) -> T:
    """``call()``, turning an exception that escapes it into a test failure, so that a
    KeyboardInterrupt meant for a node cannot end the test session instead."""
    try:
        return call()
    except _OUTCOMES:
        raise  # the per-test timeout, a skip: pytest's own
    except BaseException as exc:
        pytest.fail(f"{what} raised {type(exc).__name__}: {exc!r} out of run()")


class _InThread:
    """``call()`` on a thread of its own (a run held up while the test goes on)."""

    def __init__(self, call: Callable[[], Any]) -> None:
        self._outcome: list[tuple[bool, Any]] = []
        self._thread = threading.Thread(target=self._run, args=(call,), daemon=True)
        self._thread.start()

    def _run(self, call: Callable[[], Any]) -> None:
        try:
            self._outcome.append((True, call()))
        except BaseException as exc:
            self._outcome.append((False, exc))

    @property
    def done(self) -> bool:
        return bool(self._outcome)

    def result(self) -> Any:
        """What ``call()`` returned (raising what it raised), once it is over."""
        self._thread.join()
        returned, value = self._outcome[0]
        if not returned:
            raise AssertionError(f"it raised {value!r}") from value
        return value


def _until(condition: Callable[[], bool]) -> None:
    """Wait until ``condition()`` holds (the per-test timeout ends a wait that is never
    over)."""
    while not condition():
        time.sleep(0.01)


class ExecutorFaults(ExecutorHarness):
    """The fault checks; :class:`~dispatcher.testing.ExecutorConformance` includes them."""

    # -- odd exceptions and values ----------------------------------------------------------

    @pytest.mark.timeout(60)
    @pytest.mark.parametrize("kind", ODD_KINDS)
    def test_odd_exception_fails_its_node(self, ex: Executor, kind: str) -> None:
        """A task raising any BaseException fails its node, and its dependents with a
        :class:`DependencyError` naming it; others run; the executor lives."""
        bad = op(tasks.raise_odd, label=f"raises-{kind}")(kind)
        after = Op(tasks.inc, bad)
        results = _no_escape(lambda: ex.run([bad, Op(tasks.inc, 1), after], throw=False), kind)
        _check_odd_error(kind, results[0].error)
        assert results[1].value == 2
        assert isinstance(results[2].error, DependencyError), results[2].error
        assert f"raises-{kind}" in str(results[2].error)
        assert _no_escape(lambda: ex.run(Op(tasks.inc, 2)), "the next run") == 3

    @pytest.mark.timeout(60)
    @pytest.mark.parametrize("kind", ODD_KINDS)
    def test_odd_exception_with_throw_is_raised(self, ex: Executor, kind: str) -> None:
        """With ``throw=True`` the run raises that exception; the executor lives."""
        bad = op(tasks.raise_odd, label=f"raises-{kind}")(kind)
        raised: BaseException | None = None
        try:
            ex.run(Op(tasks.inc, bad))
        except _OUTCOMES:
            raise
        except BaseException as exc:  # KeyboardInterrupt included: it is the expected one
            raised = exc
        assert raised is not None, f"a task raising {kind} did not fail the run"
        _check_odd_error(kind, raised)
        assert _no_escape(lambda: ex.run(Op(tasks.inc, 2)), "the next run") == 3

    @pytest.mark.timeout(60)
    def test_result_whose_unpickling_exits(self, ex: Executor) -> None:
        """A result that raises SystemExit when the caller unpickles it fails its node."""
        self.require("separate_processes")
        bad = op(tasks.make_exits_when_loaded, label="exits-when-loaded")()
        results = _no_escape(lambda: ex.run([bad, Op(tasks.inc, 1)], throw=False), "it")
        assert isinstance(results[0].error, (SerializationError, RemoteError)), results[0]
        assert results[1].value == 2
        assert _no_escape(lambda: ex.run(Op(tasks.inc, 2)), "the next run") == 3

    @pytest.mark.timeout(60)
    def test_argument_whose_unpickling_exits(self, ex: Executor) -> None:
        """An argument that raises SystemExit where it is unpickled fails its own node,
        not the worker or the message that carried it."""
        self.require("separate_processes")
        bad = op(tasks.identity, label="takes-exits-when-loaded")(tasks.ExitsWhenLoaded())
        results = _no_escape(lambda: ex.run([bad, Op(tasks.inc, 1)], throw=False), "it")
        assert isinstance(results[0].error, (SerializationError, RemoteError)), results[0]
        assert results[1].value == 2
        assert _no_escape(lambda: ex.run(Op(tasks.inc, 2)), "the next run") == 3

    @pytest.mark.timeout(60)
    @pytest.mark.parametrize(
        "exception",
        [SystemExit(7), GeneratorExit(), KeyboardInterrupt()],
        ids=["SystemExit", "GeneratorExit", "KeyboardInterrupt"],
    )
    def test_argument_whose_pickling_exits(self, ex: Executor, exception: BaseException) -> None:
        """An argument whose pickling raises a BaseException fails its own node with
        SerializationError naming what was raised; it does not escape ``run()`` (nor end
        a thread of the backend). A KeyboardInterrupt counts as the object's too: this
        check runs off the main thread, where no Ctrl-C lands."""
        self.require("separate_processes")
        bad = op(tasks.take, label="takes-exits-when-pickled")(tasks.ExitsWhenPickled(exception))

        def check() -> None:
            results = ex.run([bad, Op(tasks.inc, 1)], throw=False)
            assert isinstance(results[0].error, SerializationError), results[0]
            assert type(exception).__name__ in str(results[0].error)
            assert results[1].value == 2

        _InThread(lambda: _no_escape(check, "it")).result()
        assert _no_escape(lambda: ex.run(Op(tasks.inc, 2)), "the next run") == 3

    @pytest.mark.timeout(90)
    def test_input_whose_unpickling_exits_on_another_worker(self, ex: Executor, log: str) -> None:
        """A result that raises SystemExit when another worker unpickles it, as an input,
        fails the node that needs it -- or is made again where it is needed, by a backend
        that recomputes what cannot travel (needs two workers)."""
        self.require("separate_processes")
        made = [
            op(tasks.meet_then_make_exits_when_loaded, label=f"makes{i}")(log, "made", 2, MEET)
            for i in range(2)
        ]
        needs = op(tasks.kinds, label="needs-both")(*made)
        results = _no_escape(lambda: ex.run([needs, Op(tasks.inc, 1)], throw=False), "it")
        remade = results[0].error is None and results[0].value == ("ExitsWhenLoaded",) * 2
        assert remade or isinstance(results[0].error, (SerializationError, RemoteError)), results[0]
        assert results[1].value == 2
        assert _no_escape(lambda: ex.run(Op(tasks.inc, 2)), "the next run") == 3

    # -- values slow to unpickle -------------------------------------------------------------

    def _check_others_go_on(self, ex: Executor, log: str, held: str) -> None:
        """While ``held``'s value is being unpickled (and waits), other runs on ``ex``
        finish, and a task's timeout in another run still fires."""
        _until(lambda: tasks.calls(log, held + "-loading") == 1)
        assert _no_escape(lambda: ex.run(Op(tasks.inc, 1)), "another run") == 2
        # Runs a second (waiting for a gate that never opens), past its timeout.
        never = str(Path(log) / "never")
        late = op(tasks.blocked, label="late", timeout=0.2)(log, "late", never, 1.0)
        results = _no_escape(lambda: ex.run([late, Op(tasks.inc, 2)], throw=False), "it")
        assert isinstance(results[0].error, TaskTimeoutError), results[0]
        assert results[1].value == 3
        assert tasks.calls(log, held + "-loaded") == 0  # it was held all along
        if not self.capabilities.interrupts_running_tasks:
            # Its worker is kept until it returns: give it back before the next check.
            _until(lambda: tasks.calls(log, "late-finished") == 1)

    @pytest.mark.timeout(90)
    def test_a_result_slow_to_unpickle_holds_up_only_its_run(
        self, ex: Executor, log: str, tmp_path: Path
    ) -> None:
        """A result whose unpickling in the caller blocks holds up its own run, not the
        others on the executor, their reports or their deadlines."""
        self.require("separate_processes")
        gate = tmp_path / "gate"
        made = op(tasks.make_held_when_loaded, label="held")(log, "held", str(gate), LONG, "v")
        held = _InThread(lambda: ex.run(made))
        try:
            self._check_others_go_on(ex, log, "held")
            assert not held.done
        finally:
            gate.touch()
        assert held.result() == "v"

    @pytest.mark.timeout(90)
    def test_an_exception_slow_to_unpickle_holds_up_only_its_run(
        self, ex: Executor, log: str, tmp_path: Path
    ) -> None:
        """Likewise for a task's exception, which the caller unpickles too."""
        self.require("separate_processes")
        gate = tmp_path / "gate"
        fails = op(tasks.fail_held_when_loaded, label="held")(log, "held", str(gate), LONG, "m")
        held = _InThread(lambda: ex.run(fails, throw=False))
        try:
            self._check_others_go_on(ex, log, "held")
            assert not held.done
        finally:
            gate.touch()
        error = held.result().error
        assert isinstance(error, ValueError), error
        assert error.args == ("m",)

    @pytest.mark.timeout(90)
    def test_a_worker_lost_while_a_result_is_unpickled_is_replaced(
        self, ex: Executor, log: str, tmp_path: Path
    ) -> None:
        """While one run's result is being unpickled (and waits), a worker lost by
        another run is noticed and replaced, and that run finishes."""
        self.require("separate_processes")
        self.require("survives_worker_loss")
        gate = tmp_path / "gate"
        made = op(tasks.make_held_when_loaded, label="held")(log, "held", str(gate), LONG, "v")
        held = _InThread(lambda: ex.run(made))
        try:
            _until(lambda: tasks.calls(log, "held-loading") == 1)
            dies = op(tasks.die_once, label="dies")(log, "dies", "survived")
            assert _no_escape(lambda: ex.run(dies), "another run") == "survived"
            assert not held.done
        finally:
            gate.touch()
        assert held.result() == "v"

    # -- timeouts -----------------------------------------------------------------------------

    @pytest.mark.timeout(60)
    @pytest.mark.parametrize("bad", BAD_TIMEOUTS, ids=repr)
    def test_bad_timeout_is_refused_at_the_call(self, bad: Any) -> None:
        with pytest.raises(ValueError, match="timeout"):
            get_executor(self.executor, **{**self.options, "timeout": bad})
        with pytest.raises(ValueError, match="timeout"):
            self.run(Op(tasks.inc, 1), timeout=bad)
        with pytest.raises(ValueError, match="timeout"):
            op(tasks.inc, timeout=bad)

    @pytest.mark.timeout(60)
    def test_infinite_timeout_is_no_timeout(self) -> None:
        # One executor at a time: some backends (mpi) allow no more.
        with get_executor(self.executor, **{**self.options, "timeout": math.inf}) as ex:
            assert ex.run(Op(tasks.inc, 1)) == 2
            assert ex.run(op(tasks.inc, timeout=math.inf)(1)) == 2
            assert ex.run(Op(tasks.inc, 2)) == 3  # the executor still serves
        # A node's own inf beats the executor's limit.
        unlimited = op(tasks.sleep_then, label="unlimited", timeout=math.inf)(0.3, "done")
        assert self.run(unlimited, timeout=0.05) == "done"

    @pytest.mark.timeout(60)
    @pytest.mark.parametrize("seconds", [1e10, 1e308])
    def test_a_timeout_years_long_is_a_timeout_never_reached(
        self, ex: Executor, log: str, tmp_path: Path, seconds: float
    ) -> None:
        """A finite timeout past what a clock or a wait can hold (``threading.TIMEOUT_MAX``,
        ``time_t``) is valid: the task runs as if it had none, and a timed one nearer its
        deadline in the same run still times out."""
        gate = tmp_path / "gate"
        long = [op(tasks.sleep_then, label=f"long{i}", timeout=seconds)(0.05, i) for i in range(3)]
        # Returns by itself after a second (a task in the caller's thread cannot be
        # stopped), or as soon as the gate opens.
        short = op(tasks.blocked, label="short", timeout=0.2)(log, "short", str(gate), 1.0)
        try:
            results = ex.run([*long, short], throw=False)
        finally:
            gate.touch()
        assert [r.value for r in results[:3]] == [0, 1, 2], results
        assert isinstance(results[3].error, TaskTimeoutError), results[3]
        if not self.capabilities.interrupts_running_tasks:
            # Its worker comes back when it returns: wait, so that the next check has it.
            _until(lambda: tasks.calls(log, "short-finished") > 0)

    # -- abandoned work -----------------------------------------------------------------------

    def _require_abandoning(self) -> int:
        """How many tasks the next run must get running at once while abandoned work is
        still blocked: every worker's worth (two) where the backend can take a worker back
        from a running task (``interrupts_running_tasks``: it stops the task, or stops and
        replaces its worker); one where it cannot (an MPI rank or a dask thread is kept,
        not killed), so the next run must at least go on with the workers that are free
        instead of waiting."""
        caps = self.capabilities
        if caps.interrupts_running_tasks:
            return 2
        if caps.separate_processes:
            return 1
        pytest.skip(
            f"the {self.executor!r} executor declares neither interrupts_running_tasks nor "
            f"separate_processes: a running task keeps its worker"
        )

    def _meet(self, log: str, count: int) -> list[Op]:
        """``count`` tasks that only finish while all of them run at the same time."""
        return [op(tasks.meet, label=f"meet{i}")(log, "meet", count, MEET, i) for i in range(count)]

    @pytest.mark.timeout(120)
    def test_work_abandoned_by_fail_fast_does_not_hold_the_next_run(
        self, ex: Executor, log: str, tmp_path: Path
    ) -> None:
        """After fail-fast, the next run on the same executor gets every worker, while
        the task the failed run abandoned is still blocked (needs two workers)."""
        together = self._require_abandoning()
        gate = tmp_path / "gate"
        blocker = op(tasks.blocked, label="blocked")(log, "blocked", str(gate), LONG)
        failing = op(tasks.fail_once_started, label="fails")(log, "blocked", MEET, "first")
        try:
            with pytest.raises(ValueError, match="first"):
                ex.run([blocker, failing])
            assert ex.run(self._meet(log, together)) == list(range(together))
            assert tasks.calls(log, "blocked-finished") == 0  # still held at the gate
        finally:
            gate.touch()

    @pytest.mark.timeout(120)
    def test_work_abandoned_at_its_timeout_does_not_hold_the_next_run(
        self, ex: Executor, log: str, tmp_path: Path
    ) -> None:
        """Tasks past their timeout give back their workers at once, while still
        blocked (needs two workers)."""
        self.require("interrupts_running_tasks")
        gate = tmp_path / "gate"
        blockers = [
            op(tasks.blocked, label=f"blocked{i}", timeout=0.5)(log, "blocked", str(gate), LONG)
            for i in range(3)
        ]
        try:
            results = ex.run(blockers, throw=False)
            assert all(isinstance(r.error, TaskTimeoutError) for r in results), results
            assert ex.run(self._meet(log, 2)) == [0, 1]
            assert tasks.calls(log, "blocked-finished") == 0
        finally:
            gate.touch()

    @pytest.mark.timeout(120)
    def test_work_abandoned_by_a_cancelled_arun_does_not_hold_the_next_run(
        self, ex: Executor, log: str, tmp_path: Path
    ) -> None:
        """Cancelling ``arun`` (the notebook's "interrupt the cell") while tasks run:
        the next run gets every worker while they are still blocked (needs two
        workers)."""
        together = self._require_abandoning()
        gate = tmp_path / "gate"
        # More than every worker where workers are taken back; one where they are not, so
        # that a worker is left for the next run.
        blockers = [
            op(tasks.blocked, label=f"blocked{i}")(log, "blocked", str(gate), LONG)
            for i in range(3 if together == 2 else 1)
        ]

        async def interrupted() -> None:
            async with anyio.create_task_group() as group:
                group.start_soon(functools.partial(ex.arun, blockers))
                while tasks.calls(log, "blocked-started") == 0:
                    await anyio.sleep(0.01)
                group.cancel_scope.cancel()

        try:
            anyio.run(interrupted)
            assert ex.run(self._meet(log, together)) == list(range(together))
            assert tasks.calls(log, "blocked-finished") == 0
        finally:
            gate.touch()

    @pytest.mark.timeout(120)
    def test_when_every_worker_is_held_by_work_given_up_on_runs_end(
        self, ex: Executor, log: str, tmp_path: Path
    ) -> None:
        """More tasks than the executor has workers run past their timeouts and never
        return (while the gate is shut). No run waits for ever: each gets a worker back
        (a transport that can stop a task or restart its worker) or fails with "no
        capacity left", naming a task that holds one; once those tasks return, runs go
        on as before."""
        self._require_abandoning()
        gate = tmp_path / "gate"
        held = [
            op(tasks.blocked, label=f"held{i}", timeout=0.5)(log, "blocked", str(gate), LONG)
            for i in range(8)
        ]
        try:
            for result in ex.run(held, throw=False):
                if not isinstance(result.error, TaskTimeoutError):
                    assert "no capacity left" in str(result.error), result
            outcome = _next_run(ex)
            assert outcome == "2" or "'held" in outcome, outcome
        finally:
            gate.touch()
        deadline = time.monotonic() + 60
        while (outcome := _next_run(ex)) != "2":  # a worker is back once its task returns
            assert time.monotonic() < deadline, f"no worker came back: {outcome}"
            time.sleep(0.2)

    # -- closing ------------------------------------------------------------------------------

    @pytest.mark.timeout(60)
    def test_closing_ends_the_runs_going_on(self, ex: Executor, log: str, tmp_path: Path) -> None:
        """``close()`` from another thread while runs wait for their tasks: each run ends
        with an error saying the executor was closed, instead of waiting for ever for
        workers that are gone. Where tasks run in the caller's thread (nothing can stop
        them there), a run may instead finish once its task returns."""
        gate = tmp_path / "gate"

        def blocked(i: int) -> list[Op]:  # two tasks: neither is called by the run's own driver
            return [op(tasks.blocked)(log, f"b{i}", str(gate), LONG) for _ in range(2)]

        runs = [_InThread(functools.partial(ex.run, blocked(i))) for i in range(2)]
        try:
            _until(lambda: tasks.calls(log, "b0-started") + tasks.calls(log, "b1-started") > 0)
            ex.close()
            _until(lambda: all(going.done for going in runs) or not self._stopped_by_close())
        finally:
            gate.touch()
        for i, going in enumerate(runs):
            try:
                value = going.result()
            except AssertionError as raised:
                error = raised.__cause__
                assert isinstance(error, DispatcherError), error
                assert "closed" in str(error)
            else:
                assert not self._stopped_by_close(), f"run {i} went on after close: {value!r}"
                assert value == [f"b{i}", f"b{i}"]

    def _stopped_by_close(self) -> bool:
        """Does closing stop a run whose task is running (rather than only once it returns)?"""
        caps = self.capabilities
        return caps.interrupts_running_tasks or caps.separate_processes


def _next_run(ex: Executor) -> str:
    """What a one-task run gives: its value ("2"), or, if no worker can take it, the "no
    capacity left" error's message."""
    try:
        return repr(ex.run(Op(tasks.inc, 1)))
    except DispatcherError as error:
        if "no capacity left" not in str(error):
            raise
        return str(error)
