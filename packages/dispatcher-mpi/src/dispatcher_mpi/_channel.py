"""Point-to-point channels between ranks, driven by one thread per rank.

Every MPI call of a rank happens on its :class:`Hub` thread, so MPI needs no more than
``MPI_THREAD_SERIALIZED``, and no thread ever blocks another: other threads put messages
in the hub's outbox and get incoming messages through a callback.

A message is a pickle (protocol 5) sent as one small object; the buffers pickle passes out
of band (NumPy arrays, bytearrays, large bytes) follow as raw ``Isend``s, cut into chunks
of at most ``chunk_limit`` bytes so that messages over MPI's 2 GiB count limit work. Sends
are non-blocking, so two hubs sending each other large data never wait on each other.

Polling: while work is expected the hub spins on ``Iprobe``; once idle it backs off to
sleeping (waking at once for outgoing messages), so an idle rank costs well under 5% of a
core, and a busy one adds microseconds, not the milliseconds of a fixed poll interval. A
rank on the same host rings the napping receiver's doorbell as it sends (see
:mod:`._doorbell`), so that a message after a pause does not wait out the nap.
"""

from __future__ import annotations

import faulthandler
import os
import pickle
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Collection, Sequence
from typing import Any

from dispatcher.remote import dumps_split, from_wire, start_thread, to_wire

from ._doorbell import Doorbell

CHUNK_LIMIT = 1 << 30
"""Largest raw piece of one message, in bytes (MPI counts are 32-bit), unless the
environment variable ``DISPATCHER_MPI_CHUNK`` says otherwise."""
_MAX_COUNT = 2**31 - 1


def chunk_limit() -> int:
    """The chunk size this job uses; a ``ValueError`` that says why when
    ``DISPATCHER_MPI_CHUNK`` is not a whole number of bytes MPI can send in one piece."""
    raw = os.environ.get("DISPATCHER_MPI_CHUNK")
    if raw is None:
        return CHUNK_LIMIT
    try:
        value = int(raw)
    except ValueError:
        value = 0
    if not 1 <= value <= _MAX_COUNT:
        raise ValueError(
            f"DISPATCHER_MPI_CHUNK must be a whole number of bytes from 1 to {_MAX_COUNT} "
            f"(the largest piece of a message sent at once), not {raw!r}"
        )
    return value


TAG = 77
_SPIN_SECONDS = 0.002  # keep probing this long after the last activity
_MAX_SLEEP = 0.002  # then sleep between probes, doubling up to this
_TICK_EVERY = 0.0005  # the owner's tick runs at most this often (seconds)
_RING_AGAIN = _SPIN_SECONDS / 2  # a rank rung this lately still spins: no need to ring
FLUSH_WAIT = 10.0
"""Seconds a stopping rank waits for its sends to complete (to ranks that answer)."""


OUT_OF_BAND_BYTES = 64 * 1024
"""``bytes`` this long or longer travel as raw MPI messages, not inside the pickle."""
_FORWARD_GRACE = 0.2  # seconds mpiexec gets to forward a dying rank's last words


def encode(message: Any) -> tuple[bytes, list[memoryview]]:
    """A message as its pickle stream and its out-of-band buffers."""
    return dumps_split(message, OUT_OF_BAND_BYTES)


def abort_job(comm: Any, message: str, status: int) -> None:
    """Say why, then end the whole job. The message goes out in one write, and mpiexec
    gets a moment to pass it on: aborting kills the process that forwards our stderr,
    and a traceback written line by line lost all but its first line."""
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    except (OSError, ValueError):
        pass
    from ._watch import quiet

    quiet()
    os.write(2, message.encode("utf-8", "replace"))
    time.sleep(_FORWARD_GRACE)
    # MPI_Abort asks the process manager to end the job and waits for it, holding the GIL:
    # with the launcher out of reach (this host cut off), for ever. Then a watchdog that
    # needs no GIL ends this rank alone.
    faulthandler.dump_traceback_later(ABORT_WAIT, exit=True)
    # On COMM_WORLD whatever ``comm`` is: aborting a duplicate of it, MPICH kills the
    # ranks, and the job ends with status 9 instead of ``status``.
    from mpi4py import MPI

    MPI.COMM_WORLD.Abort(status)


STARVED = 1.0
"""Seconds between two ticks of a hub (see :meth:`Hub.loop`) that mean it did not run
meanwhile: its process was stopped, or starved of the GIL. What its owner missed then is
not the other ranks' silence."""

ABORT_WAIT = 10.0
"""Seconds :func:`abort_job` waits for MPI to end the job before ending its rank itself."""


