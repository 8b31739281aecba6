"""A worker rank: its main thread runs the hub (all MPI traffic), a second thread runs
tasks in order (the kit's :class:`~dispatcher.remote.TaskRunner`). Results stay here until
freed; another rank that needs one asks for it and gets it straight from here.

The hub says :class:`Alive` to rank 0 when it has said nothing for :data:`HEARTBEAT`
seconds, whether a task runs or not: a rank frozen while idle may hold results another
rank's task waits for. A task that holds the GIL (a long regular expression, a C extension)
stops the hub too: rank 0 reads the silence as "stuck" (see the transport).

Rank 0 says :class:`Alive` to every rank too, each second. A rank that has heard nothing
from it for its limit (``DISPATCHER_MPI_ROOT_SILENCE_LIMIT``) ends the job, naming it:
rank 0's host cut off from the network closes no connection, and the ranks would wait
for it for ever."""

from __future__ import annotations

import pickle
import threading
import time
import traceback
from collections.abc import Sequence
from typing import Any

from dispatcher.remote import (
    Cancel,
    InputError,
    Run,
    Started,
    Stop,
    TaskRunner,
    size_of,
    start_thread,
)

from ._channel import STARVED, Hub, abort_job, encode
from ._held_arguments import drop_held, hold
from ._messages import (
    IDLE,
    Alive,
    Busy,
    Bye,
    Data,
    DropArguments,
    Fetch,
    HoldArgument,
    Peer,
    Reset,
)
from ._silence import HEARTBEAT, ROOT_LIMIT_VARIABLE, root_silence_limit

ROOT = 0
_STARTED_WAIT = 1.0  # longest a timed task waits for its "started" to leave


