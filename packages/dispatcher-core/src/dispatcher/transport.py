"""The transport SPI: what a backend implements, and nothing more.

Scheduling lives once, in :mod:`dispatcher`'s scheduler: dependency counting, the ready
queue, placement, retries, releasing results, cancellation and observer hooks. A backend
only *moves things*: it starts and stops workers, runs the tasks it is handed on the worker
it is told, and reports what happened. The whole contract is this module:

* :class:`Transport` -- the methods the scheduler calls (``start``, ``submit``, ``free``,
  ``cancel``, ``close``, and, optionally, ``take_back``);
* :class:`EventSink` -- the methods the transport calls back (``task_finished``,
  ``task_failed``, ``task_inputs_lost``, ``worker_added``, ``worker_paused``,
  ``worker_lost``, ``no_worker_left``, and, optionally, ``tasks_finished``,
  ``inputs_moved`` and ``tasks_taken_back``);
* :class:`TaskSpec` -- one task to run: a function, an argument template whose
  :class:`Ref` placeholders stand for results named by key, and where those results live;
* :class:`Unloaded` -- a reported value or exception still in its serialised form, which
  the scheduler loads in the run's own driver rather than on the transport's thread;
* :func:`call_task` -- how a worker turns a spec and its input values into a call, so every
  backend calls functions the same way.

Results are named by integer keys. A result stays on the worker that made it; the
scheduler says, in :attr:`TaskSpec.sources`, which worker holds each input, and the
transport gets the bytes from there to the task's worker (it may move them directly,
worker to worker). A result the caller asked for comes back with its completion
(:attr:`TaskSpec.want_result`). :meth:`Transport.free` drops results nobody needs.

Workers and hosts: a worker runs on a *host*, a machine. Moving a result between two
workers of one host is cheap (shared memory, a pipe); between hosts it crosses a network
link, and costs more per byte and per message, so the scheduler keeps a task on its data's
host first. What each class of link costs is assumed until the transport says what its
moves took (:meth:`EventSink.inputs_moved`, optional): then it is measured. A transport
whose workers span more than one host names each ``name@host``
(:func:`worker_name`; :func:`worker_host` reads it back): the host then shows wherever the
worker does, in hooks, logs, the progress bar and the run report. A worker whose name has
no ``@host`` runs on the caller's host.

A backend whose workers are other processes is built from :mod:`dispatcher.remote`
(messages, function shipping, the in-flight table, the worker loop, error transport).
``dispatcher.testing`` holds an in-memory :class:`~dispatcher.testing.FakeTransport` and
the conformance suite a backend runs to prove itself.
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol

from ._hosts import worker_host, worker_name
from ._template import (
    SHAPE_CALL,
    SHAPE_POSITIONAL,
    SHAPE_TEMPLATE,
    Ref,
    call_task,
    function_kind,
)

__all__ = [
    "KEY_BITS",
    "SHAPE_CALL",
    "SHAPE_POSITIONAL",
    "SHAPE_TEMPLATE",
    "Capabilities",
    "EventSink",
    "Key",
    "Ref",
    "TaskSpec",
    "Transport",
    "Unloaded",
    "call_task",
    "function_kind",
    "worker_host",
    "worker_name",
]

Key = int
"""A result's name: unique within one executor, for as long as the executor lives."""

KEY_BITS = 32
"""A key is its run's number shifted left by this many bits, plus the node's position in
the run's graph: ``key >> KEY_BITS`` is the run a task belongs to (see
:meth:`Transport.run_finished`)."""


