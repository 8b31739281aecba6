"""A chain sent ahead on one worker: each link's result is released by the caller as soon
as the link reading it is sent, before it is made, and still reported made or failed."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import dask_tasks
import pytest

from dispatcher import Executor, Op, get_executor
from dispatcher.testing import tasks

pytestmark = pytest.mark.timeout(120)

LINKS = 5


def _chain(tmp_path: Path, link: Any = None) -> tuple[Op, Path, Path]:
    """A gate that waits for ``go``, then LINKS links (``link``, if given, in the middle)."""
    started, go = tmp_path / "started", tmp_path / "go"
    node = Op(dask_tasks.wait_then, str(started), str(go), 0)
    for i in range(LINKS):
        node = link(node) if link is not None and i == LINKS // 2 else Op(tasks.inc, node)
    return node, started, go


def _when(condition: Any, what: str) -> None:
    deadline = time.monotonic() + 30
    while not condition():
        assert time.monotonic() < deadline, f"never {what}"
        time.sleep(0.01)


def _run_behind_the_gate(
    executor: Executor, target: Op, started: Path, go: Path, **options: Any
) -> tuple[Any, set[int]]:
    """Run ``target`` in a thread; once the whole chain is sent and the gate runs, wait
    for the links whose futures the client holds no more, then open the gate."""
    transport: Any = executor._transport  # type: ignore[attr-defined]
    client = transport.client
    outcome: dict[str, Any] = {}

    def one() -> None:
        try:
            outcome["value"] = executor.run(target, **options)
        except BaseException as exc:  # raised in the test's thread below
            outcome["value"] = exc

    thread = threading.Thread(target=one)
    thread.start()
    try:
        _when(started.exists, "started")
        _when(lambda: len(transport._pending) == LINKS + 1, "sent the whole chain")
        pending = dict(transport._pending)

        def released() -> set[int]:
            return {k for k, p in pending.items() if p.future.key not in client.refcount}

        _when(lambda: len(released()) == LINKS, "released every link but the last")
        gone = released()
    finally:
        go.touch()
        thread.join(60)
    assert not thread.is_alive()
    if isinstance(outcome["value"], BaseException):
        raise outcome["value"]
    return outcome["value"], gone


def test_links_are_released_before_they_are_made_and_reported_made(
    dask_client: Any, tmp_path: Path
) -> None:
    address = dask_client.scheduler.address
    target, started, go = _chain(tmp_path)
    with get_executor("dask", address=address) as executor:
        value, released = _run_behind_the_gate(executor, target, started, go)
    assert value == LINKS
    assert len(released) == LINKS  # the gate and every link but the last


def test_a_link_released_ahead_that_fails_is_reported_failed_by_name(
    dask_client: Any, tmp_path: Path
) -> None:
    address = dask_client.scheduler.address
    target, started, go = _chain(tmp_path, lambda node: Op(dask_tasks.raise_on, 2, node))
    with get_executor("dask", address=address, retries=0) as executor:
        result, _ = _run_behind_the_gate(executor, target, started, go, throw=False)
    assert "raise_on" in str(result.error)
    assert "raise_on(2)" in str(result.error.__cause__ or result.error)


def test_a_link_released_ahead_that_fails_once_is_retried_to_the_right_value(
    dask_client: Any, tmp_path: Path
) -> None:
    address = dask_client.scheduler.address
    log = tmp_path / "log"
    log.mkdir()

    def flaky(node: Op) -> Op:
        return Op(tasks.flaky, str(log), "link", 1, node)

    target, started, go = _chain(tmp_path, flaky)
    with get_executor("dask", address=address, retries=1, retry_on=ValueError) as executor:
        value, _ = _run_behind_the_gate(executor, target, started, go)
    assert value == LINKS - 1  # the flaky link passes its input on instead of adding one


class _Future:
    """What the transport reads of a settled dask future."""

    def __init__(self, key: str) -> None:
        self.key = key
        self.status = "finished"

    def release(self) -> None:
        pass


class _Sink:
    def __init__(self) -> None:
        self.reports: list[tuple[str, int]] = []

    def task_finished(self, key: int, worker: str, *rest: Any) -> None:
        self.reports.append(("finished", key))

    def task_failed(self, key: int, worker: str, *rest: Any) -> None:
        self.reports.append(("failed", key))

    def task_inputs_lost(self, key: int, worker: str, *rest: Any) -> None:
        self.reports.append(("inputs lost", key))


def _read_first_in_a_fused_run(member_stats: Any) -> tuple[_Sink, Any]:
    """A link released ahead whose stats came before its release (so its reader reports
    it), read by the first task of a fused run whose run just settled with
    ``member_stats`` for that task: the transport's records, as they are then."""
    from dispatcher_dask._completions import Completions
    from dispatcher_dask._giving_up import Pending

    records: Any = Completions.__new__(Completions)  # its records alone, set below
    link, reader = SimpleNamespace(key=1, worker="w"), SimpleNamespace(key=2, worker="w")
    link_future, run_future = _Future("link"), _Future("run")
    records._lock = threading.Lock()
    records._events = sink = _Sink()
    records._pending = {
        1: Pending(link, link_future, ()),  # type: ignore[arg-type]
        2: Pending(reader, run_future, (1,)),  # type: ignore[arg-type]
    }
    records._keys = {"link": 1}
    records._futures = {1: link_future, 2: run_future}
    records._made = {1: link, 2: reader}
    records._index = {2: 0}
    records._ahead = {1}
    records._stats = {1: (0.001, 28, None)}
    records._member_stats = {2: member_stats}
    records._release_made = set()
    return sink, lambda: records._member_done(2, run_future)


def test_a_link_released_ahead_is_reported_made_by_a_fused_run_that_read_it() -> None:
    sink, settle = _read_first_in_a_fused_run((0.001, 28, None))
    settle()
    assert sink.reports == [("finished", 1), ("finished", 2)]


def test_a_link_released_ahead_is_reported_made_when_the_fused_run_reading_it_failed() -> None:
    import pickle

    sink, settle = _read_first_in_a_fused_run((0.001, None, pickle.dumps(ValueError("no"))))
    settle()
    assert sink.reports == [("finished", 1), ("failed", 2)]


def test_a_long_chain_of_tiny_tasks_ends(dask_client: Any) -> None:
    # Fused runs read links released ahead: a link whose stats came before its release
    # was reported by nobody, and the run waited for it for ever (most runs of this).
    address = dask_client.scheduler.address
    with get_executor("dask", address=address) as executor:
        for _ in range(3):
            node = Op(tasks.inc, 0)
            for _ in range(5_000):
                node = Op(tasks.inc, node)
            assert executor.run(node) == 5_001
