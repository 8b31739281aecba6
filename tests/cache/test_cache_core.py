"""The cache on the in-process executors: sync, async with threads, async on the loop."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import counters
import pytest
from cache_scenarios import SCENARIOS, Pipeline

from dispatcher import hookimpl, op, run

EXECUTORS = [("sync", {}), ("async", {}), ("async", {"threads": 0})]


@pytest.mark.parametrize(("executor", "options"), EXECUTORS, ids=["sync", "async", "async-loop"])
@pytest.mark.parametrize("scenario", SCENARIOS, ids=lambda s: s.__name__)
def test_scenario(tmp_path: Path, executor: str, options: dict[str, Any], scenario: Any) -> None:
    scenario(Pipeline(tmp_path, executor, options))


def inc(x: int) -> int:
    return x + 1


@pytest.mark.parametrize(
    ("executor", "options", "in_caller"),
    [("sync", {}, True), ("async", {"threads": 0}, True), ("async", {"threads": 2}, False)],
)
def test_hits_are_read_where_tasks_run(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    executor: str,
    options: dict[str, Any],
    in_caller: bool,
) -> None:
    from dispatcher import Cache
    from dispatcher._cache import Cache as Store

    run(op(inc)(1), executor="sync", cache=tmp_path)
    threads: list[threading.Thread] = []
    load = Store.load

    def watched(self: Cache, key: str) -> Any:
        threads.append(threading.current_thread())
        return load(self, key)

    monkeypatch.setattr(Store, "load", watched)
    assert run(op(inc)(1), executor=executor, cache=tmp_path, **options) == 2
    assert len(threads) == 1
    assert (threads[0] is threading.main_thread()) == in_caller


def counted(x: int) -> int:
    counters.calls.append(x)
    return x * 10


def test_nodes_given_through_inputs_are_keyed_by_their_value(tmp_path: Path) -> None:
    counters.calls.clear()
    source = op(inc)(0)
    target = op(counted)(source)
    for given in (1, 1, 2, 1):
        assert run(target, executor="sync", cache=tmp_path, inputs={source: given}) == given * 10
    assert counters.calls == [1, 2]


async def slow_double(x: int) -> int:
    import asyncio

    counters.calls.append(x)
    await asyncio.sleep(0)
    return x * 2


@pytest.mark.parametrize(("executor", "options"), EXECUTORS, ids=["sync", "async", "async-loop"])
def test_coroutine_results_are_stored_once_awaited(
    tmp_path: Path, executor: str, options: dict[str, Any]
) -> None:
    counters.calls.clear()
    for _ in range(2):
        assert run(op(slow_double)(21), executor=executor, cache=tmp_path, **options) == 42
    assert counters.calls == [21]


def test_arun_takes_a_cache(tmp_path: Path) -> None:
    import asyncio

    from dispatcher import arun

    counters.calls.clear()
    for _ in range(2):
        assert asyncio.run(arun(op(slow_double)(4), cache=tmp_path)) == 8
    assert counters.calls == [4]


def fails(x: int) -> int:
    counters.calls.append(("fails", x))
    raise ValueError(f"no {x}")


class Failures:
    def __init__(self) -> None:
        self.failed: list[str] = []

    @hookimpl
    def dispatcher_task_failed(self, node: Any) -> None:
        self.failed.append(node.label)


@pytest.mark.timeout(60)
@pytest.mark.parametrize(("executor", "options"), EXECUTORS, ids=["sync", "async", "async-loop"])
def test_a_run_planned_again_keeps_the_failures_of_the_plan_before(
    tmp_path: Path, executor: str, options: dict[str, Any]
) -> None:
    """With throw=False, a node that failed before a hit was found unreadable is not
    called again in the new plan (it has no retries left), nor reported failed twice."""
    import warnings

    from dispatcher import Cache, CacheWarning, DispatchGraph, Result
    from dispatcher._cache_plan import CachePlan

    cache = Cache(tmp_path)

    def targets() -> list[Any]:
        low = op(inc, label="low")(1)
        top = op(counted, label="top")(op(inc, label="mid")(low))
        bad = op(fails, label="bad")(low)
        return [top, bad, op(inc, label="after")(bad)]

    first = targets()
    run(first, executor="sync", cache=cache, throw=False)
    key = CachePlan(cache, DispatchGraph([first[0]]), [first[0]], {}).keys[0]
    entry = Path(cache._entry_path(key))
    entry.write_bytes(entry.read_bytes()[:-5])  # found truncated when it is read
    counters.calls.clear()
    seen = Failures()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", CacheWarning)
        top, bad, after = run(
            targets(), executor=executor, cache=cache, throw=False, plugins=[seen], **options
        )
    assert top == Result(30, None)
    assert isinstance(bad.error, ValueError)
    assert str(bad.error) == "no 2"
    assert after.error is not None
    assert counters.calls.count(("fails", 2)) == 1
    assert sorted(seen.failed) == ["after", "bad"]


@pytest.mark.timeout(60)
@pytest.mark.parametrize(("executor", "options"), EXECUTORS, ids=["sync", "async", "async-loop"])
def test_a_hit_is_not_held_to_its_functions_timeout(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, executor: str, options: dict[str, Any]
) -> None:
    """A node's timeout bounds its function, which a hit does not call: reading a large
    entry from a slow disk must not fail the node as if the function ran past it."""
    import time

    from dispatcher._cache import Cache as Store

    assert run(op(inc, timeout=0.2)(1), executor="sync", cache=tmp_path) == 2
    load = Store.load

    def slow(self: Any, key: str) -> Any:
        time.sleep(0.5)
        return load(self, key)

    monkeypatch.setattr(Store, "load", slow)
    assert run(op(inc, timeout=0.2)(1), executor=executor, cache=tmp_path, **options) == 2


def flaky(x: int) -> int:
    counters.calls.append(("flaky", x))
    raise ValueError(f"flaky {x}")


@pytest.mark.timeout(60)
@pytest.mark.parametrize(("executor", "options"), EXECUTORS, ids=["sync", "async", "async-loop"])
def test_a_run_planned_again_keeps_the_retry_budget_of_the_plan_before(
    tmp_path: Path, executor: str, options: dict[str, Any]
) -> None:
    """A node that failed and waits for a retry when a hit is found unreadable has only
    what is left of its retries in the new plan: retries=1 is two calls in all."""
    import warnings

    from dispatcher import Cache, CacheWarning, DispatchGraph
    from dispatcher._cache_plan import CachePlan

    cache = Cache(tmp_path)

    def targets() -> list[Any]:
        # Made first, flaky runs (and fails) before the hit is read, on sync.
        bad = op(flaky, label="flaky")(7)
        return [bad, op(counted, label="top")(op(inc, label="mid")(op(inc, label="low")(1)))]

    first = targets()[1]
    run(first, executor="sync", cache=cache)
    key = CachePlan(cache, DispatchGraph([first]), [first], {}).keys[0]
    entry = Path(cache._entry_path(key))
    entry.write_bytes(entry.read_bytes()[:-5])  # found truncated when it is read
    counters.calls.clear()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", CacheWarning)
        bad, top = run(
            targets(),
            executor=executor,
            cache=cache,
            throw=False,
            retries=1,
            retry_on=ValueError,
            **options,
        )
    assert top.value == 30
    assert isinstance(bad.error, ValueError)
    assert counters.calls.count(("flaky", 7)) == 2


class SlowToStore:
    """A result that takes ``seconds`` to pickle, so to store (its copies pickle at once)."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds

    def __reduce__(self) -> tuple[Any, ...]:
        import time

        time.sleep(self.seconds)
        return (SlowToStore, (0.0,))