class TaskSpec:
    """One task for a worker.

    The scheduler fills every field; a transport reads them and never changes them.
    """

    __slots__ = (
        "_named",
        "args",
        "attempt",
        "deps",
        "func",
        "inline",
        "key",
        "kwargs",
        "last_use",
        "shape",
        "sources",
        "timeout",
        "want_result",
        "worker",
    )

    key: Key
    """The key the result will be known by."""
    func: Callable[..., Any]
    args: tuple[Any, ...]
    kwargs: Mapping[str, Any] | None
    shape: int
    """One of ``SHAPE_CALL``, ``SHAPE_POSITIONAL``, ``SHAPE_TEMPLATE``; see :func:`call_task`."""
    deps: tuple[Key, ...]
    """Keys of the input values, in :class:`Ref` order."""
    sources: tuple[str | None, ...] | None
    """Per input, the worker that holds it (``None``: the value is in ``inline``).

    ``sources`` itself is ``None`` when every input is on ``worker`` already or inline.
    """
    inline: dict[Key, Any] | None
    """Input values held by the caller (constants and ``inputs=``), shipped with the task."""
    worker: str
    """Where to run it."""
    timeout: float | None
    """Seconds the task may run, from its start on the worker; the transport enforces it.

    Where the worker cannot say it started (it is frozen), the clock runs from when the
    task's turn came on that worker: sent to it idle, or the task before it reported."""
    want_result: bool
    """Send the value back with the completion: the caller needs it."""
    attempt: int
    """1 for the first attempt, 2 for the first re-run, ..."""
    last_use: tuple[Key, ...]
    """Inputs held on ``worker`` that nothing else will read: the worker may drop them as
    soon as the task has its input values, instead of waiting for :meth:`Transport.free`
    (a chain sent ahead then keeps one link alive, not the whole queue's worth)."""

    def __init__(
        self,
        key: Key,
        label: Any,
        func: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: Mapping[str, Any] | None,
        shape: int,
        deps: tuple[Key, ...],
        sources: tuple[str | None, ...] | None,
        inline: dict[Key, Any] | None,
        worker: str,
        timeout: float | None,
        want_result: bool,
        attempt: int,
        last_use: tuple[Key, ...] = (),
    ) -> None:
        self.key = key
        self._named = label
        self.func = func
        self.args = args
        self.kwargs = kwargs
        self.shape = shape
        self.deps = deps
        self.sources = sources
        self.inline = inline
        self.worker = worker
        self.timeout = timeout
        self.want_result = want_result
        self.attempt = attempt
        self.last_use = last_use

    @property
    def label(self) -> str:
        """The node's label, for messages."""
        named = self._named
        # The scheduler passes the node itself: its label is worked out only if needed.
        return named if isinstance(named, str) else str(named.label)

    @property
    def description(self) -> str:
        """How the user recognises the node, for messages: its label and arguments
        (``parse('b.txt')``, as ``str(node)`` gives it); the label where only that
        is known."""
        named = self._named
        return named if isinstance(named, str) else str(named)

    def source_of(self, index: int) -> str | None:
        """The worker holding input ``index``; ``None`` when it is inline."""
        if self.inline is not None and self.deps[index] in self.inline:
            return None
        if self.sources is None:
            return self.worker
        return self.sources[index]

    def __repr__(self) -> str:
        return f"<TaskSpec {self.key} {self.label!r} on {self.worker}>"


class Unloaded:
    """A task's value, or its exception, as it came from a worker: not deserialised yet.

    Turning bytes back into objects (unpickling) runs the user's code (``__reduce__``,
    ``__setstate__``, imports), which may be slow, fail, or block forever. A transport
    reports from its own thread, which serves every run of its executor: if it
    deserialised there, one run's bad value would hold up every run's reports, the
    deadlines it enforces and its handling of lost workers. So a transport passes an
    ``Unloaded`` instead, as ``value`` to :meth:`EventSink.task_finished` or as ``error``
    to :meth:`EventSink.task_failed`, and the scheduler calls :meth:`load` in the driver of
    the run the task belongs to (the thread or event loop that runs that run), when it
    applies the report; never for a report it drops as stale. A value that is slow to
    load then holds up that run alone.

    Subclass it (``isinstance`` decides, so that a user's value that happens to have a
    ``load`` method is never mistaken for one; a plain class keeps that check cheap on the
    path every result takes). Keep on the transport's thread what must happen while the
    bytes are known to exist and runs no user code (say, mapping shared memory the worker
    may remove); leave to :meth:`load` what runs the user's code. A value made of builtin
    data only (numbers, strings, containers of them), which the worker can vouch for,
    may be reported loaded: its deserialisation runs no user code.

    :class:`dispatcher.remote.Pickled` and :class:`dispatcher.remote.UnrestoredError`
    are the kit's, for pickles and for exceptions captured by
    :func:`dispatcher.remote.capture_error`.
    """

    __slots__ = ()

    def load(self) -> Any:
        """The value (or the exception) itself; called once, in the run's driver.

        For a value: whatever this raises fails the task with a
        :class:`~dispatcher.SerializationError` naming its node ("could not be unpickled
        where it arrived"), except :class:`KeyboardInterrupt`, which is taken for the
        user's Ctrl-C in the driver's thread and stops the run. For an exception: it
        returns the exception to report, and should not raise (it is reported as
        above if it does).

        A run stopped meanwhile (Ctrl-C, a cancelled ``arun``) cannot interrupt
        deserialisation that waits in C code: the run stops when it returns. Other runs
        are not held up either way.
        """
        raise NotImplementedError


