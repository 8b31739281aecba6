"""Fused runs: short tasks sent to one worker together run as one dask task."""

from __future__ import annotations

import functools
import math
import pickle
import time
from pathlib import Path
from typing import Any

import dask_tasks
import pytest

from dispatcher import Op, get_executor
from dispatcher.transport import KEY_BITS, SHAPE_CALL, SHAPE_POSITIONAL, TaskSpec
from dispatcher_dask._fusing import FUSED_BYTES, FUSED_SECONDS, MOST_FUSED, Fusing
from dispatcher_dask._task import TaskFailure, pack, run_task, run_tasks

pytestmark = pytest.mark.timeout(120)


def quick(i: int) -> int:
    return i


def other(i: int) -> int:
    return -i


def spec(
    key: int,
    func: Any = quick,
    *,
    want: bool = False,
    timeout: float | None = None,
    deps: tuple[int, ...] = (),
    inline: dict[int, Any] | None = None,
    last_use: tuple[int, ...] = (),
) -> TaskSpec:
    shape = SHAPE_POSITIONAL if deps else SHAPE_CALL  # (the inputs' values, or ``key``)
    made = TaskSpec(
        key, f"t{key}", func, (key,), None, shape, deps, None, inline, "w", timeout, want, 1
    )  # fmt: skip
    made.last_use = last_use
    return made


def taught(seconds: float = 0.001, nbytes: int | None = 28) -> Fusing:
    fusing = Fusing()
    fusing.learn(quick, seconds, nbytes)
    return fusing


def keys(groups: list[list[TaskSpec]]) -> list[list[int]]:
    return [[s.key for s in group] for group in groups]


# -- which tasks are fused ---------------------------------------------------------------


def test_consecutive_short_tasks_are_fused_and_others_go_alone_in_their_place() -> None:
    fusing = taught()
    specs = [spec(1), spec(2), spec(3, other), spec(4), spec(5, want=True), spec(6), spec(7)]
    # other's duration is unknown, a wanted value would be gathered with its whole run.
    assert keys(fusing.cut(specs)) == [[1, 2], [3], [4], [5], [6, 7]]


@pytest.mark.parametrize(
    "odd",
    [
        spec(2, timeout=1.0),  # its deadline could not free the tasks behind it
        spec(2, deps=(99,)),  # reads a result made on the cluster
    ],
)
def test_a_timed_task_or_one_reading_a_result_is_never_fused(odd: TaskSpec) -> None:
    assert keys(taught().cut([spec(1), odd, spec(3)])) == [[1], [2], [3]]


def test_a_chain_is_fused_from_a_first_link_that_reads_a_result_made_elsewhere() -> None:
    # Each link reads the one before; the first, a result of an earlier dask task.
    chain = [spec(1, deps=(99,))] + [spec(k, deps=(k - 1,), last_use=(k - 1,)) for k in (2, 3)]
    assert keys(taught().cut(chain)) == [[1, 2, 3]]
    # A task that does not read the run does not wait with it for what it reads.
    assert keys(taught().cut([*chain, spec(4), spec(5)])) == [[1, 2, 3], [4, 5]]
    # Nor does a run that reads nothing wait for a later task's input.
    assert keys(taught().cut([spec(4), spec(5), *chain])) == [[4, 5], [1, 2, 3]]
    # A later link reading a result made outside the run starts a run of its own.
    late = spec(4, deps=(3, 98), last_use=(3,))
    assert keys(taught().cut([*chain, late])) == [[1, 2, 3], [4]]


def test_large_results_are_fused_only_where_their_last_reader_follows_them() -> None:
    large = taught(nbytes=FUSED_BYTES * 64)
    chain = [spec(1)] + [spec(k, deps=(k - 1,), last_use=(k - 1,)) for k in (2, 3)]
    assert keys(large.cut(chain)) == [[1, 2, 3]]
    # Read again later (not its last use here), link 1's value would be held with the run.
    kept = [chain[0], spec(2, deps=(1,)), chain[2]]
    assert keys(large.cut(kept)) == [[1], [2, 3]]


def test_inputs_the_caller_holds_and_an_infinite_timeout_do_not_stop_fusing() -> None:
    given = spec(2, deps=(99,), inline={99: 5})
    assert keys(taught().cut([spec(1, timeout=math.inf), given])) == [[1, 2]]


def test_partials_of_one_function_made_afresh_per_node_are_learned_as_that_function() -> None:
    fusing = Fusing()
    fusing.learn(functools.partial(quick), 0.001, 28)
    assert keys(fusing.cut([spec(1, functools.partial(quick)), spec(2)])) == [[1, 2]]