def slow_to_store(seconds: float) -> SlowToStore:
    return SlowToStore(seconds)


@pytest.mark.timeout(60)
def test_a_store_that_hangs_fails_its_node_at_the_stores_bound(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The store after a function that returned in time is not held to the node's timeout,
    but to a bound of its own: one that hangs (a frozen network file system) fails the
    node as timed out rather than hang the run."""
    from dispatcher import TaskTimeoutError, _cache_plan

    monkeypatch.setattr(_cache_plan, "STORE_SECONDS", 0.3)  # (60 s, in earnest)
    slow = op(slow_to_store, timeout=0.2)(30.0)
    with pytest.raises(TaskTimeoutError):
        run(slow, executor="async", cache=tmp_path, threads=2)


async def _slow_to_store_later(seconds: float) -> SlowToStore:
    return SlowToStore(seconds)


def returns_awaitable(seconds: float) -> Any:
    """A plain function whose result is awaited: a coroutine."""
    counters.calls.append(("returns_awaitable", seconds))
    return _slow_to_store_later(seconds)


@pytest.mark.timeout(60)
@pytest.mark.parametrize(("executor", "options"), [("sync", {}), ("async", {"threads": 0})])
def test_a_store_awaited_beside_a_running_loop_is_not_held_to_the_timeout(
    tmp_path: Path, executor: str, options: dict[str, Any]
) -> None:
    """A plain function's awaitable result, awaited in a helper thread because the
    calling thread runs an event loop (a run from inside a coroutine): the store after
    it is still not held to the node's timeout."""
    import asyncio

    node = op(returns_awaitable, timeout=0.5)(1.5)

    async def main() -> Any:
        return run(node, executor=executor, cache=tmp_path, **options)

    counters.calls.clear()
    assert isinstance(asyncio.run(main()), SlowToStore)
    assert isinstance(asyncio.run(main()), SlowToStore)  # read from the cache
    assert counters.calls == [("returns_awaitable", 1.5)]
