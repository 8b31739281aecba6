"""What runs on a dask worker: one dispatcher task, called the way every backend calls it.

Each task reaches the worker as ``run_task(key, payload, *inputs)``: ``payload`` is the
function, its argument template and the caller's inline values, pickled by the caller (so
a value that does not pickle fails as that node's :class:`~dispatcher.SerializationError`
before dask sees it); ``inputs`` are the results of earlier tasks, which dask moves from
worker to worker itself. The task's value is returned to dask and stays on the worker.
A fused run of short tasks (:func:`run_tasks`, see :mod:`._fusing`) calls each the same
way, one after another, and returns their values together; a task reading one of them is
told its index (``picks``).

A value the caller wants is pickled once, on its worker, and kept with its bytes as a
:class:`Shipped`: dask carries those bytes to the caller, who unpickles them itself, so
that a value failing to unpickle there (even by raising ``SystemExit``) fails its node
instead of dask's event loop; a task reading it elsewhere unpickles it there.

A failure is raised as :class:`TaskFailure`, carrying the exception made ready to cross
processes (:func:`dispatcher.transport.capture_error`): the caller restores the user's own
exception with the worker's traceback, or a :class:`~dispatcher.RemoteError` when it
cannot be brought back. The run time and result size travel to the caller as a worker
event on a topic named by the caller: one small message per task, ahead of dask's own
completion message on the same connection, and in the same batch (:mod:`._reports`).
A wanted value of a few pickled bytes (:data:`CARRIED_BYTES`) travels in that message
too: the caller then has it without gathering it, a round trip through the scheduler
saved. A task with a timeout also says when it starts (another event, on its own topic):
the caller times it from then.
It waits for that word to leave the worker before calling the function: a function that
holds the GIL from its first instruction (a long call into C code) starves the worker's
event loop, which would otherwise never send it, and the task would never be timed.

With the run's cache (:mod:`dispatcher._cache_plan`), a task's timeout bounds its function,
not the store of its result: a cached task with a timeout is timed until its function
returns (:data:`~dispatcher._cache_plan.function_returned`), and, returned in time, says so
on the same topic (:data:`STORING`), with the store's own bound, which the caller's deadline
becomes. It waits for that word to leave too (storing a large result may hold the GIL),
unless the result is small and its deadline far (:data:`QUICK_STORE_BYTES`).
A result whose function ran past its timeout is not stored. The cache's warnings on a
worker (a result not stored on a full disk, say) go to the caller on that topic too
(:data:`CACHE_WARNED`, :func:`dispatcher._cache.send_warnings_to`), to be warned there,
naming the node. Tasks without a timeout or a cache say nothing more.
"""

from __future__ import annotations

import asyncio
import math
import pickle
import threading
import time
from time import perf_counter
from typing import Any

from dispatcher import SerializationError
from dispatcher.remote import (
    STORE_RATE,
    STORE_SECONDS,
    FunctionClock,
    WireError,
    capture_error,
    dumps_for,
    function_returned,
    is_awaitable,
    send_warnings_to,
    size_of,
    store_seconds,
    stores_result,
    unpickling_error,
)
from dispatcher.remote import dumps as _kit_dumps
from dispatcher.transport import TaskSpec, call_task

from ._held import Held, Moved, Unsendable, _CouldNotSend, pickled

__all__ = [
    "CACHE_WARNED",
    "QUICK_STORE_BYTES",
    "STORING",
    "Shipped",
    "TaskFailure",
    "dumps",
    "pack",
    "run_task",
    "run_tasks",
    "still_running",
]

_ABSENT: Any = object()

CARRIED_BYTES = 1024
"""A wanted value pickled to at most this many bytes travels with its task's report.
(dask's scheduler keeps the last thousand events of a topic: at most a MiB of these.)"""

STORING = "storing"
"""A task's word ``(STORING, key, seconds)``: its function returned within its timeout,
and its result is being stored in the run's cache, which may take ``seconds`` at most
(:func:`~dispatcher._cache_plan.store_seconds`). (The word that it started is its key.)"""

CACHE_WARNED = "cache-warned"
"""A task's word ``(CACHE_WARNED, key, text, worker address)``: the run's cache warned
``text`` while it ran."""

