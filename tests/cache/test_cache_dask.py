"""The cache on a dask.distributed cluster: dask workers read hits and store results."""

from __future__ import annotations

import pickle
import queue
import warnings
from pathlib import Path
from typing import Any

import dask_cache_tasks
import pytest
from cache_scenarios import SCENARIOS, Pipeline

from dispatcher import Cache, CacheWarning
from dispatcher._cache_plan import STORE_SECONDS, StoreResult, _store_coroutine
from dispatcher.transport import KEY_BITS, SHAPE_CALL, TaskSpec

pytest.importorskip("dispatcher_dask")

from dispatcher.remote import CacheWarnings
from dispatcher_dask import _task
from dispatcher_dask._deadlines import Deadlines
from dispatcher_dask._task import (
    CACHE_WARNED,
    QUICK_STORE_BYTES,
    STORING,
    TaskFailure,
    pack,
    run_task,
    run_tasks,
)


@pytest.mark.timeout(180)
@pytest.mark.parametrize("scenario", SCENARIOS, ids=lambda s: s.__name__)
def test_scenario(tmp_path: Path, scenario: Any) -> None:
    scenario(Pipeline(tmp_path, "dask", {"workers": 2, "threads_per_worker": 1}))


# -- what a dask task says about the cache, called in this process ---------------------------

ENTRY = "ab" * 16


def _spec(func: Any, args: tuple[Any, ...], timeout: float | None, key: int = 7) -> TaskSpec:
    return TaskSpec(
        key, "quick", func, args, None, SHAPE_CALL, (), None, None, "w", timeout, False, 1
    )  # fmt: skip


def _said(monkeypatch: pytest.MonkeyPatch, waited: list[Any] | None = None) -> list[Any]:
    """The words a task says to the caller, recorded instead of sent (those it waits to
    see leave its worker in ``waited`` too)."""
    words: list[Any] = []

    def say(topic: str, word: Any) -> None:
        words.append(word)
        if waited is not None:
            waited.append(word)

    monkeypatch.setattr(_task, "_say", say)
    monkeypatch.setattr(_task, "_log_event", lambda topic, word: words.append(word))
    return words


@pytest.mark.timeout(30)
@pytest.mark.parametrize(
    ("cached", "timed"), [(True, True), (True, False), (False, True), (False, False)]
)
def test_only_a_timed_cached_task_says_that_its_function_returned(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, cached: bool, timed: bool
) -> None:
    """The caller's deadline for a timed cached task becomes its store's bound when told;
    every other task says nothing new (an untimed one nothing at all)."""
    words = _said(monkeypatch)
    func: Any = dask_cache_tasks.quick
    args: tuple[Any, ...] = (0.0,)
    if cached:
        func, args = StoreResult(func, Cache(tmp_path)), (ENTRY, 0.0)
    run_task(7, pack(_spec(func, args, 30.0 if timed else None), {}), None, "words")
    expected: list[Any] = [7] if timed else []
    if cached and timed:
        assert words[1][:2] == (STORING, 7)
        assert words[1][2] >= STORE_SECONDS
        expected.append(words[1])
    assert words == expected


@pytest.mark.timeout(30)
@pytest.mark.parametrize("awaited", [False, True], ids=["plain", "coroutine"])
def test_a_store_longer_than_the_timeout_is_not_timed_where_the_task_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, awaited: bool
) -> None:
    words = _said(monkeypatch)
    cache = Cache(tmp_path)
    if awaited:
        func = _store_coroutine(dask_cache_tasks.aquick, cache)
    else:
        func = StoreResult(dask_cache_tasks.quick, cache)
    value = run_task(7, pack(_spec(func, (ENTRY, 0.6), 0.2), {}), None, "words").load()
    assert isinstance(value, dask_cache_tasks.SlowToStore)
    assert cache.contains(ENTRY)
    assert [w if type(w) is int else w[0] for w in words] == [7, STORING]


@pytest.mark.timeout(30)
@pytest.mark.parametrize(
    ("size", "timeout", "waits"),
    [(10, 30.0, False), (10, 0.5, True), (QUICK_STORE_BYTES, 30.0, True)],
    ids=["small-far", "small-near", "large"],
)
def test_the_storing_word_waits_to_leave_unless_its_store_is_small_and_its_deadline_far(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, size: int, timeout: float, waits: bool
) -> None:
    """A large store may hold the GIL, and starve the worker's event loop that sends the
    word, past the caller's deadline; a small one cannot for long."""
    waited: list[Any] = []
    words = _said(monkeypatch, waited)
    func = StoreResult(bytes, Cache(tmp_path))
    run_task(7, pack(_spec(func, (ENTRY, size), timeout), {}), None, "words")
    assert [w[0] for w in words[1:]] == [STORING]
    assert (words[1] in waited) is waits


