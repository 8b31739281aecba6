"""How values cross between processes: pickles, with large buffers in shared memory.

A value is pickled with protocol 5 by :func:`dispatcher.remote.dumps_split`. Buffers that
pickle passes out of band (NumPy arrays, bytearrays, and ``bytes`` of ``SHM_THRESHOLD`` or
more) are
written once into one POSIX shared-memory segment (a file in ``/dev/shm``); the reader maps
that segment copy-on-write and unpickles straight from the mapping. Small values travel
inline in the message.

Segments are named ``<prefix><counter>``; a prefix is unique to one worker incarnation of
one executor, so the caller can sweep every segment of a worker that died, and of the whole
executor at close, even those that the process which made them never got to unlink; and
should the caller be killed, its janitor (:mod:`dispatcher_mp._janitor`) sweeps them all.
"""

from __future__ import annotations

import itertools
import mmap
import os
import pickle
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from dispatcher.remote import OUT_OF_BAND_BYTES, dumps_split

SHM_DIR = "/dev/shm"
SHM_THRESHOLD = OUT_OF_BAND_BYTES
"""Values with at least this many bytes of out-of-band buffers go through shared memory (the
size from which pickling passes ``bytes`` out of band, too)."""
_SHM_HEADROOM = 16 * 1024 * 1024  # leave this much of /dev/shm free for everybody else


@dataclass
class Payload:
    """A pickled value: the pickle stream, and its buffers inline or in a segment."""

    data: bytes
    buffers: list[bytes] | None = None
    """Out-of-band buffers carried inline (small values, or no shared memory)."""
    segment: str | None = None
    """The shared-memory segment holding the out-of-band buffers back to back."""
    sizes: tuple[int, ...] = ()

    @property
    def nbytes(self) -> int:
        return len(self.data) + (
            sum(self.sizes) if self.segment else sum(len(b) for b in self.buffers or ())
        )


class SharedMemory:
    """Creates, maps and sweeps this process's segments, all named ``prefix + n``."""

    def __init__(self, prefix: str, enabled: bool = True) -> None:
        self.prefix = prefix
        self.enabled = enabled and os.path.isdir(SHM_DIR)
        self._numbers = itertools.count()
        self._warned = False

    def dump(self, obj: Any) -> Payload:
        """Pickle ``obj``; large buffers go to a new segment when there is room."""
        data, views = dumps_split(obj, SHM_THRESHOLD)
        if not views:
            return Payload(data)
        total = sum(v.nbytes for v in views)
        if total >= SHM_THRESHOLD and self.enabled:
            name = self._write_segment(views, total)
            if name is not None:
                return Payload(data, None, name, tuple(v.nbytes for v in views))
        return Payload(data, [bytes(v) for v in views])

    def _write_segment(self, views: list[memoryview], total: int) -> str | None:
        try:
            stats = os.statvfs(SHM_DIR)
            if stats.f_bavail * stats.f_frsize < total + _SHM_HEADROOM:
                raise OSError(28, "not enough room in /dev/shm")
            name = f"{self.prefix}{next(self._numbers)}"
            fd = os.open(os.path.join(SHM_DIR, name), os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o600)
        except OSError as exc:
            self._fall_back(exc)
            return None
        try:
            # Reserve the pages now: writing past a full tmpfs through a mapping is SIGBUS.
            os.posix_fallocate(fd, 0, max(total, 1))
            with mmap.mmap(fd, max(total, 1)) as target:
                offset = 0
                for view in views:
                    size = view.nbytes
                    target[offset : offset + size] = view.cast("B")
                    offset += size
        except BaseException as exc:  # Ctrl-C too: neither the descriptor nor the name left
            os.close(fd)
            self.release(name)
            if not isinstance(exc, OSError):
                raise
            self._fall_back(exc)
            return None
        os.close(fd)
        return name

    def _fall_back(self, exc: OSError) -> None:
        if not self._warned:
            self._warned = True
            warnings.warn(
                f"shared memory unavailable ({exc.strerror or exc}); large values go "
                "through pipes instead, which is slower. A bigger /dev/shm helps "
                "(docker: --shm-size).",
                RuntimeWarning,
                stacklevel=2,
            )

    def release(self, name: str) -> None:
        """Unlink segment ``name``, made here."""
        unlink(name)

    def sweep(self, prefix: str | None = None) -> int:
        """Unlink every segment whose name starts with ``prefix`` (default: ours)."""
        return sweep(prefix or self.prefix)


def load(payload: Payload, loads: Callable[..., Any] = pickle.loads) -> Any:
    """The value back; buffers in a segment are mapped copy-on-write, not copied."""
    if payload.segment is not None:
        return loads(payload.data, buffers=mapped(payload))
    if payload.buffers:
        return loads(payload.data, buffers=payload.buffers)
    return loads(payload.data)


def mapped(payload: Payload) -> list[memoryview]:
    """The buffers of ``payload``'s segment, mapped copy-on-write: they stay readable
    after the segment is unlinked."""
    assert payload.segment is not None
    fd = os.open(os.path.join(SHM_DIR, payload.segment), os.O_RDONLY)
    try:
        total = max(sum(payload.sizes), 1)
        mapping = mmap.mmap(fd, total, access=mmap.ACCESS_COPY)
    finally:
        os.close(fd)
    whole = memoryview(mapping)
    views = []
    offset = 0
    for size in payload.sizes:
        views.append(whole[offset : offset + size])
        offset += size
    return views


def unlink(name: str) -> None:
    try:
        os.unlink(os.path.join(SHM_DIR, name))
    except FileNotFoundError:
        pass


def sweep(prefix: str) -> int:
    """Unlink every segment in /dev/shm whose name starts with ``prefix``."""
    if not os.path.isdir(SHM_DIR):
        return 0
    count = 0
    for name in os.listdir(SHM_DIR):
        if name.startswith(prefix):
            unlink(name)
            count += 1
    return count