class EventSink(Protocol):
    """What a transport reports. Every method may be called from any thread.

    Reports about a key the scheduler no longer expects (a cancelled or finished run) are
    ignored, and a result they announce is freed through :meth:`Transport.free`.
    """

    def task_finished(
        self,
        key: Key,
        worker: str,
        duration: float,
        nbytes: int | None,
        value: Any = ...,
    ) -> None:
        """The task ran and its result is now held on ``worker``.

        ``value`` is given exactly when the spec had ``want_result``: the value itself,
        or an :class:`Unloaded` that the run's driver loads. ``duration`` is the run time
        in seconds measured on the worker; ``nbytes`` the result's size where known.
        """

    def tasks_finished(
        self, worker: str, finished: Sequence[tuple[Key, float, int | None, Any]]
    ) -> None:
        """Optional: :meth:`task_finished` for each ``(key, duration, nbytes, value)``, in
        one call, for a transport that hears of completions in batches; ``value`` is
        ``...`` where the spec did not have ``want_result``. The run applies them in one
        event rather than one per task. Never called with an empty list."""

    def task_failed(
        self, key: Key, worker: str, error: BaseException | Unloaded, duration: float
    ) -> None:
        """The task raised ``error`` (the user's exception, restored as well as possible,
        or an :class:`Unloaded` that restores it in the run's driver), could not be
        (de)serialized (:class:`~dispatcher.SerializationError`), or ran past its timeout
        (:class:`~dispatcher.TaskTimeoutError`)."""

    def task_inputs_lost(self, key: Key, worker: str, missing: Sequence[Key]) -> None:
        """The task could not start because these inputs are no longer anywhere.

        The scheduler recomputes them and runs the task again; this is not an attempt.
        """

    def worker_added(self, worker: str, slots: int) -> None:
        """A worker (new, or a replacement under the same name) is ready for tasks; or a
        known worker's slots changed. ``0`` slots: as :meth:`worker_paused`, for a reason
        not given."""

    def worker_paused(self, worker: str, reason: str) -> None:
        """The worker keeps its results, which tasks elsewhere may read, but takes no task
        until :meth:`worker_added` gives it slots again: say, every thread it has still
        runs a task given up on, which cannot be stopped. ``reason`` says so in words the
        user knows (the tasks' labels).

        When every worker is paused and a run has tasks left and none out, the run waits
        :attr:`Transport.paused_wait` seconds for one to come back, then fails those
        tasks with a :class:`~dispatcher.DispatcherError` that gives each worker's
        reason and :meth:`Transport.capacity_advice`: so a task that never returns
        cannot make a run wait for ever."""

    def no_worker_left(self, reason: str) -> None:
        """No worker will take a task again (every one is lost, and none could be
        started): every run with tasks left that no worker can take fails them at once
        with ``reason``, instead of waiting for a worker. A worker added later lifts
        this."""

    def inputs_moved(
        self, worker: str, moves: Sequence[tuple[tuple[str, ...], int, float]]
    ) -> None:
        """Optional: ``worker`` fetched inputs from other workers, and timed it. Each move
        is ``(sources, nbytes, seconds)``: the workers the inputs came from, their size
        added up (as ``nbytes`` of :meth:`task_finished` gives a result's), and the
        seconds one task waited for them, from asking to having them usable (fetches a
        task makes at once are one move: their overlap is part of what it waited).

        The scheduler fits each class of link's latency and bandwidth (within a host,
        across hosts) to these and places tasks by them; a move whose sources are on
        both sides is not counted. A transport that never calls this keeps the assumed
        costs. Call it when the inputs are there, or with the completion that follows
        (batched as completions are); a run without moves must not pay for it."""

    def tasks_taken_back(self, worker: str, keys: Sequence[Key]) -> None:
        """Optional, with :meth:`Transport.take_back`: these tasks, asked back from
        ``worker``, were still queued there and were removed before they started. They
        will not run there and nothing more is reported about them; the scheduler places
        them again (not an attempt). A task asked back that had started is not named:
        it finishes, or fails, as usual. Called only with keys, never empty."""

    def worker_lost(self, worker: str, reason: str, running: Sequence[Key] | None = None) -> None:
        """The worker is gone with every result it held and every task it was running.

        ``running``: the tasks it had started and not finished, where the transport knows
        (say, from a slot the worker writes as each task starts). Only they count as
        attempts; the other tasks out on it never started, or finished with results
        that are lost with it, and are run again uncharged. ``None``: not known; then
        every task out on it counts, except on workers that run tasks in order, where
        only the first sent does."""