QUICK_STORE_BYTES = 1 << 20
"""A timed cached task's result smaller than this (by
:func:`~dispatcher._cache_plan.store_seconds`), stored with more than
:data:`START_WORD_WAIT` left before its deadline, does not wait for its :data:`STORING`
word to leave its worker (a wait of a few ms, the worker's batching interval): its store
cannot hold the GIL for that long."""

_running = threading.local()
"""``task``: the task this thread runs, and the topic its words go on (see
:func:`_cache_warned`); None between tasks."""


def dumps(obj: Any) -> bytes:
    """How the caller pickles a task's payload, and a worker an exception: as every
    backend does, so that the code of a function shipped by value keeps its file name for
    the worker's traceback."""
    return _kit_dumps(obj)


class TaskFailure(Exception):
    """A task did not give a value: it raised, timed out, or its value would not travel.

    ``key`` is the task that failed: dask hands a failure on to the tasks that were
    waiting for its value, and the caller tells the two apart by it.
    """

    def __init__(
        self, key: int, error: WireError | None, duration: float, timeout: float | None = None
    ) -> None:
        super().__init__(key, error, duration, timeout)
        self.key = key
        self.error = error
        """The exception, or None when the task ran past ``timeout``."""
        self.duration = duration
        self.timeout = timeout

    def __repr__(self) -> str:
        # What dask's "Compute Failed" log line shows: not the pickled payload.
        return f"TaskFailure({self})"

    def __str__(self) -> str:
        if self.error is None:
            return f"task {self.key} ran past its timeout of {self.timeout} s"
        return f"task {self.key} failed: {self.error.type_name}: {self.error.message}"


class Shipped:
    """A result the caller wants: its pickled ``data``, and on the worker that made it the
    ``value`` itself. It travels as the bytes alone, which are unpickled only where the
    value is used (:meth:`load`), or by the caller, who catches whatever that raises."""

    __slots__ = ("data", "value")

    def __init__(self, data: bytes, value: Any = _ABSENT) -> None:
        self.data = data
        self.value = value

    def __reduce__(self) -> tuple[Any, ...]:
        return (Shipped, (self.data,))

    def load(self) -> Any:
        """The value, unpickled on first use where it arrived."""
        value = self.value
        if value is _ABSENT:
            value = self.value = pickle.loads(self.data)
        return value


def pack(spec: TaskSpec, inline: dict[int, Any], picks: dict[int, int] | None = None) -> bytes:
    """The caller's side of :func:`run_task`: ``spec``'s payload, with ``inline`` the
    values of the inputs the caller holds, by position, and ``picks`` the inputs that are
    one member of a fused run's values (see :func:`run_tasks`): the position among the
    task's dask inputs, and the member's index. Raises
    :class:`~dispatcher.SerializationError` naming the node when it does not pickle."""
    call = (
        spec.func,
        spec.args,
        spec.kwargs,
        spec.shape,
        inline,
        spec.want_result,
        spec.timeout,
        picks or None,
    )
    return dumps_for(spec, "function or arguments", call, dumps)


def run_task(
    key: int, payload: bytes, stats_topic: str | None, start_topic: str, *inputs: Any
) -> Any:
    """Run one task on this worker and return its value (see the module's docstring).

    ``payload`` unpickles to ``(func, args, kwargs, shape, inline, want, timeout, picks)``:
    ``inline`` maps the position of each input the caller held to its value; ``inputs``
    fill the other positions in order (``picks``: those that are a fused run's values, of
    which the task reads one member). A task with a timeout says on ``start_topic`` that
    it starts: the caller times it from then.
    """
    start = perf_counter()
    outcome, want = _call(key, payload, inputs, start_topic, start)
    if isinstance(outcome, TaskFailure):
        raise outcome
    duration = perf_counter() - start
    if not want:
        if stats_topic is not None:
            _report(stats_topic, key, duration, size_of(outcome), None)
        return Held(key, outcome)
    shipped = _shipped(key, outcome, duration)
    if isinstance(shipped, TaskFailure):
        raise shipped
    if stats_topic is not None:
        data = shipped.data
        _report(
            stats_topic,
            key,
            duration,
            size_of(outcome),
            data if len(data) <= CARRIED_BYTES else None,
        )
    return shipped


