"""The behavioural contract every executor must meet, as a pytest test class.

A backend proves itself by subclassing :class:`ExecutorConformance` in its own tests::

    from dispatcher.testing import ExecutorConformance

    class TestMyBackend(ExecutorConformance):
        executor = "mine"
        options = {"workers": 2}

Checks that need something the executor's :class:`~dispatcher.transport.Capabilities`
say it cannot do are skipped with that reason. Checks a backend is known to fail today
are listed in its test class (``known_faults``, ``known_hangs``; see
:class:`~dispatcher.testing.ExecutorHarness`).
"""

from __future__ import annotations

import collections
import logging
import re
import threading
import traceback
from typing import Any

import pytest

from .. import (
    CollectNode,
    DataNode,
    DependencyError,
    DispatchGraph,
    Executor,
    IndexNode,
    Op,
    RemoteError,
    Result,
    SerializationError,
    TaskTimeoutError,
    WorkerLostError,
    get_executor,
    hookimpl,
    op,
    run,
)
from . import tasks
from ._concurrent import ExecutorConcurrentRuns
from ._faults import ExecutorFaults
from ._pending import ExecutorPendingInputs
from ._taking_back import ExecutorTakingBack

__all__ = ["ExecutorConformance", "Recorder"]

Point = collections.namedtuple("Point", "x y")

# A traceback line naming a file of dispatcher's code (core's or a backend's; these tests and
# their tasks are the user's code).
_OWN_FRAME = re.compile(r'File ".*[/\\]dispatcher(_mp|_mpi|_dask)?[/\\](?!testing[/\\])')


class Recorder:
    """An observer plugin that keeps every hook call, in order."""

    def __init__(self) -> None:
        self.events: list[tuple[Any, ...]] = []
        self._lock = threading.Lock()

    def _add(self, *event: Any) -> None:
        with self._lock:
            self.events.append(event)

    @hookimpl
    def dispatcher_run_started(self, graph: DispatchGraph) -> None:
        self._add("run_started", len(graph))

    @hookimpl
    def dispatcher_run_finished(self, error: BaseException | None) -> None:
        self._add("run_finished", error)

    @hookimpl
    def dispatcher_task_started(self, node: Any, worker: str) -> None:
        self._add("started", node, worker)

    @hookimpl
    def dispatcher_task_finished(self, node: Any, worker: str, duration: float) -> None:
        self._add("finished", node, worker, duration)

    @hookimpl
    def dispatcher_task_failed(self, node: Any, error: BaseException) -> None:
        self._add("failed", node, error)

    @hookimpl
    def dispatcher_task_retried(self, node: Any, error: BaseException, attempt: int) -> None:
        self._add("retried", node, error, attempt)

    def of(self, kind: str) -> list[tuple[Any, ...]]:
        """The recorded calls of one kind (``"started"``, ``"finished"``, ``"failed"``,
        ``"retried"``, ``"run_started"``, ``"run_finished"``), each a tuple starting with it."""
        return [e for e in self.events if e[0] == kind]


