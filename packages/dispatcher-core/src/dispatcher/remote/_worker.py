"""Worker side: the loop that runs tasks in order, holds their results and reports back.

A backend subclasses :class:`TaskRunner`, gives it a way to send a message to the caller
(:meth:`TaskRunner.send`), and overrides what is its own: how inputs held elsewhere arrive
(:meth:`TaskRunner.remote_inputs`) and what form a result wanted by the caller travels in
(:meth:`TaskRunner.pack_result`). Its communication thread hands incoming messages to
:meth:`TaskRunner.receive`; its task thread calls :meth:`TaskRunner.serve`.

Nothing a task does ends this loop: any exception it raises -- ``SystemExit``,
``KeyboardInterrupt``, ``GeneratorExit``, one that cannot be printed or pickled -- fails
its node, and the next task runs.

A task queued here and not started yet can be asked back (:class:`TakeBack`): it is
removed, and the answer (:class:`TakenBack`) names exactly the tasks removed; one that
started meanwhile runs and is reported as usual (the same lock decides both).

When a run ends, the caller says so (:class:`RunEnded`): everything of that run held here
goes at once, and again once the tasks of it already queued or running here are over, so
that what they keep (their results, the inputs they fetched) is not left behind by a
report that came after the run stopped listening.
"""

from __future__ import annotations

import functools
import pickle
import sys
import threading
from collections.abc import Callable, Sequence
from queue import Empty, SimpleQueue
from time import perf_counter
from typing import Any, NamedTuple

from .._awaiting import AWAITABLE_TYPES, await_blocking, is_awaitable
from .._cache import send_warnings_to
from .._cache_plan import function_returned, store_seconds, stores_result
from .._template import call_task
from ..transport import KEY_BITS
from ._errors import WireError, capture_error, serialization_error, unpickling_error
from ._functions import Unloadable
from ._messages import (
    CacheWarned,
    Cancel,
    Define,
    Done,
    Failed,
    Forget,
    Free,
    Lost,
    Run,
    RunEnded,
    Started,
    Stop,
    Storing,
    TakeBack,
    TakenBack,
    Task,
)
from ._pickle import dumps, loads

__all__ = [
    "BATCH_SIZE",
    "REPORT_NOW",
    "InputError",
    "TaskRunner",
    "held_here",
    "size_of",
    "start_thread",
    "supervised",
]

BATCH_SIZE = 64
"""Completions of tiny tasks travel together, up to this many in one message."""
REPORT_NOW = 1e-3
"""Seconds: a task that ran this long is reported at once, with what finished before it,
so the next task arrives before this worker's queue runs dry."""
_EARLY_REPORT = 4  # a batch of twice this many tasks or more is reported at its half too

_STOP = object()
_KEY = Task._fields.index("key")
_TOKEN = Task._fields.index("token")

Key = int


class _Ended(NamedTuple):
    """On the task queue, after every task of run ``run`` sent here: they are over."""

    run: int


_serving: TaskRunner | None = None
"""The runner serving in this process (see :func:`held_here`)."""


def held_here() -> dict[Key, int]:
    """The results held by the worker this is called in (from a task), by key, with their
    estimated sizes (:func:`size_of`); empty outside a worker. For checks that a finished
    run left nothing behind."""
    runner = _serving
    if runner is None:
        return {}
    return {key: size_of(value) for key, value in list(runner.store.items())}


def size_of(value: Any) -> int:
    """A cheap estimate of ``value``'s size in bytes, to report with a completion: what
    placement weighs inputs by. Buffers (NumPy arrays, memoryviews) give their ``nbytes``,
    bytes-likes their length, anything else its shallow ``sys.getsizeof``."""
    nbytes = getattr(value, "nbytes", None)
    if type(nbytes) is int:
        return nbytes
    if isinstance(value, (bytes, bytearray)):
        return len(value)
    try:
        return sys.getsizeof(value)
    except Exception:  # a __sizeof__ that fails: no estimate, no error
        return 0


