"""The async executor: coroutines, threads, loops already running, nesting."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import multiprocessing
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import anyio
import pytest

from dispatcher import (
    DependencyError,
    DispatcherError,
    Executor,
    Op,
    Result,
    TaskTimeoutError,
    _driver,
    arun,
    get_executor,
    hookimpl,
    op,
    run,
)
from dispatcher._executor import PLANNED_ASIDE
from dispatcher._loop import in_event_loop
from dispatcher.testing import tasks

BACKENDS = ["asyncio", "trio"]


async def async_inc(x: int) -> int:
    await anyio.sleep(0)
    return x + 1


async def meet(barrier_name: str, x: int) -> int:
    """Only returns once ``needed`` coroutines are waiting together: proves concurrency."""
    event = BARRIERS[barrier_name]
    event["count"] += 1
    if event["count"] == event["needed"]:
        event["event"].set()
    await event["event"].wait()
    return x


BARRIERS: dict[str, dict[str, object]] = {}


@pytest.mark.parametrize("backend", BACKENDS)
def test_coroutines_run_concurrently(backend: str) -> None:
    async def main() -> list[int]:
        BARRIERS["b"] = {"count": 0, "needed": 5, "event": anyio.Event()}
        nodes = [Op(meet, "b", i) for i in range(5)]
        return await arun(nodes, executor="async", threads=0)  # type: ignore[no-any-return]

    assert anyio.run(main, backend=backend) == list(range(5))


@pytest.mark.parametrize("backend", BACKENDS)
def test_arun_inside_a_running_program(backend: str) -> None:
    async def main() -> int:
        node = Op(async_inc, Op(tasks.inc, Op(async_inc, 1)))
        return await arun(node)  # type: ignore[no-any-return]

    assert anyio.run(main, backend=backend) == 4


@pytest.mark.parametrize("threads", [0, 2])
def test_plain_and_coroutine_nodes_mix(threads: int) -> None:
    node = Op(tasks.add, Op(async_inc, 1), Op(tasks.inc, 1))
    assert run(node, executor="async", threads=threads) == 4


@pytest.mark.parametrize(
    ("executor", "options"), [("sync", {}), ("async", {"threads": 0}), ("async", {"threads": 2})]
)
def test_a_chain_alternating_plain_and_coroutine_nodes(
    executor: str, options: dict[str, int]
) -> None:
    # Plain results made in the caller feed coroutines and the other way round.
    node = Op(tasks.inc, 0)
    for i in range(20):
        node = Op(async_inc if i % 2 else tasks.inc, node)
    side = Op(tasks.add, node, Op(async_inc, node))
    assert run([node, side], executor=executor, **options) == [21, 43]


def test_threads_limit_concurrency() -> None:
    active = 0
    most = 0
    lock = threading.Lock()

    def busy(x: int) -> int:
        nonlocal active, most
        with lock:
            active += 1
            most = max(most, active)
        threading.Event().wait(0.02)
        with lock:
            active -= 1
        return x

    assert run([Op(busy, i) for i in range(12)], executor="async", threads=3) == list(range(12))
    assert most <= 3


class Ticker:
    """A task of the user's on the loop, counting the turns it gets (:attr:`ticks`)."""

    def __init__(self) -> None:
        self.ticks = 0
        self._running = True

    async def _tick(self) -> None:
        while self._running:
            self.ticks += 1
            await anyio.sleep(0)

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[Ticker]:
        async with anyio.create_task_group() as group:
            group.start_soon(self._tick)
            await anyio.sleep(0)
            try:
                yield self
            finally:
                self._running = False


class Started:
    """The user's ticks counted when the run started (``run_started``: its plan made)."""

    def __init__(self, ticks: Callable[[], int]) -> None:
        self.ticks = ticks
        self.at: int | None = None

    @hookimpl
    def dispatcher_run_started(self) -> None:
        self.at = self.ticks()