@dataclass(frozen=True)
class Capabilities:
    """What a transport can do; the conformance suite skips what it cannot, with the reason."""

    survives_worker_loss: bool = False
    """A worker that dies is replaced and its work redone."""
    interrupts_running_tasks: bool = False
    """A task over its timeout is stopped while it runs (not only failed when it returns)."""
    separate_processes: bool = False
    """Tasks run in other processes than the caller (so they cannot share its memory)."""
    runs_tasks_in_order: bool = False
    """Each worker runs one task at a time, in the order it was sent them, and queues the
    rest (its slots are that queue's length). The scheduler then keeps fewer tasks queued
    while tasks are long, and may send a task to the worker that is still computing its
    last missing input, to run right after it without a round trip: such an input's
    source is the task's own worker, and if it is not there when the task starts (its
    producer failed or was cancelled), the transport reports ``task_inputs_lost``. Such a
    task is told started (``task_started``) once its inputs are made, never before. When
    such a worker is lost and the transport does not say what it was running (see
    :meth:`EventSink.worker_lost`), only the first of its tasks, in the order sent, counts
    as an attempt: the others are run again uncharged."""
    takes_back_queued_tasks: bool = False
    """With ``runs_tasks_in_order``: a task queued on a worker behind others can be asked
    back before it starts (:meth:`Transport.take_back`, answered through
    :meth:`EventSink.tasks_taken_back`). The scheduler then asks back, for a worker gone
    idle, a task whose inputs are all made and that is expected to wait clearly longer
    where it is than moving it would cost, and places it again; it never asks back a task
    sent ahead behind its own producer, nor one with a task sent ahead behind it (a chain
    stays a chain), and has at most one request out per worker at a time."""
    keeps_fetched_inputs: bool = False
    """A worker keeps each input it took from another worker for a task that got all its
    inputs there, as if it had made it, until :meth:`Transport.free` drops it. The
    scheduler then counts that copy as one more holder of the result: later tasks on that
    worker read it where it is, those on its host may take it from there, and frees go to
    every holder. So a result crosses to another host once, however many tasks read it
    there."""
    accepts_pending_inputs: bool = False
    """A task may be submitted before its inputs exist, while some of them are still being
    computed, on its own worker or any other. Where it goes: the scheduler sends a task as
    soon as its last missing input is sent, rather than when that input is reported, and
    places it on any worker, by the usual cost of moving its inputs (an input still being
    computed has as its :attr:`TaskSpec.sources` entry the worker computing it); so a chain
    runs without a round trip to the caller per link. What the transport does: it (or the
    cluster under it) holds such a task until every input is made, moves them from their
    sources, then runs it (its timeout counts from that start). When ``task_started`` fires:
    at the real start, never before the task's inputs exist; for a task sent ahead, when the
    last of its inputs is reported finished (the moment such a transport starts it), or at
    the task's own report if that arrives first; the transport reports nothing more than for
    any task. An input never made (its task failed, or was cancelled or lost): the transport
    reports ``task_inputs_lost`` for the waiting task, naming the inputs it did not get, and
    does not run it; the scheduler puts it back to wait for them (for a retry, or a
    recomputation), which is not an attempt. An input that fails for good: the scheduler
    cancels (:meth:`Transport.cancel`) every task it sent ahead downstream of it and skips
    them; they never started, and no ``task_started`` fires for them. A fail-fast run
    cancels everything in flight."""


