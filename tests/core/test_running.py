"""run(): executor resolution, options, bad input, environment."""

from __future__ import annotations

import gc
from typing import Any

import pytest

import dispatcher
from dispatcher import (
    DataNode,
    Executor,
    ExecutorInfo,
    ExecutorNotFound,
    Op,
    available_executors,
    get_executor,
    hookimpl,
    run,
)
from dispatcher._plugins import plugin_manager, run_observers
from dispatcher.testing import FakeTransport, Recorder, tasks


def test_run_rejects_non_nodes() -> None:
    with pytest.raises(TypeError, match="got int"):
        run(42)
    with pytest.raises(TypeError, match="must be nodes"):
        run([Op(tasks.inc, 1), 5])
    with pytest.raises(TypeError):
        run({Op(tasks.inc, 1)})  # a set has no order to mirror


def test_unknown_executor_lists_the_available_ones() -> None:
    with pytest.raises(ExecutorNotFound) as info:
        run(DataNode(1), executor="warp-drive")
    assert isinstance(info.value, LookupError)
    assert "'warp-drive'" in str(info.value)
    assert "'sync'" in str(info.value)
    assert "'async'" in str(info.value)


@pytest.mark.parametrize(
    ("name", "path"),
    [
        ("mp", "./packages/dispatcher-mp"),
        ("mpi", "'./packages/dispatcher-mpi[mpich]'"),
        ("dask", "./packages/dispatcher-dask"),
    ],
)
def test_known_but_missing_executor_says_how_to_install_it_from_a_clone(
    name: str, path: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The distributions are not on a package index: the hint installs from a clone's
    paths, never a bare name someone else could register."""
    installed = {k: v for k, v in available_executors().items() if k != name}
    monkeypatch.setattr(dispatcher._registry, "available_executors", lambda: installed)
    with pytest.raises(ExecutorNotFound) as info:
        get_executor(name)
    assert f"pip install ./packages/dispatcher-core {path}" in str(info.value)
    assert f"pip install dispatcher-{name}" not in str(info.value)


def test_a_near_miss_asks_did_you_mean() -> None:
    with pytest.raises(ExecutorNotFound, match="Did you mean 'async'"):
        get_executor("asyncc")


def test_a_bad_name_from_the_environment_says_so(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DISPATCHER_EXECUTOR", "snyc")
    with pytest.raises(ExecutorNotFound) as info:
        run(DataNode(1))
    assert "$DISPATCHER_EXECUTOR" in str(info.value)
    assert "Did you mean 'sync'" in str(info.value)


def test_unknown_option_lists_the_valid_ones() -> None:
    with pytest.raises(TypeError, match="threads") as info:
        run(DataNode(1), executor="async", thread=2)
    assert "'thread'" in str(info.value)


def test_default_executor_and_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[str] = []

    class Spy:
        @hookimpl
        def dispatcher_run_started(self, executor: Executor) -> None:
            seen.append(executor.name)

    monkeypatch.delenv("DISPATCHER_EXECUTOR", raising=False)
    run(DataNode(1), plugins=[Spy()])
    monkeypatch.setenv("DISPATCHER_EXECUTOR", "sync")
    run(DataNode(1), plugins=[Spy()])
    assert seen == ["async", "sync"]


def test_executor_instance_is_not_closed_by_run() -> None:
    with get_executor("sync") as ex:
        assert run(Op(tasks.inc, 1), executor=ex) == 2
        assert not ex.closed
    assert ex.closed


def test_a_plugin_can_provide_an_executor() -> None:
    class Provider:
        @hookimpl
        def dispatcher_executors(self) -> list[ExecutorInfo]:
            def factory(**options: Any) -> Executor:
                options.pop("workers", None)
                return Executor("fake", FakeTransport(), **options)

            return [ExecutorInfo("fake", factory, "pretend workers", "tests")]

    pm = plugin_manager()
    provider = Provider()
    pm.register(provider)
    try:
        assert "fake" in available_executors()
        assert run(Op(tasks.inc, Op(tasks.inc, 1)), executor="fake", retries=0) == 3
    finally:
        pm.unregister(provider)
    assert "fake" not in available_executors()


def test_per_task_path_skips_pluggy_without_observers() -> None:
    plain = run_observers((), progress=False, report=None)
    assert plain.task_started is None
    assert plain.task_finished is None
    watched = run_observers([Recorder()], progress=False, report=None)
    assert watched.task_started is not None


def test_exports_match_all() -> None:
    for name in dispatcher.__all__:
        assert hasattr(dispatcher, name), name
    public = {n for n in vars(dispatcher) if not n.startswith("_")}
    assert set(dispatcher.__all__) <= public
    for required in (
        "Op",
        "op",
        "DataNode",
        "IndexNode",
        "CollectNode",
        "DispatchNode",
        "DispatchGraph",
        "run",
        "arun",
        "Result",
        "DispatcherError",
        "CycleError",
        "DependencyError",
        "ExecutorNotFound",
        "WorkerLostError",
        "TaskTimeoutError",
        "SerializationError",
        "RemoteError",
        "hookimpl",
        "get_executor",
        "available_executors",
        "Executor",
        "ExecutorInfo",
    ):
        assert required in dispatcher.__all__


@pytest.mark.parametrize(
    ("executor", "options"), [("sync", {}), ("async", {"threads": 0}), ("async", {"threads": 2})]
)
def test_a_run_leaves_nothing_for_the_garbage_collector(
    executor: str, options: dict[str, int]
) -> None:
    # The state of a run (per-node arrays, the graph) is freed as soon as the run ends,
    # not when the cycle collector next passes: nothing of it may sit in a cycle. What
    # else of the process turns to garbage meanwhile (a thread of an earlier test ending,
    # on a loaded machine) is not the run's, and not there every time: three tries.
    found = []
    with get_executor(executor, **options) as ex:
        ex.run(Op(tasks.inc, 1))
        for _ in range(3):
            node = Op(tasks.inc, 0)
            for _ in range(100):
                node = Op(tasks.inc, node)
            gc.collect()
            gc.disable()
            try:
                assert ex.run(node) == 101
                found.append(gc.collect())
            finally:
                gc.enable()
            if found[-1] == 0:
                break
    assert found[-1] == 0, f"objects left in cycles by each run: {found}"


def test_targets_nest_like_arguments() -> None:
    """Lists, tuples, namedtuples and dicts of nodes, nested: the answer has the same shape."""
    from collections import namedtuple

    pair = namedtuple("pair", "left right")
    a, b, c = Op(tasks.inc, 1), Op(tasks.inc, 2), Op(tasks.inc, 3)
    targets = {"a": [a, (b, {"c": c})], "p": pair(a, [c])}
    for executor in ("sync", "async"):
        assert run(targets, executor=executor) == {"a": [2, (3, {"c": 4})], "p": pair(2, [4])}
    with pytest.raises(TypeError, match="must be nodes"):
        run({"a": [a, 5]})


class _Batch(list):  # type: ignore[type-arg]
    pass


class _Pair(tuple):  # type: ignore[type-arg]
    pass


class _Built(list):  # type: ignore[type-arg]
    def __init__(self, first: Any, second: Any) -> None:
        super().__init__([first, second])


def test_targets_in_subclasses_of_list_and_tuple_come_back_in_them() -> None:
    """They were accepted, and the graph ran, but rebuilding them as namedtuples raised
    TypeError after the run, and the values were lost."""
    a, b = Op(tasks.inc, 1), Op(tasks.inc, 2)
    for executor in ("sync", "async"):
        batch = run(_Batch([a, b]), executor=executor)
        assert type(batch) is _Batch
        assert batch == [2, 3]
        pair = run(_Pair((a, b)), executor=executor)
        assert type(pair) is _Pair
        assert pair == (2, 3)
        # Made otherwise than from its items: a plain list, with the values.
        assert run(_Built(a, b), executor=executor) == [2, 3]


def test_inputs_that_name_no_ancestor_say_which_node_or_what_else() -> None:
    a = Op(tasks.inc, 1)
    b = Op(tasks.inc, a)
    other = Op(tasks.inc, 7)
    with pytest.raises(ValueError, match=r"inputs names inc\(7\), which is not among"):
        run(b, executor="sync", inputs={other: 0})
    with pytest.raises(ValueError, match="inputs names 'b', a str: inputs are keyed by nodes"):
        run(b, executor="sync", inputs={"b": 0})