@pytest.mark.timeout(60)
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("threads", [0, 6])
def test_arun_gives_the_loop_turns_while_its_run_progresses(backend: str, threads: int) -> None:
    # 30,000 calls of a microsecond: a run that never waits for anything, so only turns
    # the driver gives let the loop's other tasks (the user's) run meanwhile.
    chain = Op(tasks.inc, 0)
    for _ in range(29_999):
        chain = Op(tasks.inc, chain)

    async def main() -> tuple[int, int]:
        with get_executor("async", threads=threads) as ex:
            await ex.arun(chain)  # (with threads, calls proven tiny run on the loop)
            async with Ticker().running() as ticker:
                started = Started(lambda: ticker.ticks)  # (planned aside, in a thread)
                value = await ex.arun(chain, plugins=[started])
                assert started.at is not None
                return value, ticker.ticks - started.at

    value, during = anyio.run(main, backend=backend)
    assert value == 30_000
    assert during >= 2


@pytest.mark.timeout(60)
@pytest.mark.parametrize("backend", BACKENDS)
def test_arun_gives_the_loop_turns_while_it_plans_a_large_graph(backend: str) -> None:
    chain = Op(tasks.inc, 0)
    for _ in range(99_999):
        chain = Op(tasks.inc, chain)

    async def main() -> tuple[int, int | None]:
        with get_executor("async", threads=0) as ex:
            async with Ticker().running() as ticker:
                started = Started(lambda: ticker.ticks)
                before = ticker.ticks
                value = await ex.arun(chain, plugins=[started])
        return value, None if started.at is None else started.at - before

    value, planning = anyio.run(main, backend=backend)
    assert value == 100_000
    assert planning is not None
    assert planning >= 2


_counted: list[int] = []


def _counted_inc(x: int) -> int:
    _counted.append(x)
    return x + 1


class CancelsAfter:
    """Cancels ``scope`` once ``count`` tasks have finished: from the run's loop, where
    observers are called, so the cancellation waits for the driver's next turn."""

    def __init__(self, scope: anyio.CancelScope, count: int) -> None:
        self.scope = scope
        self.count = count

    @hookimpl
    def dispatcher_task_finished(self) -> None:
        self.count -= 1
        if self.count == 0:
            self.scope.cancel()


@pytest.mark.timeout(60)
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("threads", [0, 6])
def test_a_cancelled_arun_stops_a_run_that_never_waits(backend: str, threads: int) -> None:
    # Before the driver gave its loop turns, the cancellation reached it only once every
    # call had been made.
    length = 100_000
    chain = Op(_counted_inc, 0)
    for _ in range(length - 1):
        chain = Op(_counted_inc, chain)

    async def main() -> int:
        with get_executor("async", threads=threads) as ex:
            for _ in range(2):  # (with threads, calls proven tiny run on the loop)
                await ex.arun(Op(_counted_inc, Op(_counted_inc, 1)))
            _counted.clear()
            with anyio.CancelScope() as scope:
                await ex.arun(chain, plugins=[CancelsAfter(scope, 1_000)])
            made = len(_counted)
            assert await ex.arun(Op(_counted_inc, 1)) == 2  # the executor goes on
        return made

    assert anyio.run(main, backend=backend) < length


@pytest.mark.timeout(60)
@pytest.mark.parametrize("backend", BACKENDS)
def test_arun_cancelled_while_it_plans_a_large_graph_starts_none_of_it(backend: str) -> None:
    # The plan was made in a thread that could not be abandoned: the cancellation waited
    # for it, and then the run started and called thousands of tasks before it heard.
    chain = Op(_counted_inc, 0)
    for _ in range(PLANNED_ASIDE):
        chain = Op(_counted_inc, chain)
    planning, cancelled, planned = threading.Event(), threading.Event(), threading.Event()

    with get_executor("async", threads=0) as ex:
        new_run = ex._new_run

        def slow_to_plan(*args: Any) -> Any:
            planning.set()
            cancelled.wait(10)
            try:
                return new_run(*args)
            finally:
                planned.set()

        ex._new_run = slow_to_plan  # type: ignore[method-assign]

        async def main() -> None:
            async with anyio.create_task_group() as group:
                group.start_soon(ex.arun, chain)
                await anyio.to_thread.run_sync(planning.wait)
                group.cancel_scope.cancel()
                cancelled.set()

        _counted.clear()
        anyio.run(main, backend=backend)
        assert planned.wait(10)
        assert _counted == []


