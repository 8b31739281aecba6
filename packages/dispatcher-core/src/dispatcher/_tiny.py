"""Which plain functions are cheap enough for the ``async`` executor's driving thread to
call itself, rather than hand each call to a worker thread.

Handing a task to a thread and hearing back from it costs about 20 µs; a task of a
microsecond pays that twentyfold. So a plain function whose calls in threads have
returned, :data:`PROVEN_AFTER` times in a row, each within :data:`TINY`, has proven tiny:
from then on the scheduler calls it in the thread that drives the run, as ``threads=0``
does (:meth:`dispatcher._scheduler.Run.call_tiny`). One call there that takes longer than
:data:`SLOW`, blocking or computing (:class:`CallClock`), bars the function for the
executor's life: it goes back to threads, and the driving thread (an event loop, maybe)
is never held that long by it again.

The verdicts are kept per executor, across its runs: a graph run again learns once. A
run with many ready calls of a function still being learned sends a few of them to
threads and holds the rest back until their reports have decided (:class:`Probes`), so
that even its first run calls the rest in the driving thread.
"""

from __future__ import annotations

import functools
import logging
import threading
import weakref
from collections.abc import Callable, Container, Iterable
from time import perf_counter, sleep, thread_time
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from ._nodes import DispatchNode

_thread_usage: Callable[[], Any] | None
"""This thread's resource usage (Linux); elsewhere a slow call is the function's doing."""
try:
    from resource import RUSAGE_THREAD, getrusage
except ImportError:
    _thread_usage = None
else:
    _thread_usage = functools.partial(getrusage, RUSAGE_THREAD)

__all__ = [
    "HELD_WARNING",
    "PROVEN_AFTER",
    "SLOW",
    "TINY",
    "ByFunction",
    "CallClock",
    "Probes",
    "TinyCalls",
]

log = logging.getLogger("dispatcher")

TINY = 20e-6
"""A call this short costs less than handing it to a thread (seconds)."""

PROVEN_AFTER = 3
"""Consecutive tiny calls in threads before a function is called in the driving thread."""

SLOW = 1e-3
"""A call in the driving thread this long bars its function from it (seconds)."""

_FRESH = 0.2e-3
"""How old :class:`CallClock`'s reading may be when a call begins (seconds)."""

_MAX_FUNCTIONS = 4096
"""Functions remembered at most (closures made afresh for every run must not pile up)."""

HELD_WARNING = 10.0
"""A call in the driving thread still running after this long is named in a warning
(seconds): no other task of its run starts until it returns (see :func:`_watch_calls`)."""


_V = TypeVar("_V")


class ByFunction(weakref.WeakKeyDictionary[Any, _V]):
    """What an executor knows of each function, without keeping the function alive: a
    closure made afresh for every run goes, with all it holds, when its graph does. A
    callable that takes no weak reference (``operator.itemgetter(1)``, ``str.upper``) is
    held in a plain dict, emptied past :data:`_MAX_FUNCTIONS` of them."""

    def __init__(self) -> None:
        super().__init__()
        self._strong: dict[Any, _V] = {}

    def get(self, func: Any, default: Any = None) -> Any:
        try:
            return super().get(func, default)
        except TypeError:  # not weak-referenceable
            return self._strong.get(func, default)

    def __getitem__(self, func: Any) -> _V:
        try:
            return super().__getitem__(func)
        except TypeError:
            return self._strong[func]

    def __setitem__(self, func: Any, value: _V) -> None:
        try:
            super().__setitem__(func, value)
        except TypeError:
            if len(self._strong) >= _MAX_FUNCTIONS:
                self._strong.clear()
            self._strong[func] = value

    def __contains__(self, func: object) -> bool:
        return self.get(func, _ABSENT) is not _ABSENT

    def pop(self, func: Any, *default: Any) -> Any:
        try:
            return super().pop(func, *default)
        except TypeError:
            return self._strong.pop(func, *default)

    def __len__(self) -> int:
        return super().__len__() + len(self._strong)

    def clear(self) -> None:
        super().clear()
        self._strong.clear()


_ABSENT = object()