def test_slow_functions_and_large_results_are_not_fused() -> None:
    specs = [spec(1), spec(2)]
    assert keys(taught(seconds=FUSED_SECONDS).cut(specs)) == [[1], [2]]
    assert keys(taught(nbytes=FUSED_BYTES * 2).cut(specs)) == [[1], [2]]
    assert keys(taught(nbytes=None).cut(specs)) == [[1], [2]]


def test_a_fused_run_is_bounded_by_its_expected_length_its_count_and_its_run() -> None:
    seconds = FUSED_SECONDS / 4
    assert keys(taught(seconds).cut([spec(k) for k in range(6)])) == [[0, 1, 2, 3], [4, 5]]
    many = taught(1e-6).cut([spec(k) for k in range(MOST_FUSED + 1)])
    assert [len(group) for group in many] == [MOST_FUSED, 1]
    other_run = 1 << KEY_BITS
    assert keys(taught().cut([spec(1), spec(2), spec(other_run)])) == [[1, 2], [other_run]]


def test_a_batch_is_made_in_the_order_sent_so_a_reader_comes_after_its_input() -> None:
    from dispatcher_dask._transport import DaskTransport

    transport = DaskTransport(workers=2)
    transport._fusing.learn(quick, 0.001, 28)
    first = spec(1, other)  # on the second worker, whose tasks were made first
    first.worker = "w2"
    made = spec(2)
    reader = spec(3, other, deps=(2,))
    reader.worker = "w2"
    fused = [spec(4), spec(5)]
    try:
        groups = transport._groups([first, made, reader, *fused])
    finally:
        transport.close()
    assert keys(groups) == [[1], [2, 4, 5], [3]]


# -- on the worker ------------------------------------------------------------------------


def failing(i: int) -> int:
    raise ValueError(f"no {i}")


def test_a_fused_run_runs_every_task_past_a_failure_and_keeps_it_in_its_place() -> None:
    members = [spec(1), spec(2, failing), spec(3)]
    tasks = pickle.dumps(([(s.key, pack(s, {}), (), ()) for s in members], {}))
    values = run_tasks(tasks, "topic")  # (off a worker: its report goes nowhere)
    assert values[0].load() == 1  # (held on the worker: see dispatcher_dask._held)
    assert values[2].load() == 3
    assert isinstance(values[1], TaskFailure)
    assert values[1].key == 2
    assert values[1].error is not None
    assert values[1].error.message == "no 2"


def test_a_fused_chain_reads_its_links_and_drops_each_value_after_its_last_reader() -> None:
    outside = (5, (10, 20))  # an input of the run's own, and another run's values
    first = spec(1, dask_tasks.total, deps=(90, 91))  # reads both, the second's member 1
    second = spec(2, dask_tasks.total, deps=(1, 92), inline={92: 100}, last_use=(1,))
    third = spec(3, dask_tasks.total, deps=(2, 90), last_use=(2,))
    members = [
        (1, pack(first, {}), (-1, -2), ()),
        (2, pack(second, {1: 100}), (0,), (0,)),
        (3, pack(third, {}), (1, -1), (1,)),
    ]
    values = run_tasks(pickle.dumps((members, {1: 1})), "topic", "", *outside)
    assert values[2].load() == 5 + 20 + 100 + 5
    # Dropped: a task that would still read them is told, by their own keys.
    assert [(v.key, v.error) for v in values[:2]] == [(1, None), (2, None)]


def test_a_link_after_a_failed_one_is_not_run_and_fails_with_its_inputs_failure() -> None:
    first = spec(1, failing)
    second = spec(2, dask_tasks.mark_then_wait, deps=(1,), last_use=(1,))
    members = [(1, pack(first, {}), (), ()), (2, pack(second, {}), (0,), (0,))]
    values = run_tasks(pickle.dumps((members, {})), "topic")
    assert isinstance(values[1], TaskFailure)
    assert values[1].key == 1  # the input's failure: the caller has the reader wait again
    assert values[1].error is not None
    assert values[1].error.message == "no 1"


def test_a_link_that_fails_keeps_the_value_it_read_for_its_next_attempt() -> None:
    first = spec(1)
    second = spec(2, failing, deps=(1,), last_use=(1,))
    members = [(1, pack(first, {}), (), ()), (2, pack(second, {}), (0,), (0,))]
    values = run_tasks(pickle.dumps((members, {})), "topic")
    assert values[0].load() == 1
    assert isinstance(values[1], TaskFailure)
    assert values[1].key == 2