CARRIED_BYTES = 256
"""The largest result (by :func:`size_of`) of one of :attr:`TaskRunner.carried_types`
that travels with its completion unasked."""


class InputError(Exception):
    """An input held by another worker could not be sent from there."""


class TaskRunner:
    """Runs the tasks it receives, one at a time, in order; see the module docstring."""

    report_at_half = False
    """Report the first half of a batch of tiny tasks as soon as it is done, so that the
    caller sends more while the rest runs (worth it where the way back is slow to turn
    around, as on MPI; on a pipe, the extra message costs more than it saves)."""

    keep_fetched = False
    """Keep the inputs fetched from other workers for a task that got all its inputs, as
    results held here, until freed (the transport declares
    ``Capabilities.keeps_fetched_inputs``): worth it where a move costs a network link."""

    carried_types: frozenset[type] = frozenset()
    """Results of these types (exactly), at most :data:`CARRIED_BYTES` big, travel
    pickled with their completion even when the caller does not want them (see
    :class:`Finished`), so that a task elsewhere that reads one is sent it with the task
    instead of waiting for it to be fetched from here: worth it where inputs move
    between workers through the caller. Only types whose values never change in place,
    so that the copy is the value any later fetch would get."""

    def __init__(self) -> None:
        self.store: dict[Key, Any] = {}
        """Results held here, by key."""
        self.functions: dict[int, Any] = {}
        self.cancelled: set[Key] = set()
        self.queue: SimpleQueue[Any] = SimpleQueue()
        """What :meth:`serve` takes: a :class:`Run`'s entries with their functions, as one
        item (a thread hand-off per batch, not per task), or the stop."""
        self.dropped = 0
        """Counts :meth:`drop_queued`: a batch received before the last drop stops."""
        self.finished: list[tuple[Key, float, int | None, Any]] = []
        self.failed: list[tuple[Key, float, WireError]] = []
        """Failures not reported yet: those after the one reported at once (see
        :meth:`fail`)."""
        self.failing = False
        """A failure went at once since the last report: the next ones wait for it."""
        self.moves: list[tuple[tuple[Any, ...], int, float]] | None = None
        """Fetches timed since the last report (see :meth:`moved`)."""
        self.current: Key | None = None
        """The task running now."""
        self.current_lock = threading.Lock()
        """Taken to start a task unless it was cancelled, and to cancel tasks and see
        whether one of them runs: so a task is either skipped or seen running, never
        both (see :meth:`cancel`, :meth:`take_back`)."""
        self.queued: set[Key] = set()
        """Tasks received and not started yet: those :meth:`take_back` may give back."""
        self.taken: dict[Key, int] = {}
        """Per task given back, how many of its entries still queued are to be skipped
        (it may have been sent here again since: that last entry runs)."""
        self._task_thread: threading.Thread | None = None  # where serve() runs tasks

    # -- what a backend provides ---------------------------------------------------------

    def send(self, message: Any) -> None:
        """Send ``message`` to the caller (from the task thread)."""
        raise NotImplementedError

    def remote_inputs(self, deps: tuple[Key, ...], remote: Any) -> dict[Key, Any] | None:
        """The values of the inputs ``deps`` held by other workers, by key, got from where
        ``remote`` (:attr:`Task.remote`) says (those it cannot get are left out, and
        reported lost); ``None`` when there are none. Raises :class:`InputError` when one
        exists but cannot be sent. A backend that fetches them from the workers holding
        them times it and says so (:meth:`moved`)."""
        return None

    def moved(self, sources: tuple[Any, ...], nbytes: int, seconds: float) -> None:
        """One task waited ``seconds`` for ``nbytes`` of inputs fetched from ``sources``
        (workers, in the backend's own terms, which its caller side turns into names:
        see :class:`Reports`). Reported with the next completions, so the scheduler
        learns what moves cost (see ``EventSink.inputs_moved``)."""
        if self.moves is None:
            self.moves = []
        self.moves.append((sources, nbytes, seconds))

    def pack_result(self, key: Key, value: Any) -> tuple[Any, int]:
        """The form in which ``value`` travels to the caller, and its size in bytes.
        Raises when it cannot be serialised."""
        return value, size_of(value)

    def answer(self, message: Any) -> None:
        """Send ``message`` to the caller from the communication thread, which must
        never block on it (extend it where :meth:`send` may block)."""
        self.send(message)

    def drop(self, keys: Sequence[Key]) -> None:
        """Forget these results (extend it to release what the backend keeps for them)."""
        store = self.store
        for key in keys:
            store.pop(key, None)

    # -- on the communication thread -----------------------------------------------------

    def receive(self, message: Any) -> bool:
        """Act on one of the kit's messages; False if ``message`` is not one of them."""
        kind = type(message)
        if kind is Run:
            if message.defines:
                for token, data in message.defines:
                    self.define(token, data)
            functions, tasks = self.functions, message.tasks
            self.queued.update([record[_KEY] for record in tasks])
            # Looked up now, not when they run: a later Forget may drop a token.
            self.queue.put(
                (tasks, [functions.get(record[_TOKEN]) for record in tasks], self.dropped)
            )
        elif kind is Define:
            self.define(message.token, message.data)
        elif kind is Forget:
            for token in message.tokens:
                self.functions.pop(token, None)
        elif kind is Free:
            self.cancelled.difference_update(message.keys)
            self.drop(message.keys)
        elif kind is Cancel:
            self.cancel(message.keys)
        elif kind is TakeBack:
            taken = self.take_back(message.keys)
            if taken:
                self.answer(TakenBack(taken))
        elif kind is RunEnded:
            self.run_ended(message.run)
        elif kind is Stop:
            self.queue.put(_STOP)
        else:
            return False
        return True

    def define(self, token: int, data: bytes) -> None:
        """Hold the function pickled as ``data`` under ``token``."""
        try:
            self.functions[token] = loads(data)
        except BaseException as exc:  # kept for the tasks that call it to report
            self.functions[token] = Unloadable(exc)

    def cancel(self, keys: Sequence[Key]) -> Key | None:
        """Do not start these tasks; the one of them running now, if any (its outcome is
        reported once it returns). Called from another thread than the task thread."""
        with self.current_lock:
            self.cancelled.update(keys)
            current = self.current
            return current if current is not None and current in keys else None

    def take_back(self, keys: Sequence[Key]) -> list[Key]:
        """Of these tasks, those still queued here, removed: they will not start. Called
        from another thread than the task thread."""
        with self.current_lock:
            queued, skip = self.queued, self.taken
            taken = [key for key in keys if key in queued]
            queued.difference_update(taken)
            for key in taken:  # skipped when their turn comes
                skip[key] = skip.get(key, 0) + 1
        return taken

    def run_ended(self, run: int) -> None:
        """Run ``run`` is over: drop what of it is held now, and what its tasks queued or
        running here keep, once they are over. On the communication thread."""
        self.drop_run(run, at_once=True)
        self.queue.put(_Ended(run))

    def drop_run(self, run: int, at_once: bool = False) -> None:
        """Drop every result of run ``run`` held here. ``at_once``: on the communication
        thread, while tasks of it may still be queued (the cancellations they wait for
        are kept then)."""
        keys = [key for key in list(self.store) if key >> KEY_BITS == run]
        if keys:
            self.drop(keys)
        if not at_once and self.cancelled:
            self.cancelled.difference_update(
                [key for key in list(self.cancelled) if key >> KEY_BITS == run]
            )

    def drop_queued(self) -> None:
        """Skip every task received and not started yet."""
        self.dropped += 1  # the rest of the batch being run, too
        self.queued.clear()
        self.taken.clear()
        queue = self.queue
        kept = []
        while True:
            try:
                item = queue.get_nowait()
            except Empty:
                break
            if item is _STOP or type(item) is _Ended:  # the end of a run is not a task
                kept.append(item)
        for item in kept:
            queue.put(item)

    # -- on the task thread ----------------------------------------------------------------

    def serve(self) -> None:
        """Run tasks until :class:`Stop`; report what is still unreported at the end."""
        global _serving
        _serving = self
        self._task_thread = threading.current_thread()
        send_warnings_to(self._cache_warned)
        queue = self.queue
        while True:
            item = queue.get()
            if item is _STOP:
                break
            if type(item) is _Ended:
                self.drop_run(item.run)
                if queue.empty():
                    self.flush()  # what the batch before it held back for it
                continue
            records, functions, dropped = item
            left, half = len(records), len(records) // 2
            for record, func in zip(records, functions):
                if self.dropped != dropped:
                    break
                key = record[_KEY]
                with self.current_lock:
                    if self.taken and key in self.taken:  # given back: it runs elsewhere
                        _skip_taken(self.taken, key)
                        continue
                    self.queued.discard(key)
                    if key in self.cancelled:  # never started: nothing to report
                        self.cancelled.discard(key)
                        continue
                    self.current = key
                try:
                    self.execute(record, func)
                except OSError:
                    raise  # the caller is gone (a task's own errors never get here)
                except BaseException as exc:  # a fault of this loop, not of the task
                    self.fail(key, exc, 0.0)
                self.current = None
                left -= 1
                if left == half and left >= _EARLY_REPORT and self.report_at_half:
                    # Half the batch done: report it now, so that the caller sends more
                    # while this thread runs the rest, instead of after it (then idle).
                    self.flush()
            if queue.empty():  # (with nothing to report: a failure goes at once again)
                self.flush()
        self.flush()

    def flush(self) -> None:
        """Send the outcomes not reported yet; the next failure goes at once."""
        self.failing = False
        finished, failed = self.finished, self.failed
        if finished or failed:
            self.finished = []
            if failed:
                self.failed = []
            # (Moves wait for outcomes to travel with: those of a task that failed at
            # once go with the next ones.)
            moves, self.moves = self.moves, None
            self.send(Done(finished, moves, failed or None))

    def fail(self, key: Key, error: BaseException, duration: float) -> None:
        """Report task ``key`` failed with ``error``: at once (the outcomes batched before
        it go first, so the caller sees them in order) if it is the first since the last
        report, or ran long; else batched with the completions, so that a burst of
        failures costs a message per batch, not per task (the first is what a run that
        stops at its first failure waits for)."""
        report = (key, duration, capture_error(error, dumps))
        if self.failing and duration < REPORT_NOW:
            self.failed.append(report)
            if len(self.finished) + len(self.failed) >= BATCH_SIZE:
                self.flush()
            return
        self.flush()
        self.send(Failed(*report))
        self.failing = True

    def execute(self, record: tuple[Any, ...], func: Any) -> None:
        """Run one task (a :class:`Task` entry of :class:`Run`) and record or report its
        outcome."""
        # Task's fields, in its order (cheaper than reading them from a Task).
        key, token, args, kwargs, inline, shape, deps, remote, want_result, timed, last_use = record
        if key in self.cancelled:
            self.cancelled.discard(key)
            return
        if func is None or isinstance(func, Unloadable):
            reason = func.error if func is not None else LookupError(f"no function {token}")
            self.fail(key, unpickling_error(key, "function", reason), 0.0)
            return
        if type(args) is bytes or type(args) is list:
            try:
                if isinstance(args, bytes):
                    args, kwargs, inline = loads(args)
                else:  # a stream and its out-of-band buffers
                    args, kwargs, inline = loads(args[0], buffers=args[1:])
            except BaseException as exc:
                self.fail(key, unpickling_error(key, "arguments", exc), 0.0)
                return
        values = self._inputs(key, deps, remote, inline) if deps else []
        if values is None:
            return
        if last_use:
            self.drop(last_use)  # nothing else reads them: do not wait to be told
        storing = None
        if timed:
            self.flush()
            self.send(Started(key))
            if stores_result(func):  # the caller's deadline stops when the function returns
                storing = function_returned.set(functools.partial(self._storing, key))
        start = perf_counter()
        try:
            value = call_task(func, args, kwargs, shape, values)
            if AWAITABLE_TYPES.get(type(value)) is not False and is_awaitable(value):
                value = await_blocking(value)
        except BaseException as exc:  # the task's own: it fails its node, never this loop
            self.fail(key, exc, perf_counter() - start)
            return
        finally:
            if storing is not None:
                function_returned.reset(storing)
        duration = perf_counter() - start
        self.store[key] = value
        if want_result:
            try:
                result, nbytes = self.pack_result(key, value)
            except BaseException as exc:
                del self.store[key]
                self.fail(key, serialization_error(key, "result", value, exc), duration)
                return
        else:
            result, nbytes = None, size_of(value)
            if type(value) in self.carried_types and nbytes <= CARRIED_BYTES:
                result = pickle.dumps(value, pickle.HIGHEST_PROTOCOL)
        self.finished.append((key, duration, nbytes, result))
        if len(self.finished) + len(self.failed) >= BATCH_SIZE or duration >= REPORT_NOW:
            self.flush()

    def _cache_warned(self, text: str) -> bool:
        """The cache warned: sent to the caller, if a task of this thread's runs (True)."""
        key = self.current
        if key is None or threading.current_thread() is not self._task_thread:
            return False
        self.send(CacheWarned(key, text))
        return True

    def _storing(self, key: Key, value: Any) -> bool:
        """Task ``key``'s function returned ``value``, which is stored now: the caller
        stops its deadline, and bounds the store instead. (Stored even if the caller
        gave up on the task meanwhile: it stops this process then.)"""
        self.send(Storing(key, store_seconds(value)))
        return True

    def _inputs(
        self, key: Key, deps: tuple[Key, ...], remote: Any, inline: dict[Key, Any] | None
    ) -> list[Any] | None:
        """Task ``key``'s input values in order; ``None`` when it was failed or reported
        lost."""
        if remote is not None:
            try:
                remote = self.remote_inputs(deps, remote)
            except InputError as exc:
                self.fail(key, serialization_error(key, "input", None, exc), 0.0)
                return None
            except BaseException as exc:  # an input that does not unpickle here
                self.fail(key, unpickling_error(key, "input", exc), 0.0)
                return None
        store = self.store
        values: list[Any] = []
        missing: list[Key] = []
        for dep in deps:
            if inline is not None and dep in inline:
                values.append(inline[dep])
            elif remote is not None and dep in remote:
                values.append(remote[dep])
            elif dep in store:
                values.append(store[dep])
            else:
                missing.append(dep)
        if missing:
            self.flush()
            self.send(Lost(key, missing))
            return None
        if remote and self.keep_fetched:
            store.update(remote)
        return values


def _skip_taken(taken: dict[Key, int], key: Key) -> None:
    """An entry of ``key``, given back, is skipped: one fewer left to skip."""
    if taken[key] > 1:
        taken[key] -= 1
    else:
        del taken[key]


def supervised(target: Callable[[], None], on_failure: Callable[[BaseException], None]) -> Any:
    """``target`` wrapped so that whatever escapes it is handed to ``on_failure`` instead
    of ending its thread in silence."""

    def run() -> None:
        try:
            target()
        except BaseException as exc:
            on_failure(exc)

    run.__name__ = getattr(target, "__name__", "supervised")
    return run


def start_thread(
    name: str, target: Callable[[], None], on_failure: Callable[[BaseException], None]
) -> threading.Thread:
    """Start a daemon thread running ``target`` under :func:`supervised`."""
    thread = threading.Thread(target=supervised(target, on_failure), name=name, daemon=True)
    thread.start()
    return thread