class Transport(abc.ABC):
    """Base class of a backend. Subclass it, implement the abstract methods, and return an
    instance from your executor factory (see :class:`dispatcher.ExecutorInfo`).

    One transport serves one executor: it may see tasks of several runs at once, and must
    keep going after any one task fails. Methods are called from the thread driving each
    run, so runs on several threads call them at once: they must be thread-safe (what
    one call sends, such as a function's definition, must reach a worker before what
    another call sends that needs it), and must not block for long (queue, then return).
    """

    capabilities: ClassVar[Capabilities] = Capabilities()
    paused_wait: ClassVar[float] = 10.0
    """Seconds a run waits, once every worker is paused (see
    :meth:`EventSink.worker_paused`) and none of its tasks is out, for a worker to come
    back, before it fails with "no capacity left"."""

    @abc.abstractmethod
    def start(self, events: EventSink) -> Mapping[str, int]:
        """Start the workers; return each worker's name and how many tasks may be assigned
        to it at once (tasks beyond what it runs at once wait in its queue)."""

    @abc.abstractmethod
    def submit(self, tasks: Sequence[TaskSpec]) -> None:
        """Run these tasks, each on its ``worker``. Report each through the event sink,
        from any thread, at any time (even before this call returns)."""

    @abc.abstractmethod
    def free(self, worker: str, keys: Sequence[Key]) -> None:
        """Drop these results from ``worker``: nobody needs them any more."""

    def runs_in_caller(self, func: Callable[..., Any]) -> bool:
        """May the scheduler call ``func`` itself, at once, in its own thread?

        Only an in-process transport whose worker *is* the calling thread says yes, and
        only for functions it would call plainly (not coroutine functions). Such a task
        then skips :meth:`submit` and the event sink altogether: its result is held with
        the caller's values and handed to submitted tasks through
        :attr:`TaskSpec.inline`. Asked once per distinct function per run. The default,
        for every transport with workers of its own, is no.
        """
        return False

    def cancel(self, tasks: Sequence[TaskSpec]) -> None:  # noqa: B027 - optional
        """Best effort: do not start these tasks, abandon them if running.

        Nothing more needs to be reported about them. The default does nothing: their
        reports arrive later and are ignored.
        """

    def take_back(self, worker: str, keys: Sequence[Key]) -> None:  # noqa: B027 - optional
        """Of these tasks, sent to ``worker`` and not reported yet, give back those that
        have not started (see ``Capabilities.takes_back_queued_tasks``): remove them from
        the worker's queue, forget them, and name them in one
        :meth:`EventSink.tasks_taken_back` (from any thread, at any time; not at all when
        none was removed). A task that started, or starts meanwhile, is not named: it
        runs and is reported as usual, so a task is either taken back or run, never both.
        Must not block. The default gives back nothing."""

    def capacity_advice(self) -> str:
        """What the user can do when no worker can take a task: the last line of the "no
        capacity left" error (see :meth:`EventSink.worker_paused`). The default says
        nothing more."""
        return ""

    def run_finished(self, run: int) -> None:  # noqa: B027 - optional
        """Run number ``run`` (``key >> KEY_BITS`` of its tasks' keys) is over, however it
        ended: none of its tasks will be submitted again, and the reports of those still
        out are ignored. Release what was kept for it alone. The default does nothing."""

    @abc.abstractmethod
    def close(self) -> None:
        """Stop every worker and release every resource. Idempotent."""