def test_a_task_reads_one_member_of_a_fused_run_and_its_failure_as_its_inputs() -> None:
    values = (10, TaskFailure(2, None, 0.0), 30)
    reader = spec(7, dask_tasks.total, deps=(1, 3))
    payload = pack(reader, {}, {0: 0, 1: 2})
    assert run_task(7, payload, None, "", values, values).load() == 40
    failed = pack(reader, {}, {0: 0, 1: 1})
    with pytest.raises(TaskFailure) as raised:
        run_task(7, failed, None, "", values, values)
    assert raised.value.key == 2  # the input's failure, not the reader's own


# -- on a cluster ---------------------------------------------------------------------------


def test_short_tasks_run_as_fewer_dask_tasks_with_every_result_and_failure_right(
    dask_client: Any,
) -> None:
    from distributed import get_task_stream

    address = dask_client.scheduler.address
    with get_executor("dask", address=address, retries=0) as executor:
        executor.run([Op(dask_tasks.total, i) for i in range(4)])  # learns the function
        client = executor._transport.client  # type: ignore[attr-defined]
        leaves = [Op(dask_tasks.total, i) for i in range(60)]
        with get_task_stream(client=client) as stream:
            assert executor.run(Op(dask_tasks.total, *leaves)) == sum(range(60))
        ran = [task for task in stream.data if "fused" in str(task["key"])]
        assert ran, "no fused run"
        assert len(stream.data) < 61
        # A failure among fused tasks fails its own node only.
        learn = [Op(dask_tasks.raise_on, -1, i) for i in range(4)]
        executor.run([Op(dask_tasks.total, *learn)])
        mixed = [Op(dask_tasks.raise_on, 13, i) for i in range(30)]
        results = executor.run(
            [Op(dask_tasks.total, *mixed[:13]), Op(dask_tasks.total, *mixed[13:])], throw=False
        )
        assert results[0].value == sum(range(13))
        assert "raise_on" in str(results[1].error)
        assert "13" in str(results[1].error)


def _chain(links: int, bad: int = -1, end: Any = dask_tasks.first_byte) -> Op:
    link = Op(dask_tasks.block_after, None, 0, bad)
    for i in range(1, links):
        link = Op(dask_tasks.block_after, link, i, bad)
    return Op(end, link)


def test_a_chain_of_large_results_runs_as_fused_runs_and_fails_at_its_failed_link(
    dask_client: Any,
) -> None:
    from distributed import get_task_stream

    address = dask_client.scheduler.address
    with get_executor("dask", address=address, retries=0) as executor:
        executor.run(_chain(6))  # learns the function
        client = executor._transport.client  # type: ignore[attr-defined]
        with get_task_stream(client=client) as stream:
            assert executor.run(_chain(60)) == 59
        ran = [task for task in stream.data if "fused" in str(task["key"])]
        assert ran, "no fused run"
        assert len(stream.data) < 61
        # Each link's value is dropped once read, each run's once the next has read it:
        # the last link's worker holds the run that made it and that run's input.
        assert executor.run(_chain(60, end=dask_tasks.values_held)) <= 3
        with pytest.raises(ValueError, match="link 30 is bad"):
            executor.run(_chain(60, bad=30))
        assert executor.run(_chain(60)) == 59  # and the executor goes on


def test_a_released_fused_run_starts_none_of_its_tasks_left(
    dask_client: Any, tmp_path: Path
) -> None:
    go = str(tmp_path / "go")
    members = [spec(k, dask_tasks.mark_then_wait) for k in range(1, 6)]
    for member in members:
        member.args = (str(tmp_path / f"started-{member.key}"), go)
    tasks = pickle.dumps(([(s.key, pack(s, {}), (), ()) for s in members], {}))
    future = dask_client.submit(run_tasks, tasks, "dispatcher-test-topic", pure=False)
    key = future.key
    started = tmp_path / "started-1"
    while not started.exists():
        time.sleep(0.01)
    future.release()
    del future
    while "cancelled" not in dask_client.run(dask_tasks.state_of, key).values():
        time.sleep(0.01)
    (tmp_path / "go").touch()  # the first task returns: the worker has released its run
    while any(dask_client.run(dask_tasks.state_of, key).values()):
        time.sleep(0.01)
    assert sorted(p.name for p in tmp_path.glob("started-*")) == ["started-1"]