async def _ainc(x: int) -> int:
    return x + 1


@pytest.mark.timeout(90)
@pytest.mark.parametrize("backend", BACKENDS)
def test_arun_cancelled_while_threads_start_coroutines_sent_ahead_stops_cleanly(
    backend: str, caplog: pytest.LogCaptureFixture
) -> None:
    # A chain of plain functions (in threads) and coroutine functions, each sent ahead
    # of its input: the thread that makes an input starts the next link. Cancelled at
    # any moment, the run's inputs are freed while such a start is on its way; it read
    # them anyway, and the KeyError escaped from arun in place of the cancellation (or
    # ended a pool thread's job).
    def chain() -> Any:
        link = Op(tasks.inc, 0)
        for i in range(2_999):
            link = Op(_ainc if i % 3 == 0 else tasks.inc, link)
        return link

    async def main() -> None:
        with get_executor("async", threads=4) as ex:
            for i in range(40):
                with anyio.move_on_after(0.0005 * (i % 20)):
                    await ex.arun(chain())
            assert await ex.arun(chain()) == 3_000

    anyio.run(main, backend=backend)
    assert "raised" not in caplog.text


def test_run_inside_a_running_loop_still_works() -> None:
    async def notebook_cell() -> int:
        return run(Op(tasks.inc, 41), executor="async")  # type: ignore[no-any-return]

    assert asyncio.run(notebook_cell()) == 42


@pytest.mark.parametrize("executor", ["sync", "async"])
def test_a_coroutine_awaited_outside_the_loop_runs_under_trio(executor: str) -> None:
    # "sync" awaits a coroutine node itself, and both await the coroutine a plain function
    # returns: in trio's thread, anyio must not take that asyncio loop for trio's.
    trio = pytest.importorskip("trio")

    def returns_a_coroutine(x: int) -> Any:
        return async_inc(x)

    async def program() -> list[int]:
        first = run(Op(async_inc, 1), executor=executor)
        second = run(Op(returns_a_coroutine, 2), executor=executor)
        third = await arun(Op(returns_a_coroutine, 3), executor=executor)
        return [first, second, third]

    assert trio.run(program) == [2, 3, 4]


@pytest.mark.skipif(not hasattr(os, "fork"), reason="no os.fork here")
@pytest.mark.timeout(120)
def test_a_child_a_task_forks_runs_graphs_of_its_own() -> None:
    # The child runs in the place of the pool's thread that forked it, but in no pool:
    # it must not wait on its parent's pool, whose lock another thread held at the fork.
    from dispatcher import _threads

    def forks_and_runs(x: int) -> tuple[int, bool]:
        job = _threads._this_thread.job  # (None in the calling thread: no pool's lock)
        held, release = threading.Event(), threading.Event()

        def hold() -> None:
            with job._pool._lock if job is not None else contextlib.nullcontext():
                held.set()
                release.wait()

        holder = threading.Thread(target=hold)
        holder.start()
        held.wait()
        pid = os.fork()
        if pid == 0:  # the child
            try:
                os._exit(0 if run(Op(tasks.inc, x), executor="async") == x + 1 else 1)
            finally:
                os._exit(2)
        release.set()
        holder.join()
        for _ in range(400):
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                return os.waitstatus_to_exitcode(status), job is not None
            time.sleep(0.05)
        os.kill(pid, signal.SIGKILL)  # stuck: the deadlock this test is about
        os.waitpid(pid, 0)
        return -9, job is not None

    outcomes = run([Op(forks_and_runs, i) for i in range(4)], executor="async")
    assert [code for code, _ in outcomes] == [0, 0, 0, 0]
    assert any(pooled for _, pooled in outcomes)


