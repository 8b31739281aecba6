"""Large values held by the caller (``DataNode`` constants, ``inputs=``) travel through
shared memory, written once per run rather than pickled into every task that reads them.

The scheduler hands such a value to each task that reads it (:attr:`TaskSpec.inline`). A
buffer-backed value at least :data:`~dispatcher_mp._wire.SHM_THRESHOLD` bytes big goes
into a segment the first time a task of a run needs it; every task of that run then
carries the segment's small descriptor, and the worker maps it, as it maps a result made
by another worker. A value is written again for another run (it may have changed in
between); the segment of an earlier run goes when no task out uses it any more, when the
value itself is gone, or when the executor closes. Should the caller be killed (SIGKILL,
or SIGTERM from a batch system), its janitor unlinks what it left
(:mod:`dispatcher_mp._janitor`).
"""

from __future__ import annotations

import os
import pickle
import weakref
from collections.abc import Callable
from typing import Any

from dispatcher.remote import loads, size_of

from ._wire import SHM_DIR, SHM_THRESHOLD, Payload, SharedMemory

__all__ = ["CallerValues", "dump_large"]

Key = int


class CallerValues:
    """The caller's large values in shared memory, by key (see the module docstring)."""

    def __init__(self, shm: SharedMemory) -> None:
        self.shm = shm
        self.entries: dict[Key, tuple[weakref.ref[Any], Payload | None]] = {}
        """Key -> (the value, its payload; ``None`` when it is not worth a segment)."""
        self._keys_of: dict[int, list[Key]] = {}  # id(value) -> its keys with a segment
        self._finalizers: dict[Key, weakref.finalize[Any, Any]] = {}
        """By key, the finalizer that releases its segment when its value goes."""
        self.writes = 0
        """Values written to shared memory so far."""

    def split(
        self, inline: dict[Key, Any], in_use: Callable[[Key], bool]
    ) -> tuple[dict[Key, Any] | None, dict[Key, Payload]]:
        """``inline`` as the values still to pickle with the task, and the descriptors of
        those in shared memory. ``in_use(key)``: does a task out still read ``key``."""
        kept: dict[Key, Any] = {}
        mapped: dict[Key, Payload] = {}
        for key, value in inline.items():
            payload = self._payload(key, value, in_use)
            if payload is None:
                kept[key] = value
            else:
                mapped[key] = payload
        return kept or None, mapped

    def _payload(self, key: Key, value: Any, in_use: Callable[[Key], bool]) -> Payload | None:
        entry = self.entries.get(key)
        if entry is not None and entry[0]() is value:
            payload = entry[1]
            if payload is None or os.path.exists(os.path.join(SHM_DIR, payload.segment or "")):
                return payload
        if not self.shm.enabled or size_of(value) < SHM_THRESHOLD:
            return None
        try:
            ref = weakref.ref(value)
        except TypeError:
            return None  # cannot tell when it goes: it travels with each task
        payload = dump_large(self.shm, value)
        self.entries[key] = (ref, payload)
        if payload is None:
            return None
        self.writes += 1
        keys = self._keys_of.setdefault(id(value), [])
        for old in [k for k in keys if not in_use(k)]:
            keys.remove(old)
            self.release(old)
        keys.append(key)
        self._finalizers[key] = weakref.finalize(value, self.release, key)
        return payload

    def release(self, key: Key) -> None:
        """Unlink ``key``'s segment and forget it."""
        finalizer = self._finalizers.pop(key, None)
        if finalizer is not None:  # (a value that lives on must not keep one per run)
            finalizer.detach()
        entry = self.entries.pop(key, None)
        if entry is not None and entry[1] is not None and entry[1].segment is not None:
            self.shm.release(entry[1].segment)

    def close(self) -> None:
        """Unlink every segment (the executor closes)."""
        for key in list(self.entries):
            self.release(key)


def dump_large(shm: SharedMemory, value: Any) -> Payload | None:
    """``value`` in a new segment of ``shm``; ``None`` when it is small once pickled, or
    does not pickle (the task's own pickle then says what is wrong with it), or there is
    no room for it."""
    try:
        payload = shm.dump(value)  # its buffers, out of band: no copy on load
        if payload.segment is not None:
            return payload
        if payload.buffers or len(payload.data) < SHM_THRESHOLD:
            return None
        # Large, but not as buffers: its whole pickle goes into the segment.
        payload = shm.dump(_Pickled(payload.data))
    except Exception:
        return None
    return payload if payload.segment is not None else None


class _Pickled:
    """A value's pickle, carried as one out-of-band buffer (into a segment)."""

    def __init__(self, data: bytes) -> None:
        self.data = data

    def __reduce_ex__(self, protocol: Any) -> Any:
        return (_unpickle, (pickle.PickleBuffer(self.data),))


def _unpickle(buffer: Any) -> Any:
    return loads(buffer)