@pytest.mark.timeout(30)
def test_a_function_past_its_timeout_fails_and_its_result_is_not_stored(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    words = _said(monkeypatch)
    cache = Cache(tmp_path)
    func = StoreResult(dask_cache_tasks.late, cache)
    with pytest.raises(TaskFailure) as failed:
        run_task(7, pack(_spec(func, (ENTRY, 0.3), 0.05), {}), None, "words")
    assert failed.value.error is None
    assert failed.value.timeout == 0.05
    assert not cache.contains(ENTRY)
    assert words == [7]  # it started; its store was never announced


@pytest.mark.timeout(30)
def test_a_cache_warning_off_a_dask_worker_is_warned_where_it_happens(tmp_path: Path) -> None:
    """Outside a task, or in a task run by no dask worker, nothing listens for the word."""
    (tmp_path / "entries").write_text("no directory can be made here")
    cache = Cache(tmp_path)
    func = StoreResult(dask_cache_tasks.quick, cache)
    for call in (
        lambda: cache.save(ENTRY, 1),
        lambda: run_task(7, pack(_spec(func, (ENTRY, 0.0), None), {}), None, "words"),
    ):
        with pytest.warns(CacheWarning, match="not stored"):
            call()


class _Worker:
    """What a task finds as its dask worker (``get_worker``): the events it logs."""

    address = "tcp://10.0.0.1:4000"

    def __init__(self) -> None:
        self.events: list[tuple[str, Any]] = []

    def log_event(self, topic: str, message: Any) -> None:
        self.events.append((topic, message))


@pytest.mark.timeout(30)
@pytest.mark.parametrize("fused", [False, True], ids=["alone", "fused"])
def test_a_cache_warning_on_a_worker_goes_to_the_caller_on_the_tasks_topic(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fused: bool
) -> None:
    """Alone or in a fused run, a task's cache warning is its word to the caller, naming
    it, on the topic the caller listens to; nothing is warned on the worker."""
    import distributed

    from dispatcher import _cache

    worker = _Worker()
    monkeypatch.setattr(distributed, "get_worker", lambda: worker)
    # The process's one sink, as in a dask worker (a worker of another kind, run in this
    # process by an earlier test, may have set its own).
    monkeypatch.setattr(_cache, "_warning_sink", _task._cache_warned)
    (tmp_path / "entries").write_text("no directory can be made here")
    func = StoreResult(dask_cache_tasks.quick, Cache(tmp_path))
    payload = pack(_spec(func, (ENTRY, 0.0), None), {})
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        if fused:
            run_tasks(pickle.dumps(([(7, payload, (), ())], {})), "stats", "words")
        else:
            run_task(7, payload, "stats", "words")
    assert not [w for w in seen if w.category is CacheWarning]
    said = [message for topic, message in worker.events if topic == "words"]
    assert [(m[0], m[1], m[3]) for m in said] == [(CACHE_WARNED, 7, worker.address)]
    assert "not stored" in said[0][2]


# -- the caller's side ------------------------------------------------------------------------


@pytest.mark.timeout(30)
def test_a_deadline_moved_expires_at_its_new_time_and_only_if_it_still_had_one() -> None:
    expired: queue.Queue[str] = queue.Queue()
    deadlines: Deadlines[Any] = Deadlines(lambda t: expired.put(t[0]), lambda e: None)
    stored, other, dropped, soon = ("stored",), ("other",), ("dropped",), ("soon",)
    deadlines.add(stored, 0.05)
    deadlines.add(other, 0.3)
    deadlines.move(stored, 0.6)  # later than other's, which now expires first
    deadlines.add(dropped, 0.1)
    deadlines.discard(dropped)
    deadlines.move(dropped, 0.1)  # discarded: it stays so
    deadlines.add(soon, 60)
    deadlines.move(soon, 0.01)  # earlier than the one the thread waits for: it wakes
    assert [expired.get(timeout=10) for _ in range(3)] == ["soon", "other", "stored"]
    deadlines.move(other, 0.01)  # expired: it stays so
    deadlines.add(("last",), 0.3)
    assert expired.get(timeout=10) == "last"
    deadlines.close()
    assert expired.empty()


def test_a_workers_cache_warning_is_warned_once_per_message_and_run_naming_the_node() -> None:
    said = CacheWarnings()
    spec = _spec(None, (), None)
    run_2 = 2 << KEY_BITS
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        for key, text in [(7, "full"), (8, "full"), (7, "other"), (run_2 | 7, "full")]:
            said.warn(key, spec, "dask-1@here", text)
        said.warn(run_2 | 9, None, "dask-1@here", "gone")
    assert [str(w.message) for w in seen if w.category is CacheWarning] == [
        "full (node 'quick', on worker dask-1@here)",
        "other (node 'quick', on worker dask-1@here)",
        "full (node 'quick', on worker dask-1@here)",
        f"gone (task {run_2 | 9}, on worker dask-1@here)",
    ]


def test_a_cache_warning_made_an_error_does_not_escape_the_event_loop(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        CacheWarnings().warn(7, None, "dask-1@here", "full")
    assert "full (task 7, on worker dask-1@here)" in caplog.text