class TinyCalls:
    """The verdicts of one executor: which functions have proven tiny, which are barred.

    :meth:`observe` is told of calls in worker threads (from those threads);
    :meth:`allows` and :meth:`bar` are used by the driving threads of runs."""

    __slots__ = ("_lock", "_streaks", "changes", "learnable", "probes", "verdicts")

    def __init__(self, learnable: Callable[[Callable[..., Any]], bool], probes: int) -> None:
        self.learnable = learnable
        """Which functions may be learned at all (not those that may return awaitables)."""
        self.probes = max(probes, 2 * PROVEN_AFTER)
        """Calls of a function being learned that a run sends before it holds the rest
        back: as many as the threads, whose work it then holds back none of."""
        self.verdicts: ByFunction[bool] = ByFunction()
        """True: proven tiny; False: barred. Absent: still being learned."""
        self._streaks: ByFunction[int] = ByFunction()
        self.changes = 0
        """Bumped at every new verdict: a run that asked before asks again."""
        self._lock = threading.Lock()

    def allows(self, func: Callable[..., Any]) -> bool:
        """May the driving thread call ``func`` itself?"""
        return self.verdicts.get(func) is True

    def observe(self, func: Callable[..., Any], duration: float) -> None:
        """``func`` returned after ``duration`` seconds in a worker thread.

        A slow call there only breaks the streak: a thread's clock also counts the time it
        waited for the interpreter lock, so it never bars a function."""
        streaks = self._streaks
        # A call that was not tiny, or a verdict, ends the learning: nothing waits for
        # the function's next calls (see Probes).
        learnt = duration > TINY or func in self.verdicts
        streak = 0 if learnt else streaks.get(func, 0) + 1
        if streak < PROVEN_AFTER:
            if streaks.get(func) != streak:
                if len(streaks) >= _MAX_FUNCTIONS:
                    streaks.clear()
                streaks[func] = streak
            return
        with self._lock:
            self._streaks.pop(func, None)
            if func in self.verdicts:
                return
            if len(self.verdicts) >= _MAX_FUNCTIONS:
                self.verdicts.clear()  # learned again; what was barred is tried again
            self.verdicts[func] = True
            self.changes += 1

    def learning(self, func: Callable[..., Any]) -> bool:
        """Is ``func`` being learned: no verdict, and no call of late that was not tiny?"""
        return func not in self.verdicts and self._streaks.get(func, 1) != 0

    def clock(self) -> CallClock:
        """A clock for the calls one pass of the scheduler's hot loop makes, watched
        while it lives (:func:`_watch_calls`)."""
        clock = CallClock(self)
        _watched.add(clock)
        if _watcher is None:
            _start_watcher()
        return clock

    def bar(self, func: Callable[..., Any]) -> None:
        """A call of ``func`` in the driving thread took longer than :data:`SLOW`: never
        again there."""
        with self._lock:
            self.verdicts[func] = False
            self._streaks.pop(func, None)
            self.changes += 1


class CallClock:
    """Tells a call slow of its own doing from a call whose thread was only kept from
    running, so that a loaded machine (the thread preempted for a few milliseconds in the
    middle of a call of a microsecond) bars no function.

    The wall clock cannot tell them apart; the thread's resource usage can: a call that
    blocked (slept, waited on a lock or for I/O) switched out of its own accord, and one
    that computed used the CPU time. Reading them costs two system calls, so they are read
    at most every 0.2 ms of calls (:meth:`read`, when a call begins past ``stale_at``) and
    once more after a slow call."""

    __slots__ = ("__weakref__", "_cpu", "_switches", "_wall", "begun", "node", "stale_at", "tiny")

    def __init__(self, tiny: TinyCalls) -> None:
        self.tiny = tiny
        self.stale_at = 0.0  # read at the first call
        self._wall = self._cpu = 0.0
        self._switches = 0
        self.node: DispatchNode | None = None
        """The task called last in this pass of the hot loop, until the pass ends."""
        self.begun = 0.0
        """... and when its call began (``perf_counter()``)."""

    def calling(self, node: DispatchNode, begun: float) -> None:
        """The hot loop calls ``node``'s function, from ``begun``: watched until the pass
        ends (when :attr:`node` goes back to ``None``)."""
        if begun > self.stale_at:
            self.read(begun)
        self.node, self.begun = node, begun

    def read(self, now: float) -> None:
        """Note the thread's usage so far, at ``now`` (``perf_counter()``)."""
        if _thread_usage is None:
            return
        self._wall = now
        self.stale_at = now + _FRESH
        self._cpu = thread_time()
        self._switches = _thread_usage().ru_nvcsw

    def own_doing(self, begun: float) -> bool:
        """A call begun at ``begun`` (after the last :meth:`read`) has just taken longer
        than :data:`SLOW` on the wall clock: did it block, or compute for half of that?"""
        if _thread_usage is None:
            return True
        blocked: bool = _thread_usage().ru_nvcsw != self._switches
        # The CPU time since the reading, but for what the calls before this one can have
        # used: at most the wall time from the reading to this call's beginning. (The
        # resource usage's own CPU times move by whole clock ticks: milliseconds.)
        computed = thread_time() - self._cpu - (begun - self._wall)
        self.read(perf_counter())
        return blocked or computed > SLOW / 2

    def bar_if_slow(
        self, func: Callable[..., Any], begun: float, in_caller: dict[Any, bool]
    ) -> bool:
        """A call of ``func`` begun at ``begun`` has just returned or raised: if it took
        longer than :data:`SLOW` of its own doing, bar ``func``, for this run at once (its
        ``in_caller`` answers) and for the executor's later runs. True if it did."""
        if perf_counter() - begun <= SLOW or not self.own_doing(begun):
            return False
        self.tiny.bar(func)
        in_caller[func] = False
        return True