def finalize(comm: Any) -> None:
    """``MPI_Finalize``, once this rank's part of the job is over. What reached it too
    late to matter is read and dropped first: a rank that froze and thawed may still answer
    a fetch another rank gave up on, and MPICH refuses to finalize a communicator holding
    a message no one received, which would turn a job that did its work into a failed one.
    A message that arrives after that check is let go the same way.

    ``MPI_Finalize`` waits for the process manager, holding the GIL: with it out of reach
    (this host cut off from the network), for ever. Past :data:`FINALIZE_WAIT` seconds a
    watchdog that needs no GIL (:func:`faulthandler.dump_traceback_later`) ends the process,
    with the stack of where it waited."""
    from mpi4py import MPI

    discard_unreceived(comm)
    faulthandler.dump_traceback_later(FINALIZE_WAIT, exit=True)
    try:
        MPI.Finalize()
    except MPI.Exception as exc:
        if "unmatched message" not in str(exc) or not MPI.Is_finalized():
            raise
    finally:
        faulthandler.cancel_dump_traceback_later()


FINALIZE_WAIT = 30.0
"""Seconds a rank waits for ``MPI_Finalize`` before it ends without (:func:`finalize`;
rank 0's at exit, in ``__main__``)."""


def discard_unreceived(comm: Any) -> int:
    """Receive and drop every message waiting for this rank on ``comm``, and on
    ``COMM_WORLD``, where the program and its tasks send their own (one left there would
    fail the finalisation too); how many."""
    from mpi4py import MPI

    status = MPI.Status()
    dropped = 0
    for each in [comm] if comm == MPI.COMM_WORLD else [comm, MPI.COMM_WORLD]:
        while each.Iprobe(source=MPI.ANY_SOURCE, tag=MPI.ANY_TAG, status=status):
            message = each.Mprobe(source=status.Get_source(), tag=status.Get_tag(), status=status)
            message.Recv([bytearray(status.Get_count(MPI.BYTE)), MPI.BYTE])
            dropped += 1
    return dropped