def run_tasks(
    tasks: bytes, stats_topic: str, word_topic: str = "", *inputs: Any
) -> tuple[Any, ...]:
    """Run a fused run of tasks on this worker, one after another in this thread, and
    return their values, by position (a failed task's :class:`TaskFailure` in its place).

    ``tasks`` unpickles to ``([(key, payload, reads, drops), ...], picks)``: each task's
    key and payload as :func:`run_task` takes them; what it reads, in the order of its
    inputs the caller did not hold: the value of an earlier task of the run (its
    position, from 0) or one of ``inputs`` (``-1 - index``; ``picks`` maps such an index
    to the member read when that input is another fused run's values); and the positions
    of the run's values it was the last to read, dropped once it has run without failing
    (a stand-in in their place says so to any task that would still read them). Its
    tasks are not timed and their values not wanted by the caller. dask's worker pays
    for each task it runs (a turn of its event loop and two thread hand-offs): short
    tasks run this way pay it once. Each task's run time, result size and failure
    (pickled) go to the caller in one event on ``stats_topic``, ahead of the run's
    completion; the run's cache warnings go on ``word_topic`` (:data:`CACHE_WARNED`), as
    a task run alone says them. Once the run is released (cancelled: dask cannot stop a
    thread), the tasks not yet started are not; nor is a task whose input failed, which
    fails with that input's failure (the caller tells the two apart by its key).
    """
    members: list[tuple[int, bytes, tuple[int, ...], tuple[int, ...]]]
    members, picks = pickle.loads(tasks)
    values: list[Any] = []
    stats: list[tuple[int, float, int | None, bytes | None]] = []
    for key, payload, reads, drops in members:
        if values and _released():
            values.append(TaskFailure(key, None, 0.0))
            continue
        read = tuple(values[i] if i >= 0 else _input(inputs, -1 - i, picks) for i in reads)
        failed = next((v for v in read if isinstance(v, TaskFailure)), None)
        if failed is not None:
            outcome: Any = TaskFailure(failed.key, failed.error, failed.duration, failed.timeout)
            duration = 0.0
        else:
            start = perf_counter()
            outcome, _ = _call(key, payload, read, word_topic, start)
            duration = perf_counter() - start
        del read
        values.append(outcome)
        if isinstance(outcome, TaskFailure):
            # Its inputs stay: the task may be tried again, and read them again.
            stats.append((key, duration, None, _failure_bytes(outcome)))
            continue
        stats.append((key, duration, size_of(outcome), None))
        for i in drops:
            values[i] = TaskFailure(members[i][0], None, 0.0)
    _send_report(stats_topic, stats)
    return tuple(
        v if isinstance(v, TaskFailure) else Held(member[0], v)
        for v, member in zip(values, members, strict=True)
    )


def _input(inputs: tuple[Any, ...], index: int, picks: dict[int, int]) -> Any:
    """Input ``index`` of a fused run: the member read, where it is another run's values."""
    value = inputs[index]
    member = picks.get(index)
    return value if member is None else value[member]


def _failure_bytes(failure: TaskFailure) -> bytes:
    try:
        return dumps(failure)
    except Exception as exc:  # (a WireError is made to pickle: only in a broken process)
        error = capture_error(RuntimeError(f"the failure would not pickle: {exc!r}"), dumps)
        return dumps(TaskFailure(failure.key, error, failure.duration))


def _released() -> bool:
    """Has the dask task running in this thread been released by its client (or its
    worker started closing)? Asked between the tasks of a fused run."""
    from distributed import get_worker
    from distributed.worker import thread_state

    try:
        worker = get_worker()
        task = worker.state.tasks.get(thread_state.key)
    except Exception:  # not on a worker: nobody releases it
        return False
    return task is None or task.state in ("cancelled", "released", "forgotten")