class Probes:
    """A run's calls of functions still being learned, sent to threads to be timed; the
    other ready calls of such a function wait while one of those is out (its report
    wakes the run), then go to the driving thread or to threads. Should every one report
    and leave the function still being learned (its streak broken, then begun again),
    the run sends as many again, rather than hold the rest for whatever else it has out."""

    __slots__ = ("_live", "_never", "_sent", "tiny")

    def __init__(self, tiny: TinyCalls, never: Iterable[Callable[..., Any]]) -> None:
        self.tiny = tiny
        self._never = frozenset(never)  # functions the run never calls itself
        self._sent: dict[Callable[..., Any], list[int]] = {}  # this round's probes
        self._live: dict[Callable[..., Any], int] = {}  # one of them found out last

    def hold(self, p: int, node: DispatchNode, out: Container[int]) -> bool:
        """Should ready ``node`` (at ``p``) wait, rather than go to a thread? ``out``:
        the run's tasks out (submitted, not yet reported)."""
        func = node._func
        if node._timeout is not None or func in self._never or not self.tiny.learning(func):
            return False
        sent = self._sent.get(func)
        if sent is None:
            sent = self._sent[func] = []
        if len(sent) < self.tiny.probes:
            sent.append(p)
            return False
        if self._live.get(func) not in out:
            live = next((q for q in sent if q in out), None)
            if live is None:  # all reported, and it is still being learned: a new round
                self._sent[func] = [p]
                return False
            self._live[func] = live
        return self.tiny.learnable(func)


_watched: weakref.WeakSet[CallClock] = weakref.WeakSet()
_watcher: threading.Thread | None = None
_watcher_lock = threading.Lock()


def _start_watcher() -> None:
    global _watcher
    with _watcher_lock:
        if _watcher is None:
            _watcher = threading.Thread(
                target=_watch_calls, name="dispatcher-tiny-calls", daemon=True
            )
            _watcher.start()


def _watched_now() -> list[CallClock]:
    """The clocks alive now. Every run's driving thread adds one at each pass of its hot
    loop and drops it at the end: a set changed by another thread in the middle of the
    copy is copied again."""
    while True:
        try:
            return list(_watched)
        except RuntimeError:  # "Set changed size during iteration"
            continue


def _watch_calls() -> None:
    """Name, once each, the calls in a driving thread that have run past
    :data:`HELD_WARNING`. A function proven tiny that then waits for another task of its
    own run (an event, a queue) waits for ever: that task cannot start while it holds
    the thread that would start it. Nothing can interrupt the call, but the user learns
    which it is and what to do. Only warns: should it fail, it says so and stops, and
    the runs go on as they were."""
    named: weakref.WeakKeyDictionary[CallClock, float] = weakref.WeakKeyDictionary()
    try:
        while True:
            sleep(HELD_WARNING / 10)
            now = perf_counter()
            for clock in _watched_now():
                node, begun = clock.node, clock.begun
                if node is None or now - begun < HELD_WARNING or named.get(clock) == begun:
                    continue
                named[clock] = begun
                log.warning(
                    "%s has held the thread driving its run for %.0f s. Its function "
                    "returned within %.0f us on its earlier calls, so the async executor "
                    "calls it on that thread, and no other task of the run starts until it "
                    "returns: if it waits for another task of the run (an event, a queue, "
                    "a lock), it waits for ever. Give that node a timeout= (a task with one "
                    "always runs on a worker thread).",
                    node.label,
                    now - begun,
                    TINY * 1e6,
                )
    except BaseException as exc:  # a thread of the library never dies unseen
        log.error("the watch of calls on a driving thread stopped: %r", exc)