class ExecutorConformance(
    ExecutorFaults, ExecutorPendingInputs, ExecutorTakingBack, ExecutorConcurrentRuns
):
    """Subclass and set :attr:`executor` (a registered name) and :attr:`options`.

    The fault checks of :class:`~dispatcher.testing.ExecutorFaults` come with it, and
    the checks of the pending-inputs and taking-back contracts for an executor that
    declares them; list the checks a backend is known to fail in ``known_faults`` /
    ``known_hangs``.
    """

    # -- nodes and argument substitution -------------------------------------------------

    def test_chain_and_diamond(self) -> None:
        a = Op(tasks.inc, 1)
        b = Op(tasks.double, a)
        c = Op(tasks.inc, a)
        d = Op(tasks.add, b, c)
        assert self.run(d) == 7

    def test_nested_dependencies(self) -> None:
        a, b, c = Op(tasks.identity, 1), Op(tasks.identity, 2), Op(tasks.identity, 3)
        node = Op(tasks.describe, [a, (b, {"k": [c]})], Point(a, b), key={"x": {c}, "y": (a,)})
        args, kwargs = self.run(node)
        assert args == ([1, (2, {"k": [3]})], Point(1, 2))
        assert kwargs == {"key": {"x": {3}, "y": (1,)}}
        assert self.run(Op(tasks.kinds, [a], (a,), {"k": a}, {a}, frozenset([a]), Point(a, a))) == (
            "list",
            "tuple",
            "dict",
            "set",
            "frozenset",
            "Point",
        )

    def test_data_node(self) -> None:
        data = DataNode({"n": 5})
        assert self.run(data) == {"n": 5}
        assert self.run(Op(tasks.identity, data)) == {"n": 5}

    def test_index_node(self) -> None:
        pair = Op(tasks.pair, 10, 20)
        assert self.run([IndexNode(pair, 0), pair[1]]) == [10, 20]
        first, second = op(tasks.pair, nout=2)(3, 4)
        assert self.run(Op(tasks.add, first, second)) == 7

    def test_collect_node(self) -> None:
        parts = [Op(tasks.inc, i) for i in range(5)]
        collected = CollectNode([*parts, parts[0]])
        assert self.run(collected) == [1, 2, 3, 4, 5, 1]
        assert self.run(Op(sum, collected)) == 16

    def test_kwargs_and_constants(self) -> None:
        a = Op(tasks.inc, 1)
        assert self.run(Op(tasks.describe, 5, a, flag=True, other=a)) == (
            (5, 2),
            {"flag": True, "other": 2},
        )

    # -- results ---------------------------------------------------------------------------

    def test_result_shapes(self) -> None:
        a, b = Op(tasks.inc, 1), Op(tasks.inc, 2)
        assert self.run(a) == 2
        assert self.run([a, b]) == [2, 3]
        assert self.run((a, b)) == (2, 3)
        assert self.run({"a": a, "b": b}) == {"a": 2, "b": 3}
        top = Op(tasks.add, a, b)
        graph = DispatchGraph([top, Op(tasks.double, b)])
        assert self.run(graph) == [5, 6]
        assert self.run([a, a, b]) == [2, 2, 3]

    def test_an_awaitable_result_is_awaited(self) -> None:
        """Whatever a task's function returns that is awaitable is awaited, a plain
        function's coroutine as a coroutine function's: its result is the node's value."""
        lone = Op(tasks.returns_a_coroutine, 1)
        chain = Op(tasks.inc, Op(tasks.returns_a_coroutine, Op(tasks.inc, 19)))
        assert self.run(lone) == 2
        assert self.run([lone, chain, Op(tasks.async_double, 3)]) == [2, 41, 6]
        # Generators are awaitable one by one (only @types.coroutine's): the second, of a
        # type seen before, is asked too.
        legacy = [Op(tasks.returns_a_generator_coroutine, x) for x in (1, 2, 3)]
        assert self.run(legacy) == [2, 4, 6]

    def test_node_named_twice_runs_once(self, log: str) -> None:
        node = Op(tasks.logged, log, "twice", 9)
        assert self.run([node, node, Op(tasks.inc, node)]) == [9, 9, 10]
        assert tasks.calls(log, "twice") == 1

    def test_each_node_runs_once(self, log: str) -> None:
        root = Op(tasks.logged, log, "root", 1)
        middles = [Op(tasks.logged, log, f"mid{i}", root) for i in range(4)]
        top = Op(tasks.total, *middles)
        assert self.run([top, Op(tasks.total, *middles, root)]) == [4, 5]
        assert tasks.calls(log, "root") == 1
        assert all(tasks.calls(log, f"mid{i}") == 1 for i in range(4))

    def test_only_needed_nodes_run(self, log: str) -> None:
        shared = Op(tasks.logged, log, "shared", 1)
        wanted = Op(tasks.logged, log, "wanted", shared)
        Op(tasks.logged, log, "unwanted", shared)  # built, never asked for
        assert self.run(wanted) == 1
        assert tasks.calls(log, "unwanted") == 0
        assert tasks.calls(log, "wanted") == 1

    def test_inputs_substitute_values(self, log: str) -> None:
        expensive = Op(tasks.logged, log, "expensive", 1)
        middle = Op(tasks.logged, log, "middle", expensive)
        top = Op(tasks.add, middle, 100)
        assert self.run(top, inputs={middle: 5}) == 105
        assert tasks.calls(log, "expensive") == 0
        assert tasks.calls(log, "middle") == 0
        assert self.run([middle, top], inputs={middle: 7}) == [7, 107]
        results = self.run(middle, inputs={middle: 3}, throw=False)
        assert results.ok
        assert results.value == 3

    def test_inputs_key_not_in_graph(self) -> None:
        stranger = Op(tasks.inc, 1)
        with pytest.raises(ValueError, match="not among the targets"):
            self.run(Op(tasks.inc, 2), inputs={stranger: 1})

    # -- errors ----------------------------------------------------------------------------

    def test_throw_raises_the_original_exception(self) -> None:
        bad = op(tasks.fail_with, label="the-bad-one")(7, "seven")
        with pytest.raises(tasks.TaskFailure) as info:
            self.run(Op(tasks.inc, bad))
        assert info.value.args == (7, "seven")
        assert any("the-bad-one" in note for note in getattr(info.value, "__notes__", []))

    def test_throw_keeps_a_chained_cause(self) -> None:
        with pytest.raises(RuntimeError, match="outer") as info:
            self.run(Op(tasks.fail_chained, "outer"))
        assert isinstance(info.value.__cause__, KeyError)

    def test_traceback_goes_from_the_call_to_the_users_code(
        self, caplog: pytest.LogCaptureFixture
    ) -> None:
        # Defined here, not importable by name: shipped by value to other processes.
        def parse(text: str) -> int:
            return int(text)  # the line the traceback shows

        caplog.set_level(logging.DEBUG, logger="dispatcher.task.traceback")
        with pytest.raises(ValueError) as info:
            self.run(Op(parse, "b.txt"))
        shown = "".join(traceback.format_exception(info.value))
        assert f'File "{__file__}", line' in shown, shown
        assert "return int(text)  # the line the traceback shows" in shown, shown
        # Of dispatcher's code, only the call the user made: not the frames that called the
        # task, here or in a worker.
        assert len(_OWN_FRAME.findall(shown)) == 1, shown
        assert re.search(r"_api\.py\", line \d+, in run\n", shown), shown
        # They are kept at DEBUG.
        assert any(_OWN_FRAME.search(r.getMessage()) for r in caplog.records), caplog.text
        (result,) = self.run([Op(parse, "c.txt")], throw=False)
        kept = "".join(traceback.format_exception(result.error))
        assert "return int(text)  # the line the traceback shows" in kept, kept
        assert not _OWN_FRAME.findall(kept), kept

    def test_a_failure_names_the_node_with_its_arguments(self) -> None:
        # One of many nodes with the same label: the arguments say which.
        parsed = [
            op(tasks.fail if name == "b.txt" else tasks.take, label="parse")(name)
            for name in ["a.txt", "b.txt", "c.txt"]
        ]
        counted = op(tasks.take, label="count")(parsed[1])
        with pytest.raises(ValueError) as info:
            self.run([*parsed, counted])
        notes = "\n".join(getattr(info.value, "__notes__", []))
        assert "dispatcher: raised by node parse('b.txt') on worker " in notes, notes
        if self.capabilities.separate_processes:
            assert "Traceback from the worker that ran parse('b.txt'):" in notes, notes
        (skipped,) = self.run([counted], throw=False)
        assert str(skipped.error) == (
            "count(parse('b.txt')) did not run because its ancestor parse('b.txt') failed: "
            "ValueError: b.txt"
        )

    def test_throw_false_gives_results(self) -> None:
        good = Op(tasks.inc, 1)
        bad = op(tasks.fail, label="bad")("boom")
        after = op(tasks.add, label="after")(bad, good)
        later = op(tasks.inc, label="later")(after)
        results = self.run({"good": good, "bad": bad, "later": later}, throw=False)
        assert all(isinstance(r, Result) for r in results.values())
        assert results["good"].ok
        assert results["good"].value == 2
        assert results["good"].unwrap() == 2
        assert not results["bad"].ok
        assert results["bad"].value is None
        assert isinstance(results["bad"].error, ValueError)
        error = results["later"].error
        assert isinstance(error, DependencyError)
        assert error.node is bad
        assert error.cause is results["bad"].error
        assert error.__cause__ is error.cause
        assert "later" in str(error)
        assert "bad" in str(error)
        with pytest.raises(DependencyError):
            results["later"].unwrap()

    def test_failed_dependency_never_hangs_collect_or_index(self) -> None:
        bad = Op(tasks.fail, "boom")
        good = Op(tasks.inc, 1)
        collected = CollectNode([good, bad])
        indexed = IndexNode(bad, 0)
        results = self.run([collected, indexed, Op(tasks.identity, collected)], throw=False)
        for result in results:
            assert isinstance(result.error, DependencyError)
            assert result.error.node is bad
        with pytest.raises(ValueError, match="boom"):
            self.run([collected, indexed])

    def test_everything_that_can_run_runs(self, log: str) -> None:
        bad = Op(tasks.fail, "boom")
        independent = [Op(tasks.logged, log, f"free{i}", i) for i in range(6)]
        results = self.run([bad, *independent], throw=False)
        assert [r.value for r in results[1:]] == list(range(6))
        assert all(tasks.calls(log, f"free{i}") == 1 for i in range(6))

    @pytest.mark.timeout(60)
    def test_fail_fast_does_not_wait(self, log: str) -> None:
        bad = Op(tasks.fail, "first")
        slow = Op(tasks.sleep_then, 120, "slow")
        downstream = Op(tasks.logged, log, "downstream", bad)
        with pytest.raises(ValueError, match="first"):
            self.run([bad, slow, downstream])
        assert tasks.calls(log, "downstream") == 0

    def test_retry_on(self, log: str) -> None:
        flaky = op(tasks.flaky, label="flaky")(log, "flaky", 2, "finally")
        recorder = Recorder()
        assert self.run(flaky, retry_on=ValueError, retries=2, plugins=[recorder]) == "finally"
        assert [e[3] for e in recorder.of("retried")] == [2, 3]
        with pytest.raises(ValueError):
            self.run(Op(tasks.flaky, log, "hopeless", 5, 0), retry_on=ValueError, retries=1)
        assert tasks.calls(log, "hopeless") == 2

    def test_timeout(self) -> None:
        interrupts = self.capabilities.interrupts_running_tasks
        seconds = 60 if interrupts else 0.5
        slow = op(tasks.sleep_then, label="sleepy", timeout=0.2)(seconds, "late")
        with pytest.raises(TaskTimeoutError) as info:
            self.run(slow)
        assert isinstance(info.value, TimeoutError)
        assert info.value.node is slow
        fast = op(tasks.sleep_then, timeout=30)(0, "in time")
        assert self.run(fast) == "in time"
        results = self.run(
            [Op(tasks.sleep_then, seconds, "late"), Op(tasks.inc, 1)], timeout=0.2, throw=False
        )
        assert isinstance(results[0].error, TaskTimeoutError)
        assert results[1].value == 2

    def test_a_timeout_is_retried_when_retry_on_names_it(self, log: str) -> None:
        interrupts = self.capabilities.interrupts_running_tasks
        seconds = 60 if interrupts else 0.6
        hangs = op(tasks.hangs_once, label="hangs", timeout=0.3)(log, "hangs", seconds, "again")
        assert self.run(hangs, retry_on=TaskTimeoutError, retries=1) == "again"
        assert tasks.calls(log, "hangs") == 2
        # Exception names what a function raises, not a wait for a hung one: not retried.
        stuck = op(tasks.hangs_once, timeout=0.3)(log, "stuck", seconds, "again")
        with pytest.raises(TaskTimeoutError):
            self.run(stuck, retry_on=Exception, retries=1)
        assert tasks.calls(log, "stuck") == 1

    def test_unknown_option(self) -> None:
        with pytest.raises(TypeError, match="retries"):
            get_executor(self.executor, **self.options, not_an_option=1)

    # -- memory ----------------------------------------------------------------------------

    def test_intermediates_are_released(self) -> None:
        node = Op(tasks.tracked_start)
        for _ in range(40):
            node = Op(tasks.tracked_step, node)
        most = self.run(Op(tasks.tracked_most, node))
        assert most <= 4, f"{most} intermediate results were alive at once in a chain"

    # -- executors -------------------------------------------------------------------------

    def test_executor_reuse_across_runs(self, ex: Executor) -> None:
        a = Op(tasks.inc, 1)
        assert ex.run(a) == 2
        with pytest.raises(ValueError):
            ex.run(Op(tasks.fail, "once"))
        assert ex.run(Op(tasks.double, a)) == 4
        assert ex.run([Op(tasks.inc, i) for i in range(20)]) == list(range(1, 21))

    def test_instance_rejects_options(self, ex: Executor) -> None:
        with pytest.raises(TypeError):
            run(Op(tasks.inc, 1), executor=ex, retries=1)

    def test_closed_executor_refuses(self) -> None:
        executor = get_executor(self.executor, **self.options)
        executor.close()
        executor.close()
        with pytest.raises(Exception, match="closed"):
            executor.run(Op(tasks.inc, 1))

    # -- hooks -----------------------------------------------------------------------------

    def test_hooks_fire_for_every_node(self) -> None:
        data = DataNode(1)
        a = Op(tasks.inc, data)
        pair = Op(tasks.pair, a, a)
        first = pair[0]
        both = CollectNode([first, a])
        recorder = Recorder()
        assert self.run(both, plugins=[recorder]) == [2, 2]
        started = [e[1] for e in recorder.of("started")]
        finished = [e[1] for e in recorder.of("finished")]
        assert sorted(map(id, started)) == sorted(map(id, [data, a, pair, first, both]))
        assert sorted(map(id, finished)) == sorted(map(id, started))
        for node in started:
            kinds = [e[0] for e in recorder.events if len(e) > 1 and e[1] is node]
            assert kinds == ["started", "finished"]
        assert recorder.events[0] == ("run_started", 5)
        assert recorder.events[-1] == ("run_finished", None)
        assert all(isinstance(e[2], str) and e[2] for e in recorder.of("started"))

    def test_hooks_on_failure(self) -> None:
        bad = Op(tasks.fail, "boom")
        skipped = Op(tasks.inc, bad)
        recorder = Recorder()
        self.run(skipped, throw=False, plugins=[recorder])
        failed = {id(e[1]): e[2] for e in recorder.of("failed")}
        assert isinstance(failed[id(bad)], ValueError)
        assert isinstance(failed[id(skipped)], DependencyError)
        recorder = Recorder()
        with pytest.raises(ValueError):
            self.run(skipped, plugins=[recorder])
        assert isinstance(recorder.events[-1][1], ValueError)

    def test_observer_errors_do_not_fail_the_run(self) -> None:
        class Broken:
            @hookimpl
            def dispatcher_task_finished(self) -> None:
                raise RuntimeError("observer bug")

        assert self.run(Op(tasks.inc, 1), plugins=[Broken()]) == 2

    # -- across processes --------------------------------------------------------------------

    def test_lambdas_and_closures(self) -> None:
        offset = 10
        node = Op(lambda x: x + offset, Op(tasks.inc, 1))
        assert self.run(node) == 12

    def test_unpicklable_argument(self) -> None:
        self.require("separate_processes")
        node = op(tasks.take, label="takes-a-lock")(threading.Lock())
        with pytest.raises(SerializationError) as info:
            self.run(node)
        assert "lock" in str(info.value)
        assert "takes-a-lock" in str(info.value)
        # It failed here, on its way to a worker: the note says so.
        (note,) = [n for n in info.value.__notes__ if n.startswith("dispatcher: raised by")]
        assert " in the caller, sending it to worker " in note, note
        # The message says it all: none of dispatcher's or pickle's frames but the call.
        shown = "".join(traceback.format_exception(info.value))
        assert len(_OWN_FRAME.findall(shown)) == 1, shown
        assert "pickle.py" not in shown, shown
        assert self.run(Op(tasks.inc, 1)) == 2

    def test_unpicklable_result(self) -> None:
        self.require("separate_processes")
        node = op(tasks.make_unpicklable, label="makes-trouble")()
        with pytest.raises(SerializationError, match="makes-trouble"):
            self.run(node)

    def test_unpicklable_exception(self) -> None:
        self.require("separate_processes")
        with pytest.raises(RemoteError) as info:
            self.run(Op(tasks.fail_unpicklable, "deep trouble"))
        assert "UnpicklableError" in info.value.type_name
        assert "deep trouble" in info.value.message
        assert "fail_unpicklable" in info.value.traceback_text

    @pytest.mark.timeout(120)
    def test_worker_loss_is_survived(self, log: str) -> None:
        self.require("survives_worker_loss")
        before = Op(tasks.inc, 1)
        crash = Op(tasks.die_once, log, "crash", before)
        assert self.run(Op(tasks.inc, crash), retries=1) == 3

    @pytest.mark.timeout(120)
    def test_worker_loss_beyond_retries(self, log: str) -> None:
        self.require("survives_worker_loss")
        crash = op(tasks.die_once, label="crasher")(log, "crash0", 1)
        with pytest.raises(WorkerLostError) as info:
            self.run(crash, retries=0)
        assert info.value.node is crash