def _call(
    key: int, payload: bytes, inputs: tuple[Any, ...], start_topic: str, start: float
) -> tuple[Any, bool]:
    """Task ``key``'s value, or the :class:`TaskFailure` it ended with; and whether the
    caller wants the value."""
    # Failures are raised outside the ``except`` blocks that catch them: dask pickles an
    # exception's context too (tblib), and the user's exception may refuse pickling.
    failure: TaskFailure | None = None
    try:
        func, args, kwargs, shape, inline, want, timeout, picks = pickle.loads(payload)
    except BaseException as exc:  # SystemExit included: it fails the node, not the worker
        error = unpickling_error(key, "function or arguments", exc)
        failure = TaskFailure(key, capture_error(error, dumps), perf_counter() - start)
    if failure is not None:
        return failure, False
    # Timed from here, as the caller times it from the event below: loading the function
    # (imports, on a fresh worker) does not count.
    called = perf_counter()
    clock = None
    if timeout is not None and timeout < math.inf:
        _say(start_topic, key)
        if stores_result(func):  # its store is not its function: see _StoreWord
            clock = _StoreWord(called, timeout, start_topic, key)
    if picks:
        picked = _picked(inputs, picks)
        if isinstance(picked, TaskFailure):
            return picked, want  # an input failed: the caller tells by its key
        inputs = picked
    try:
        if inline:
            given = iter(inputs)
            values = [
                inline[i] if i in inline else next(given) for i in range(len(inline) + len(inputs))
            ]
        else:
            values = list(inputs)
        for i, value in enumerate(values):
            if type(value) in _LOADED:
                values[i] = value.load()
    except _CouldNotSend as exc:
        failure = TaskFailure(key, capture_error(exc.error_of(key), dumps), perf_counter() - start)
    except BaseException as exc:
        error = unpickling_error(key, "input", exc)
        failure = TaskFailure(key, capture_error(error, dumps), perf_counter() - start)
    if failure is not None:
        return failure, want
    _running.task = (key, start_topic)  # whom the cache's warnings name
    token = None if clock is None else function_returned.set(clock)
    try:
        value = call_task(func, args, kwargs, shape, values)
        if is_awaitable(value):
            value = _wait(value, None if timeout is None else called + timeout - perf_counter())
    except _Late:  # the coroutine was cancelled at its deadline: its thread is free again
        failure = TaskFailure(key, None, perf_counter() - start, timeout)
    except BaseException as exc:
        failure = TaskFailure(key, capture_error(exc, dumps), perf_counter() - start)
    _running.task = None
    if token is not None:
        function_returned.reset(token)
    if failure is not None:
        return failure, want
    if timeout is not None:
        ran = perf_counter() - called
        if clock is not None:
            ran = clock.ran(ran)  # (its store not counted)
        if ran > timeout:
            # Late, but back before the caller failed it at its deadline (or untimed there).
            return TaskFailure(key, None, perf_counter() - start, timeout), want
    return value, want


class _StoreWord(FunctionClock):
    """The :data:`~dispatcher._cache_plan.function_returned` of a cached task with a
    timeout: it times the function alone and, when it returned in time, tells the caller
    (:data:`STORING`), whose deadline for the task becomes the bound on its store."""

    __slots__ = ("key", "topic")

    def __init__(self, start: float, timeout: float, topic: str, key: int) -> None:
        super().__init__(start, timeout)
        self.topic = topic
        self.key = key

    def __call__(self, value: Any) -> bool:
        """The function returned ``value``: store it if that was within the timeout."""
        if not super().__call__(value):
            return False  # the task fails as timed out: nothing it never reported is stored
        seconds = store_seconds(value)
        word = (STORING, self.key, seconds)
        assert self.returned is not None
        small = seconds < STORE_SECONDS + QUICK_STORE_BYTES / STORE_RATE
        if small and self.limit - self.returned > START_WORD_WAIT:
            _log_event(self.topic, word)  # (sent on the event loop's next turn)
        else:
            _say(self.topic, word)
        return True


def _cache_warned(text: str) -> bool:
    """The run's cache warned ``text`` in this process: sent to the caller if a task of
    this thread runs on a dask worker (True), else warned here."""
    task = getattr(_running, "task", None)
    if task is None:
        return False
    from distributed import get_worker

    try:
        worker = get_worker()
    except ValueError:  # not on a worker (dask's own local scheduler): nobody listens
        return False
    key, topic = task
    worker.log_event(topic, (CACHE_WARNED, key, text, worker.address))
    return True


send_warnings_to(_cache_warned)


def _picked(inputs: tuple[Any, ...], picks: dict[int, int]) -> tuple[Any, ...] | TaskFailure:
    """``inputs`` with each fused run's values replaced by the member read (see
    :func:`run_tasks`); the member's own failure if it failed (or never ran)."""
    values = list(inputs)
    for position, index in picks.items():
        value = values[position][index]
        if isinstance(value, TaskFailure):
            return TaskFailure(value.key, value.error, value.duration, value.timeout)
        values[position] = value
    return tuple(values)


def _shipped(key: int, value: Any, duration: float) -> Shipped | TaskFailure:
    """``value`` pickled for the caller, or a failure naming the node if it cannot travel."""
    data = pickled(key, "result", value)
    if isinstance(data, SerializationError):
        return TaskFailure(key, capture_error(data, dumps), duration)
    return Shipped(data, value)