class WorkerRank(TaskRunner):
    report_at_half = True
    keep_fetched = True  # a second task here, or on this host, reads the copy

    def __init__(self, comm: Any, peers: Sequence[tuple[str, int]] | None = None) -> None:
        """``peers``: every rank's (host, pid), for the hub (see :class:`Hub`)."""
        super().__init__()
        self.rank = comm.Get_rank()
        self.hub = Hub(comm, self.deliver, peers=peers)
        self.hub.tick = self._tick
        self.peers = peers
        self.reported = time.monotonic()
        """When this rank last sent rank 0 something."""
        self.root_silence_limit = root_silence_limit()
        self.root_heard = self._last_tick = self.reported
        """When rank 0 was last heard (or this rank's hub came back from not running)."""
        self.root_spoke = False
        self.replies: dict[int, tuple[threading.Event, list[Data], int]] = {}
        """The task thread's fetches waiting for their :class:`Data`, by request, with the
        rank asked."""
        self.unreachable: set[int] = set()
        """Ranks rank 0 gave up on (:class:`Peer`): nothing is asked of them."""
        self._requests = 0
        self.failure: str | None = None
        """Why the task thread ended, if it did: the job ends with it."""

    def serve(self) -> None:  # type: ignore[override]
        """Until rank 0 says stop. Returns on the main thread, so MPI can finalise even if
        a task that ran past its timeout is still running; raises if the task thread
        failed (the launcher then ends the job, with the reason)."""
        start_thread("dispatcher-mpi-tasks", super().serve, self._tasks_failed)
        self.hub.loop()
        self.hub.flush()
        if self.failure is not None:
            raise RuntimeError(f"rank {self.rank}: the task thread failed:\n{self.failure}")

    def _tasks_failed(self, error: BaseException) -> None:
        self.failure = "".join(traceback.format_exception(error))
        self.hub.running = False
        self.hub.wake()

    # -- the kit's hooks (on the task thread) ----------------------------------------------

    def send(self, message: Any) -> None:
        self.reported = time.monotonic()
        if type(message) is not Started:
            self.hub.post(ROOT, message)
            return
        # The task may hold the GIL from its first instruction, and then the hub could not
        # send this: its deadline would never start. Start the send before the task.
        sent = threading.Event()
        self.hub.post(ROOT, message, sent)
        sent.wait(_STARTED_WAIT)

    def _tick(self) -> None:
        """On the hub thread, every turn: a sign of life, and a look at rank 0's."""
        now = time.monotonic()
        if now - self._last_tick > STARVED:
            self.root_heard = now  # this rank did not run: rank 0's silence counts anew
        self._last_tick = now
        if now - self.reported >= HEARTBEAT:
            self.reported = now
            self.hub.post(ROOT, Alive())
        if self.root_spoke:
            self.root_spoke = False
            self.root_heard = now
        elif now - self.root_heard > self.root_silence_limit:
            self._root_silent(now - self.root_heard)

    def _root_silent(self, seconds: float) -> None:
        """Rank 0 has said nothing for ``seconds``: end the job, naming it."""
        host, pid = self.peers[ROOT] if self.peers else ("?", 0)
        own = self.peers[self.rank][0] if self.peers else "?"
        abort_job(
            self.hub.comm,
            f"dispatcher_mpi: rank {self.rank} (host {own}) has not heard from rank 0 (host "
            f"{host}, pid {pid}) for {seconds:.0f} s: its host may be cut off from the network, "
            f"or the process frozen (the limit is {self.root_silence_limit:g} s: "
            f"{ROOT_LIMIT_VARIABLE}); ending the job\n",
            1,
        )

    def pack_result(self, key: int, value: Any) -> tuple[Any, int]:
        # Pickled here, so that a value that cannot be fails its own node rather than the
        # hub, and rank 0 unpickles each result on its own. The buffers stay out of band:
        # the hub sends them raw, copying nothing big.
        header, buffers = encode(value)
        return (header, [pickle.PickleBuffer(b) for b in buffers]), size_of(value)

    def remote_inputs(self, deps: tuple[int, ...], sources: tuple[int, ...]) -> dict[int, Any]:
        """Fetched from the ranks that hold them (``sources``, in ``deps`` order; 0 for an
        input sent with the task): one request to each such rank, all sent at once. The
        wait, from the requests to the values unpickled, is reported as one move (see
        :meth:`~dispatcher.remote.TaskRunner.moved`): they overlap, and it is what the
        task waited."""
        wanted: dict[int, dict[int, None]] = {}  # rank -> keys, in order, once each
        store = self.store
        for key, source in zip(deps, sources, strict=True):
            # (One held here already is a copy an earlier task here fetched: kept.)
            if source > 0 and source != self.rank and key not in store:
                if source in self.unreachable:
                    continue  # left out: reported lost, and recomputed elsewhere
                wanted.setdefault(source, {})[key] = None
        if not wanted:
            return {}
        start = time.perf_counter()
        waiters: list[tuple[threading.Event, list[Data], int]] = []
        for source, keys in wanted.items():
            request = self._requests = self._requests + 1
            waiter: tuple[threading.Event, list[Data], int] = (threading.Event(), [], source)
            self.replies[request] = waiter
            waiters.append(waiter)
            self.hub.expecting += 1
            self.hub.post(source, Fetch(request, tuple(keys)))
            if source in self.unreachable:  # given up on meanwhile: the hub may have missed it
                self._give_up(request, waiter)
        # Wait for every reply before looking at any, so none is left behind.
        packed: dict[int, list[Any]] = {}
        together: list[tuple[tuple[int, ...], list[Any]]] = []
        unsendable: str | None = None
        for event, reply, _ in waiters:
            event.wait()
            self.hub.expecting -= 1
            self.replies.pop(reply[0].request, None)
            data = reply[0]
            for key, found, value in data.entries:
                if found:
                    packed[key] = value
                elif value is not None:
                    unsendable = value
            if data.values is not None:
                together.append((data.keys, data.values))
        if unsendable is not None:
            raise InputError(f"cannot pickle '{unsendable}'")
        # Unpickled here, by the task that wants them: one that cannot be fails the task.
        values = {key: pickle.loads(raw[0], buffers=raw[1:]) for key, raw in packed.items()}
        for held, raw in together:
            values.update(zip(held, pickle.loads(raw[0], buffers=raw[1:]), strict=True))
        if len(values) == sum(map(len, wanted.values())):  # a wait cut short says nothing
            nbytes = sum(map(size_of, values.values()))
            self.moved(tuple(wanted), nbytes, time.perf_counter() - start)
        return values

    # -- on the hub thread -----------------------------------------------------------------

    def deliver(self, source: int, message: Any) -> None:
        if source == ROOT:
            self.root_spoke = True
        kind = type(message)
        if kind is Run:
            self.receive(message)
        elif kind is HoldArgument:
            hold(message)
        elif kind is DropArguments:
            drop_held(message.names)
        elif kind is Fetch:
            self._serve_fetch(source, message)
        elif kind is Data:
            waiter = self.replies.get(message.request)
            if waiter is not None:
                waiter[1].append(message)
                waiter[0].set()
        elif kind is Cancel:
            running = self.cancel(message.keys)
            if running is not None:
                self.hub.post(source, Busy(running))
        elif kind is Reset:
            # Rank 0 gave up on what it sent here: drop queued tasks and held results.
            self.drop_queued()
            self.store.clear()
            current = self.current
            self.hub.post(source, Busy(IDLE if current is None else current))
        elif kind is Peer:
            self._peer(message)
        elif kind is Stop:
            self.hub.post(source, Bye())
            self.hub.running = False
        elif kind is Alive:
            pass  # rank 0 is there (see root_spoke)
        else:
            self.receive(message)

    def _peer(self, peer: Peer) -> None:
        """Rank 0 gave up on a rank (or has it back): fetches waiting for it end, with
        what they asked for left out (so reported lost, and recomputed elsewhere)."""
        if peer.reachable:
            self.unreachable.discard(peer.rank)
            return
        self.unreachable.add(peer.rank)
        for request, waiter in list(self.replies.items()):
            if waiter[2] == peer.rank:
                self._give_up(request, waiter)

    @staticmethod
    def _give_up(request: int, waiter: tuple[threading.Event, list[Data], int]) -> None:
        waiter[1].append(Data(request, []))
        waiter[0].set()

    def _serve_fetch(self, source: int, fetch: Fetch) -> None:
        store = self.store
        held = tuple(key for key in fetch.keys if key in store)
        try:
            # Pickled apart from the message, so that the fetching rank unpickles them on
            # the task thread that wants them: a value that cannot be unpickled there
            # fails that task, not the rank's hub.
            header, buffers = encode(tuple([store[key] for key in held]))
        except BaseException:  # pickling runs the values' own code: say which one failed
            reply = Data(fetch.request, [self._pack_held(key) for key in fetch.keys])
        else:
            missing = [(key, False, None) for key in fetch.keys if key not in store]
            values = [header, *map(pickle.PickleBuffer, buffers)]
            reply = Data(fetch.request, missing, held, values)
        self.hub.post(source, reply)

    def _pack_held(self, key: int) -> tuple[int, bool, Any]:
        """A :class:`Data` entry for result ``key``."""
        if key not in self.store:
            return key, False, None
        value = self.store[key]
        try:
            # Pickled apart from the message, so that the fetching rank unpickles it on
            # the task thread that wants it: a value that cannot be unpickled there fails
            # that task, not the rank's hub.
            header, buffers = encode(value)
        except BaseException as exc:  # pickling runs the value's own code
            return key, False, f"{type(value).__module__}.{type(value).__qualname__}: {exc}"
        return key, True, [header, *map(pickle.PickleBuffer, buffers)]