@pytest.mark.timeout(30)
def test_a_nested_run_given_up_on_does_not_hold_the_next_run() -> None:
    # A task given up on at its timeout keeps running its nested run: that run's tasks
    # (hung here) must not hold the threads a later, unrelated run needs.
    never = threading.Event()

    def hung(i: int) -> None:
        never.wait(120)  # (past the test's timeout: a later run waiting for it hangs it)

    def nests(i: int) -> Any:
        return run([Op(hung, j) for j in range((os.cpu_count() or 1) + 4)])  # a pool's size

    try:
        results = run([op(nests, timeout=0.2)(0)], throw=False)
        assert isinstance(results[0].error, TaskTimeoutError)
        assert run([Op(abs, -1), Op(time.sleep, 0.01)]) == [1, None]
    finally:
        never.set()


@pytest.mark.parametrize("executor", ["sync", "async"])
def test_nested_run_from_a_task(executor: str) -> None:
    def inner(x: int) -> int:
        return run(Op(tasks.inc, Op(tasks.inc, x)), executor=executor)  # type: ignore[no-any-return]

    assert run(Op(inner, Op(inner, 0)), executor=executor) == 4


@pytest.mark.parametrize("executor", ["sync", "async"])
def test_nested_coroutine_from_a_sync_task(executor: str) -> None:
    assert run(Op(tasks.inc, Op(async_inc, 1)), executor=executor) == 3


def test_coroutine_timeout_is_a_cancellation() -> None:
    async def forever() -> None:
        await anyio.sleep(3600)

    node = op(forever, timeout=0.05)()
    with pytest.raises(TaskTimeoutError):
        run(node, executor="async")


def test_a_users_own_timeout_error_is_not_a_task_timeout() -> None:
    async def own() -> None:
        raise TimeoutError("mine")

    with pytest.raises(TimeoutError, match="mine") as info:
        run(Op(own), executor="async")
    assert not isinstance(info.value, TaskTimeoutError)


