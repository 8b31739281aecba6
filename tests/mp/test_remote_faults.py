"""Odd exceptions and odd values on mp: they fail their node, never the worker or the
caller's reader thread; and what the caller ships to workers stays bounded."""

from __future__ import annotations

from typing import Any

import mp_tasks
import pytest

from dispatcher import (
    DispatcherError,
    Executor,
    Op,
    RemoteError,
    SerializationError,
    get_executor,
    op,
)
from dispatcher_mp import MpTransport

pytestmark = pytest.mark.timeout(60)


@pytest.fixture(scope="module")
def ex() -> Any:
    with get_executor("mp", workers=1, retries=0) as executor:
        yield executor


@pytest.mark.parametrize(
    ("task", "expected"),
    [
        (mp_tasks.raise_keyboard_interrupt, KeyboardInterrupt),
        (mp_tasks.raise_system_exit, SystemExit),
        (mp_tasks.raise_generator_exit, GeneratorExit),
        (mp_tasks.raise_custom, mp_tasks.Custom),
        (mp_tasks.raise_unprintable, mp_tasks.Unprintable),
    ],
    ids=["KeyboardInterrupt", "SystemExit", "GeneratorExit", "custom", "unprintable"],
)
def test_a_base_exception_fails_its_node_and_the_worker_keeps_serving(
    ex: Executor, task: Any, expected: type[BaseException]
) -> None:
    before = ex.run(Op(mp_tasks.pid))
    result = ex.run(Op(task), throw=False)
    assert not result.ok
    assert type(result.error) is expected, repr(result.error)
    assert ex.run(Op(mp_tasks.pid)) == before  # the same process, still serving


def test_a_cause_that_unpickles_as_something_else_is_dropped(ex: Executor) -> None:
    with pytest.raises(ValueError, match="the visible one") as info:
        ex.run(Op(mp_tasks.raise_from_weird))
    assert info.value.__cause__ is None
    assert ex.run(Op(mp_tasks.sleep_then, 0, "still reading")) == "still reading"


def test_a_result_whose_unpickling_exits_fails_its_node(ex: Executor) -> None:
    result = ex.run(Op(mp_tasks.exits_when_unpickled), throw=False)
    assert isinstance(result.error, SerializationError), repr(result.error)
    assert "SystemExit" in str(result.error)
    assert ex.run(Op(mp_tasks.sleep_then, 0, "still reading")) == "still reading"
    # With throw=True, the note says where it failed: here, receiving it.
    with pytest.raises(SerializationError) as info:
        ex.run(Op(mp_tasks.exits_when_unpickled))
    assert info.value.__notes__ == [
        "dispatcher: raised by node exits_when_unpickled() in the caller, "
        "receiving its result from worker 'mp-0'"
    ]


def test_an_exception_that_cannot_travel_arrives_as_remote_error(ex: Executor) -> None:
    result = ex.run(Op(mp_tasks.raise_unpicklable), throw=False)
    assert isinstance(result.error, RemoteError), repr(result.error)
    assert "LocalError" in str(result.error)


def test_a_failed_reader_thread_fails_the_runs_and_says_why() -> None:
    transport = MpTransport(1)
    with Executor("mp", transport, retries=0) as ex:
        assert ex.run(Op(mp_tasks.sleep_then, 0, 1)) == 1

        def broken(*args: Any, **kwargs: Any) -> bool:
            raise SystemExit("the reader broke")

        transport._reader._receive = broken  # type: ignore[union-attr, method-assign]
        with pytest.raises(DispatcherError, match="reader thread failed with SystemExit"):
            ex.run(Op(mp_tasks.sleep_then, 0, 2))
        with pytest.raises(DispatcherError, match="make a new one"):
            ex.run(Op(mp_tasks.sleep_then, 0, 3))


def test_fresh_closures_do_not_pile_up_in_the_caller_or_the_worker() -> None:
    # Each closure holds 200 KB: 300 of them, all kept, would be 60 MB on each side.
    transport = MpTransport(1)
    with Executor("mp", transport) as ex:
        start = ex.run(Op(mp_tasks.rss))
        for i in range(300):
            ex.run(Op(mp_tasks.closure_of(200_000, i)))
        grown = ex.run(Op(mp_tasks.rss)) - start
    assert grown < 40_000_000, f"the worker grew by {grown / 1e6:.0f} MB"
    assert transport.shipper.pickled_bytes < 20_000_000
    assert transport.shipper.held_by("mp-0") <= 1024


def test_an_infinite_timeout_is_no_limit(ex: Executor) -> None:
    # A deadline at infinity once overflowed the reader thread's wait, and it died.
    node = op(mp_tasks.sleep_then, timeout=float("inf"))(0, "unlimited")
    assert ex.run(node) == "unlimited"
    assert ex.run(Op(mp_tasks.sleep_then, 0, "still reading")) == "still reading"