class Hub:
    """The one thread of a rank that talks MPI. ``deliver(source, message)`` is called on
    this thread for every message received; keep it quick."""

    def __init__(
        self,
        comm: Any,
        deliver: Callable[[int, Any], None],
        chunk: int | None = None,
        peers: Sequence[tuple[str, int]] | None = None,
    ) -> None:
        """``peers``: every rank's (host, pid), so that ranks on one host wake each other
        (:mod:`._doorbell`); without them, every message waits for its receiver's probe."""
        from mpi4py import MPI

        self.MPI = MPI
        self.comm = comm
        self.deliver = deliver
        self.chunk_limit = chunk if chunk is not None else chunk_limit()
        self.outbox: deque[tuple[int, bytes, list[memoryview], threading.Event | None]] = deque()
        self.wakeup = threading.Event()
        self.running = True
        self.expecting = 0  # replies other threads wait for: keep spinning meanwhile
        self._pending: list[tuple[Any, Any, int]] = []  # (request, buffer kept alive, dest)
        self.bytes_received = 0
        self.tick: Callable[[], None] | None = None  # called at most every _TICK_EVERY s
        self.max_sleep = _MAX_SLEEP  # the longest nap while idle; the owner may lower it
        self.thread: threading.Thread | None = None
        self.doorbell = Doorbell.open(comm.Get_rank(), peers)
        self.napping = False  # in the doorbell's wait: a post must ring it
        self._rung: dict[int, float] = {}  # rank -> when its bell was last rung

    def post(self, dest: int, message: Any, sent: threading.Event | None = None) -> None:
        """Queue ``message`` (one of :mod:`dispatcher.remote`'s message types) for rank
        ``dest`` (from any thread); ``sent`` is set once its send has been started."""
        header, buffers = encode(to_wire(message))
        self.outbox.append((dest, header, buffers, sent))
        self.wake()

    def wake(self) -> None:
        """Have the hub's thread take a turn now (from any thread): something was posted,
        or it is to stop."""
        if self.doorbell is None:
            self.wakeup.set()
        elif self.napping:  # (see _nap: it set this before it looked at the outbox)
            self.doorbell.ring_own()

    def start(self, on_failure: Callable[[BaseException], None]) -> None:
        """Run :meth:`loop` on a thread of its own; whatever escapes it goes to
        ``on_failure`` (nothing can reach the other ranks any more)."""
        self.thread = start_thread("dispatcher-mpi-hub", self.loop, on_failure)

    def stop(self, unreachable: Collection[int] = ()) -> list[int]:
        """Stop the thread, send what is queued, and wait (at most :data:`FLUSH_WAIT`
        seconds) until the sends complete, but those to ``unreachable`` ranks (frozen or
        gone: theirs may never complete). Returns the ranks whose sends did not complete."""
        self.running = False
        self.wake()
        if self.thread is not None and self.thread is not threading.current_thread():
            self.thread.join(10)
        return self.flush(unreachable)

    def loop(self) -> None:
        """Send, receive and deliver until stopped."""
        MPI = self.MPI
        status = MPI.Status()
        last_activity = time.monotonic()
        sleep = 0.0
        next_tick = 0.0
        while self.running or self.outbox:
            busy = self._send_some()
            busy = self.receive_all(status) or busy
            if self.tick is not None:
                # Not every turn: while spinning, every bytecode this thread runs is GIL
                # time the threads doing the work (the scheduler, the tasks) wait for.
                now = time.monotonic()
                if now >= next_tick:
                    next_tick = now + _TICK_EVERY
                    self.tick()
            if self._pending:
                self._pending = [entry for entry in self._pending if not entry[0].Test()]
            if busy or self._pending:
                last_activity = time.monotonic()
                sleep = 0.0
                # Let the threads we just fed run now, not at the next GIL switch (5 ms).
                time.sleep(0)
                continue
            if self.expecting or time.monotonic() - last_activity < _SPIN_SECONDS:
                time.sleep(0)  # spin, but never hold the GIL against the other threads
                continue
            sleep = min(self.max_sleep, sleep * 2 or 50e-6)
            if self._nap(sleep):
                # Rung: a message is on its way, maybe not in yet. Spin for it.
                last_activity = time.monotonic()
                sleep = 0.0

    def receive_all(self, status: Any = None) -> bool:
        """On the hub's thread: deliver every message waiting; whether there was one."""
        MPI = self.MPI
        status = status if status is not None else MPI.Status()
        received = False
        while self.comm.Iprobe(source=MPI.ANY_SOURCE, tag=TAG, status=status):
            source = status.Get_source()
            self.deliver(source, self._receive(source))
            received = True
        return received

    def _nap(self, seconds: float) -> bool:
        """Wait ``seconds``, or until woken; whether a bell woke it."""
        doorbell = self.doorbell
        if doorbell is None:
            self.wakeup.wait(seconds)
            self.wakeup.clear()
            return False
        self.napping = True
        try:
            if self.outbox or not self.running:  # posted before it could ring
                return False
            return doorbell.wait(seconds)
        finally:
            self.napping = False

    def flush(self, unreachable: Collection[int] = ()) -> list[int]:
        """Send what is queued and wait (at most :data:`FLUSH_WAIT` seconds) until every
        send but those to ``unreachable`` ranks has completed. Returns the ranks whose sends
        did not complete."""
        self._send_some()
        waited = [entry for entry in self._pending if entry[2] not in unreachable]
        deadline = time.monotonic() + FLUSH_WAIT
        while waited and time.monotonic() < deadline:
            waited = [entry for entry in waited if not entry[0].Test()]
            if waited:
                time.sleep(0.001)
        # What is left keeps its buffers: a rank that thaws may still read them.
        return sorted({dest for _, _, dest in waited})

    def _send_some(self) -> bool:
        sent = False
        outbox, comm, limit = self.outbox, self.comm, self.chunk_limit
        while outbox:
            dest, header, buffers, started = outbox.popleft()
            sizes = [b.nbytes for b in buffers]
            if len(header) > limit:  # an enormous in-band pickle travels raw too
                first: Any = (None, [len(header), *sizes])
                buffers = [memoryview(header), *buffers]
            else:
                first = (header, sizes)
            self._pending.append((comm.isend(first, dest=dest, tag=TAG), None, dest))
            for buffer in buffers:
                view = buffer.cast("B")
                for start in range(0, max(view.nbytes, 1), limit):
                    piece = view[start : start + limit]
                    self._pending.append(
                        (comm.Isend([piece, self.MPI.BYTE], dest=dest, tag=TAG), piece, dest)
                    )
            if started is not None:
                started.set()
            if self.doorbell is not None:
                self._ring(dest)
            sent = True
        return sent

    def _ring(self, dest: int) -> None:
        """Ring ``dest``'s bell, unless it was rung so lately that it still spins."""
        now = time.monotonic()
        bell = self.doorbell
        if now - self._rung.get(dest, -1.0) >= _RING_AGAIN and bell is not None and bell.ring(dest):
            self._rung[dest] = now

    def _receive(self, source: int) -> Any:
        header, sizes = self.comm.recv(source=source, tag=TAG)
        parts: list[bytearray] = []
        limit = self.chunk_limit
        for size in sizes:
            part = bytearray(size)
            view = memoryview(part)
            for start in range(0, max(size, 1), limit):
                self.comm.Recv([view[start : start + limit], self.MPI.BYTE], source=source, tag=TAG)
            parts.append(part)
            self.bytes_received += size
        if header is None:
            header, parts = bytes(parts[0]), parts[1:]
        self.bytes_received += len(header)
        return from_wire(pickle.loads(header, buffers=parts))