@pytest.mark.timeout(60)
def test_abandoned_thread_never_delays_exit(tmp_path: object) -> None:
    script = textwrap.dedent(
        """
        import time
        from dispatcher import op, run, TaskTimeoutError
        slow = op(time.sleep, timeout=0.1)(3600)
        try:
            run(slow, executor="async", threads=2)
        except TaskTimeoutError:
            print("timed out")
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=50
    )
    assert done.returncode == 0, done.stderr
    assert "timed out" in done.stdout


def test_cancelling_arun_cancels_the_run() -> None:
    started = anyio.Event()

    async def waits() -> None:
        started.set()
        await anyio.sleep(3600)

    async def main() -> bool:
        with anyio.move_on_after(5) as scope:
            async with anyio.create_task_group() as group:
                group.start_soon(arun, Op(waits))
                await started.wait()
                group.cancel_scope.cancel()
        return scope.cancelled_caught

    assert anyio.run(main) is False


def test_executor_options() -> None:
    with pytest.raises(ValueError, match="threads"):
        get_executor("async", threads=-1)
    with pytest.raises(ValueError, match="threads must be a non-negative int, got True"):
        get_executor("async", threads=True)  # was taken for one thread
    with pytest.raises(ValueError, match="retries must be a non-negative int, got True"):
        get_executor("async", retries=True)
    with pytest.raises(ValueError, match="backend"):
        get_executor("async", backend="curio")
    with get_executor("async", workers=3) as ex:
        assert ex.threads == 3  # type: ignore[attr-defined]


@pytest.mark.parametrize("threads", [0, 2])
def test_durations_are_measured(threads: int) -> None:
    from dispatcher.testing import Recorder

    recorder = Recorder()
    run(Op(tasks.sleep_then, 0.05, 1), executor="async", threads=threads, plugins=[recorder])
    (finished,) = recorder.of("finished")
    assert finished[3] >= 0.04


@pytest.mark.parametrize("throw", [True, False])
def test_a_failure_on_the_loop_stops_the_rest_of_its_batch_only_when_throwing(
    throw: bool, tmp_path: object
) -> None:
    # Partials may return awaitables, so with threads=0 they are submitted, all at once,
    # and called on the loop one after the other.
    log = str(tmp_path)
    bad = Op(functools.partial(tasks.fail), "boom")
    others = [Op(functools.partial(tasks.logged, log), f"other{i}", i) for i in range(5)]
    if throw:
        with pytest.raises(ValueError, match="boom"):
            run([bad, *others], executor="async", threads=0)
        assert sum(tasks.calls(log, f"other{i}") for i in range(5)) == 0
    else:
        results = run([bad, *others], executor="async", threads=0, throw=False)
        assert [r.value for r in results[1:]] == list(range(5))


def test_a_failure_on_the_loop_stops_the_rest_of_its_batch_even_once_the_turn_is_over(
    tmp_path: object, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A driver whose turn is over gives the loop a turn, which would run the rest of the
    # batch: the failure reported meanwhile is applied first.
    monkeypatch.setattr(_driver, "LOOP_TURN", 0.0)
    log = str(tmp_path)
    bad = Op(functools.partial(tasks.fail), "boom")
    others = [Op(functools.partial(tasks.logged, log), f"other{i}", i) for i in range(5)]
    with pytest.raises(ValueError, match="boom"):
        run([bad, *others], executor="async", threads=0)
    assert sum(tasks.calls(log, f"other{i}") for i in range(5)) == 0


@pytest.mark.parametrize("threads", [0, 2])
def test_one_executor_serves_runs_on_several_loops_at_once(threads: int) -> None:
    with get_executor("async", threads=threads) as ex:

        async def one(i: int) -> int:
            node = Op(async_inc, Op(tasks.inc, Op(async_inc, i)))
            return await ex.arun(node)  # type: ignore[no-any-return]

        async def many() -> list[int]:
            results = [0] * 4

            async def store(i: int) -> None:
                results[i] = await one(i)

            async with anyio.create_task_group() as group:
                for i in range(4):
                    group.start_soon(store, i)
            return results

        outcomes: list[object] = []

        def in_thread(i: int) -> None:
            outcomes.append(ex.run(Op(tasks.inc, Op(async_inc, i))))

        threads_ = [threading.Thread(target=in_thread, args=(i,)) for i in range(3)]
        for thread in threads_:
            thread.start()
        assert anyio.run(many) == [3, 4, 5, 6]
        for thread in threads_:
            thread.join()
        assert sorted(outcomes) == [2, 3, 4]  # type: ignore[type-var]


@pytest.mark.parametrize(
    ("executor", "options"), [("sync", {}), ("async", {"threads": 0}), ("async", {"threads": 2})]
)
def test_a_task_may_run_a_graph_on_the_executor_running_it(
    executor: str, options: dict[str, int]
) -> None:
    # One transport serves both runs: the inner one's reports must reach the inner run.
    with get_executor(executor, **options) as ex:

        def inner(x: int) -> int:
            return ex.run(Op(async_inc, Op(tasks.inc, Op(async_inc, x))))  # type: ignore[no-any-return]

        assert ex.run(Op(async_inc, Op(inner, Op(async_inc, 0)))) == 5


async def _raise_odd_later(kind: str) -> None:
    await anyio.sleep(0)
    tasks.raise_odd(kind)


@pytest.mark.timeout(30)
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("kind", ["SystemExit", "GeneratorExit", "CustomBaseError"])
def test_a_coroutine_raising_a_base_exception_fails_its_node(backend: str, kind: str) -> None:
    """Only cancellation and KeyboardInterrupt belong to the loop; whatever else a
    coroutine raises fails its node, and the executor serves the next run."""
    expected = tasks.ODD_EXCEPTIONS[kind][0]
    with get_executor("async", backend=backend) as ex:
        bad = op(_raise_odd_later, label="odd")(kind)
        results = ex.run([bad, Op(tasks.inc, 1)], throw=False)
        assert isinstance(results[0].error, expected), results[0]
        assert results[1].value == 2
        assert ex.run(Op(tasks.inc, 2)) == 3


async def _sleep_then(seconds: float, value: str) -> str:
    await anyio.sleep(seconds)
    return value


async def _raise_cancelled_error(how: str) -> None:
    await asyncio.sleep(0)
    if how == "raised":
        raise asyncio.CancelledError("the task's own")
    future = asyncio.get_running_loop().create_future()
    future.cancel()  # someone else cancelled what the task awaits
    await future


@pytest.mark.timeout(30)
@pytest.mark.parametrize("how", ["raised", "awaited"])
def test_a_cancelled_error_no_scope_asked_for_fails_its_node(how: str) -> None:
    """A coroutine that raises ``CancelledError`` itself (or awaits a future cancelled by
    someone else) fails its node like any exception; it used to be taken for the run's
    own cancellation, ending a ``throw=False`` run (and an ``arun``) with it."""

    async def in_arun(ex: Executor) -> list[Result]:
        return await ex.arun([op(_raise_cancelled_error)(how), Op(tasks.inc, 1)], throw=False)

    with get_executor("async") as ex:
        results = ex.run([op(_raise_cancelled_error)(how), Op(tasks.inc, 1)], throw=False)
        assert isinstance(results[0].error, asyncio.CancelledError), results[0]
        assert results[1].value == 2
        results = anyio.run(in_arun, ex)
        assert isinstance(results[0].error, asyncio.CancelledError), results[0]
        assert results[1].value == 2
        # A deadline is still the scope's own cancellation: a timeout, not the task's error.
        slow = op(_sleep_then, timeout=0.05)(5, "late")
        assert isinstance(ex.run(slow, throw=False).error, TaskTimeoutError)


@pytest.mark.timeout(30)
@pytest.mark.parametrize("backend", BACKENDS)
def test_closing_from_another_thread_cancels_the_coroutines_of_a_run(backend: str) -> None:
    """The coroutines of a run going on are cancelled on their loop when the executor is
    closed from another thread: they used to run to their end (here, an hour) while the
    run waited for them."""
    ex = get_executor("async", backend=backend)
    closer = threading.Timer(0.3, ex.close)
    closer.start()
    try:
        with pytest.raises(DispatcherError, match="closed while the run was going on"):
            ex.run([op(_sleep_then)(3600, "late") for _ in range(3)])
    finally:
        closer.join()


@pytest.mark.timeout(30)
@pytest.mark.parametrize("threads", [0, 2])
def test_a_keyboard_interrupt_in_the_caller_stops_the_run(threads: int) -> None:
    """A KeyboardInterrupt raised in the caller's thread (threads=0) is taken for Ctrl-C
    and stops the run; raised in a pool thread, it can only be the task's, and fails its
    node."""
    with get_executor("async", threads=threads) as ex:
        bad = op(tasks.raise_odd, label="interrupts")("KeyboardInterrupt")
        if threads == 0:
            with pytest.raises(KeyboardInterrupt):
                ex.run([bad, Op(tasks.inc, 1)], throw=False)
        else:
            results = ex.run([bad, Op(tasks.inc, 1)], throw=False)
            assert isinstance(results[0].error, KeyboardInterrupt)
        assert ex.run(Op(tasks.inc, 2)) == 3


def test_chains_in_parallel_each_run_on_one_thread() -> None:
    # Sent ahead of its input, each link runs on the thread that made that input: no
    # hand-off through the driver per link, whichever threads are idle.
    barrier = threading.Barrier(2, timeout=30)  # a guard against a hang, not a bound
    seen: dict[str, list[int]] = {"a": [], "b": []}

    def together(name: str) -> int:
        barrier.wait()  # both chains are out on threads at once
        seen[name].append(threading.get_ident())
        return 0

    def link(name: str, x: int) -> int:
        seen[name].append(threading.get_ident())
        return x + 1

    with get_executor("async", threads=4) as ex:
        chains = []
        for name in seen:
            node = Op(together, name)
            for _ in range(30):
                node = Op(link, name, node)
            chains.append(node)
        assert ex.run(chains) == [30, 30]
    assert all(len(set(idents)) == 1 for idents in seen.values()), seen
    assert seen["a"][0] != seen["b"][0]
    assert threading.get_ident() not in (seen["a"][0], seen["b"][0])


def test_a_lone_ready_task_runs_in_the_calling_thread() -> None:
    """With nothing of the run out on a thread and one task ready, the driving thread
    calls it itself rather than hand it to a thread and wait: a one-node run, or a chain,
    costs what it costs on ``threads=0``. Tasks ready together still go to threads."""
    barrier = threading.Barrier(2, timeout=30)  # a guard against a hang, not a bound

    def where(x: object) -> int:
        return threading.get_ident()

    def together(x: int) -> int:
        barrier.wait()  # would time out unless both run at once, on two threads
        return threading.get_ident()

    here = threading.get_ident()
    with get_executor("async", threads=2) as ex:
        assert ex.run(Op(where, 1)) == here
        assert ex.run(Op(where, Op(tasks.inc, Op(tasks.inc, 1)))) == here
        pair = ex.run([Op(together, 1), Op(together, 2)])
        assert here not in pair
        assert pair[0] != pair[1]
        # A lone task after parallel ones reads their results where they are held.
        assert ex.run(Op(tasks.add, Op(together, 1), Op(together, 2))) > 0


@pytest.mark.timeout(30)
def test_a_keyboard_interrupt_from_a_lone_task_is_taken_for_ctrl_c() -> None:
    """A lone task runs in the calling thread, where a KeyboardInterrupt cannot be told
    from Ctrl-C: it stops the run, as on ``threads=0``; the executor lives."""
    with get_executor("async", threads=2) as ex:
        with pytest.raises(KeyboardInterrupt):
            ex.run([op(tasks.raise_odd, label="interrupts")("KeyboardInterrupt")], throw=False)
        assert ex.run(Op(tasks.inc, 2)) == 3


@pytest.mark.parametrize("throw", [True, False])
def test_a_failure_inside_a_chain_sent_ahead(tmp_path: Path, throw: bool) -> None:
    log = str(tmp_path)

    def chain(name: str, failures: int) -> Op:
        node = Op(tasks.inc, 0)
        for i in range(10):
            node = Op(tasks.flaky, log, name, failures, node) if i == 5 else Op(tasks.inc, node)
        return Op(tasks.inc, node)

    with get_executor("async", threads=2, retry_on=ValueError) as ex:
        # Retried: the links after it wait for the retry's result.
        assert ex.run(chain("once", 1)) == 11
        # Failed for good: the links after it never run, and nothing is left waiting.
        if throw:
            with pytest.raises(ValueError):
                ex.run(chain("always", 10))
        else:
            (result,) = ex.run([chain("always", 10)], throw=False)
            assert isinstance(result.error, DependencyError)
        assert tasks.calls(log, "always") == 3
        transport = ex._loop_transport  # type: ignore[attr-defined]
        assert not transport._waiting
        assert not transport.tasks
        assert ex.run(Op(tasks.inc, Op(tasks.inc, 1))) == 3


def test_a_run_needs_an_event_loop_only_for_what_awaits_or_times_out() -> None:
    loops: list[bool] = []

    class Spy:
        @hookimpl
        def dispatcher_task_started(self, node: object, worker: str) -> None:
            loops.append(in_event_loop())

    with get_executor("async", threads=2) as ex:
        assert ex.run(Op(tasks.inc, Op(tasks.inc, 1)), plugins=[Spy()]) == 3
        assert loops == [False, False]
        assert ex.run(Op(async_inc, 1), plugins=[Spy()]) == 2
        assert ex.run(op(tasks.inc, timeout=30)(1), plugins=[Spy()]) == 2
    assert loops == [False, False, True, True]


def test_run_without_options_keeps_one_executor_for_the_process() -> None:
    seen: list[object] = []

    class Spy:
        @hookimpl
        def dispatcher_run_started(self, executor: object) -> None:
            seen.append(executor)

    for name in (None, "async", "sync", "sync"):
        run(Op(tasks.inc, 1), executor=name, plugins=[Spy()])
    run(Op(tasks.inc, 1), executor="async", threads=2, plugins=[Spy()])  # options: its own
    default, named, sync, sync_again, configured = seen
    assert default is named
    assert sync is sync_again
    assert default is not configured
    assert not named.closed  # type: ignore[attr-defined]


@pytest.mark.timeout(60)
def test_runs_nested_in_every_thread_of_the_kept_pool_do_not_wait_on_each_other() -> None:
    def nested(x: int) -> int:
        return run(Op(tasks.inc, x))  # type: ignore[no-any-return]

    with get_executor("async") as default:
        count = 4 * (default.threads + 1)  # type: ignore[attr-defined]
    assert run([Op(nested, i) for i in range(count)]) == [i + 1 for i in range(count)]


@pytest.mark.timeout(60)
@pytest.mark.parametrize("threads", [1, 2])
def test_runs_nested_on_the_same_executor_in_every_thread_do_not_wait_on_each_other(
    threads: int,
) -> None:
    # Each outer task takes a thread and waits for its nested run: with every thread
    # taken, the nested runs' tasks once waited for a thread forever.
    with get_executor("async", threads=threads) as ex:

        def nested(x: int, depth: int) -> int:
            if depth == 0:
                return x
            return sum(ex.run([Op(nested, x, depth - 1) for _ in range(2)]))

        count = 3 * threads
        assert ex.run([Op(nested, i, 2) for i in range(count)]) == [4 * i for i in range(count)]


@pytest.mark.timeout(60)
@pytest.mark.skipif(not hasattr(os, "fork"), reason="no fork here")
def test_a_forked_child_runs_on_executors_of_its_own() -> None:
    run([Op(tasks.inc, i) for i in range(8)])  # the kept executor has started threads
    context = multiprocessing.get_context("fork")
    child = context.Process(target=_run_and_exit)
    child.start()
    child.join(30)
    assert child.exitcode == 0


def _run_and_exit() -> None:
    os._exit(0 if run(Op(tasks.inc, Op(tasks.inc, 1))) == 3 else 1)


class _AsyncCallable:
    """Not a coroutine function, yet calling it gives a coroutine: it is awaited on the
    loop from the thread that called it."""

    async def __call__(self, x: int) -> int:
        await asyncio.sleep(0.001)
        return x + 1


@pytest.mark.timeout(30)
def test_an_awaitable_from_a_thread_is_awaited_in_a_plain_asyncio_program() -> None:
    # asyncio.run, unlike anyio.run, leaves the library unnamed in the loop's callbacks,
    # where the awaitable is handed over: it failed there unseen, and the run hung.
    async def main() -> int:
        return await arun(Op(_AsyncCallable(), 1), executor="async", threads=2)  # type: ignore[no-any-return]

    assert asyncio.run(main()) == 2