def _sizeof_shipped(shipped: Shipped) -> int:
    # What dask counts against the worker's memory: the bytes, and the value beside them.
    held = 0 if shipped.value is _ABSENT else size_of(shipped.value)
    return len(shipped.data) + held


def _register_sizeof() -> None:
    try:
        from dask.sizeof import sizeof
    except ImportError:  # dask is distributed's dependency: only without either
        return
    sizeof.register(Shipped)(_sizeof_shipped)


_register_sizeof()

_LOADED = frozenset({Shipped, Held, Moved, Unsendable})
"""The types of inputs a task loads before its call (see :mod:`._held`)."""


class _Late(Exception):
    """A coroutine task was cancelled at its deadline."""


def _wait(awaitable: Any, seconds: float | None) -> Any:
    """Run a coroutine task to its end, or cancel it once ``seconds`` (if any) have
    passed: unlike a plain function, it can be stopped, and its thread freed."""

    async def wait() -> Any:
        if seconds is None or seconds == math.inf:
            return await awaitable
        try:
            async with asyncio.timeout(max(seconds, 0.0)) as scope:
                return await awaitable
        except TimeoutError:
            if scope.expired():  # not a TimeoutError of the task's own
                raise _Late from None
            raise

    return asyncio.run(wait())


def _report(topic: str, key: int, duration: float, nbytes: int, data: bytes | None) -> None:
    _send_report(topic, (key, duration, nbytes, data))


def _send_report(topic: str, report: Any) -> None:
    """Send a task's ``report`` ahead of its completion, in the same batch if this
    worker has the transport's plugin (see :mod:`._reports`)."""
    from distributed import get_worker

    from ._reports import hold_report

    try:
        worker = get_worker()
    except ValueError:  # not on a worker (dask's own local scheduler): nobody listens
        return
    if not hold_report(worker, topic, report):
        worker.log_event(topic, report)


def _log_event(topic: str, message: Any) -> None:
    from distributed import get_worker

    try:
        worker = get_worker()
    except ValueError:  # not on a worker (dask's own local scheduler): nobody listens
        return
    worker.log_event(topic, message)


START_WORD_WAIT = 1.0
"""Seconds a timed task waits at most for the word that it started to leave its worker
(a worker whose connection to the scheduler is down drops it anyway)."""


def _say(topic: str, word: Any) -> None:
    """Tell the caller, through the scheduler, a task's ``word`` (its key: it starts now;
    or :data:`STORING`), and return once that message has been written to the scheduler's
    connection (or after :data:`START_WORD_WAIT`): the task's function (or the store of
    its result) may hold the GIL from its first instruction, and the worker's event loop,
    which sends the message, then never runs."""
    from distributed import get_worker

    try:
        worker = get_worker()
    except ValueError:  # not on a worker (dask's own local scheduler): nobody listens
        return
    message = {"op": "log-event", "topic": topic, "msg": word}
    worker.loop.add_callback(worker.batched_send, message)
    deadline = perf_counter() + START_WORD_WAIT
    while not _written(worker, message) and perf_counter() < deadline:
        time.sleep(0.0005)  # (sleeping gives the event loop the GIL)


def _written(worker: Any, message: dict[str, Any]) -> bool:
    """Has ``message``, given to the worker's stream to the scheduler, been written?
    A batch is logged once written; without that log, once it left the buffer."""
    stream = getattr(worker, "batched_stream", None)
    if stream is None or stream.comm is None or stream.comm.closed():
        return True  # never sent: waiting would not help
    if any(sent is message for sent in stream.buffer):
        return False
    log = stream.recent_message_log
    if not log.maxlen:
        return True
    # The batches written last (the message's, if it was written, is among them).
    for batch in list(log)[-4:]:
        if isinstance(batch, list) and any(sent is message for sent in batch):
            return True
    return False


def still_running(keys: list[str], dask_worker: Any = None) -> dict[str, bool]:
    """Run on a worker (``Client.run``): of these task keys, those it still knows, each
    with whether one of its threads runs it now (a task released while it runs stays
    there, cancelled, until its call returns)."""
    state = dask_worker.state
    tasks = state.tasks
    running = state.executing | state.long_running
    found: dict[str, bool] = {}
    for key in keys:
        ts = tasks.get(key)
        if ts is not None:
            found[key] = ts in running
    return found
