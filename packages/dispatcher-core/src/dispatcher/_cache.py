"""The result store: one file per key, written whole and renamed into place.

Layout under the cache directory::

    entries/ab/ab12...ef    one file per stored result, named by its key
    entries/ab/.ab12...ef.* a file being written (renamed to its key when complete)
    last-run.json           hits and misses of the last run that used the cache

Why files and not an SQLite index: the store must hold up when two runs, two processes or
two hosts write the same key at once, when a writer is killed midway, and on the shared
file systems a cluster's ranks use. A file written beside its final name and renamed over
it is atomic on every POSIX file system, NFS and Lustre included; two writers of one key
write the same content, and whichever rename lands last wins; nothing is locked, so no
writer waits for another. SQLite's WAL mode needs shared memory between its users, which
is documented not to work across hosts on a network file system, and every writer takes
the one write lock; an index beside the files would also be one more thing to keep
consistent with them after a crash. Measured (``benchmarks/cache.py``, ext4 on a shared
two-core virtual machine, 2,000 tiny entries): a write is 128 us as a file renamed into
place and 30 us as an SQLite WAL insert (``synchronous=NORMAL``); a read is 13 us as a file
and 22 us through SQLite (under heavy load from other processes: 278 and 113 us to write,
38 and 73 us to read). A rerun reads: files are the faster there, and the slower write is
paid once per computed node, beside its computation. Listing the cache (``dispatcher cache
info``, eviction) scans the directory; that is rare.

An entry is a header, the pickle stream, and the pickle's out-of-band buffers (NumPy
arrays, large bytes) stored raw, each 64-byte aligned. A large entry is read back through
a private memory map (``ACCESS_COPY``): an array in it is a view of the file's pages, not
a copy, and writable (copy on write). A CRC-32 over the stream and buffers, the sizes in
the header and the file's length catch truncated and corrupted entries, and a CRC-32 of
the key in the header an entry moved or copied to another key's name: such an entry is
deleted with a :class:`CacheWarning` and its node recomputed. A store that fails (full
disk, a value that does not pickle) is a warning, never a failed task. Nothing is fsynced:
after a power cut an entry is complete or it is caught by its checksum.

Least recently used entries are evicted past ``max_bytes``: a hit touches its entry's
modification time, and the caller evicts by it at the end of each run.
"""

from __future__ import annotations

import mmap
import os
import pickle
import shutil
import stat
import struct
import threading
import time
import warnings
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from ._errors import safe_str

__all__ = [
    "Cache",
    "CacheEntryError",
    "CacheInfo",
    "CacheWarning",
    "load_entry",
    "send_warnings_to",
]

_MAGIC = b"DSPCACHE"
_VERSION = 1
# magic, version, buffer count, stream length, total length, crc32, key check (see
# _key_check; 0 in entries written before it was, which are read without it)
_HEADER = struct.Struct("<8sIIQQII")
_SPAN = struct.Struct("<QQ")
_ALIGN = 64
_MAP_AT = 1 << 20
"""Entries at least this large are memory-mapped; smaller ones are read whole."""
_TOUCH_AFTER = 60.0
"""Seconds: a hit on an entry last used longer ago than this marks it used now (eviction
and ``clear --older-than`` go by that time; a minute is finer than either needs)."""
_STALE_TMP = 3600.0
"""Seconds after which a file still being written is one whose writer died."""


class CacheWarning(UserWarning):
    """A cache entry could not be read or written: its node is computed instead."""


class CacheEntryError(Exception):
    """A stored entry that was there when the run was planned cannot be read now."""


@dataclass(frozen=True)
class CacheInfo:
    """What ``dispatcher cache info`` shows."""

    path: str
    entries: int
    nbytes: int
    last_run: dict[str, Any] | None
    partial: int = 0
    """Files being written, or left by writers that died (swept by ``clear``, and by
    eviction an hour after they were last written)."""
    partial_bytes: int = 0


def _aligned(n: int) -> int:
    return (n + _ALIGN - 1) // _ALIGN * _ALIGN


class Cache:
    """A directory of results stored by key, shared by every run (and host) that uses it.

    ``max_bytes``: past this many bytes of entries, the least recently used are evicted
    at the end of a run (``None``: no limit). ``verify``: check each entry's checksum when
    it is read (a large hit then reads its pages once; off, a corruption of a large
    entry's bytes goes unnoticed, while truncation still does not, and entries under 1 MiB,
    read whole anyway, are still checked). ``min_seconds``: store only
    results whose call took at least this long (the default, 0, stores every result);
    cheaper nodes run again on the next run instead, which saves writing results that
    cost more to store than to compute.
    """

    __slots__ = ("_entries", "max_bytes", "min_seconds", "path", "verify")

    def __init__(
        self,
        path: str | os.PathLike[str],
        max_bytes: int | None = None,
        *,
        verify: bool = True,
        min_seconds: float = 0.0,
    ) -> None:
        if max_bytes is not None and (
            isinstance(max_bytes, bool) or not isinstance(max_bytes, int) or max_bytes < 0
        ):
            raise ValueError(f"max_bytes must be a non-negative int or None, got {max_bytes!r}")
        if not os.fspath(path):  # abspath("") would make the working directory a cache
            raise ValueError("a cache needs a directory; the path given is empty")
        self.path = os.path.abspath(os.fspath(path))
        self._entries = os.path.join(self.path, "entries", "")
        if (
            isinstance(min_seconds, bool)
            or not isinstance(min_seconds, (int, float))
            or not (min_seconds >= 0)
        ):
            raise ValueError(f"min_seconds must be a non-negative number, got {min_seconds!r}")
        if not isinstance(verify, bool):  # "no" would be true, and verify
            raise ValueError(f"verify must be True or False, got {verify!r}")
        self.max_bytes = max_bytes
        self.verify = verify
        self.min_seconds = float(min_seconds)

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild, (self.path, self.max_bytes, self.verify, self.min_seconds))

    def __repr__(self) -> str:
        return f"Cache({self.path!r}, max_bytes={self.max_bytes!r})"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Cache):
            return NotImplemented
        return self._identity() == other._identity()

    def __hash__(self) -> int:
        return hash(self._identity())

    def _identity(self) -> tuple[Any, ...]:
        return (self.path, self.max_bytes, self.verify, self.min_seconds)

    # -- entries -----------------------------------------------------------------------

    def _entry_path(self, key: str) -> str:
        """Where the entry for ``key`` lives."""
        return f"{self._entries}{key[:2]}/{key}"

    def contains(self, key: str) -> bool:
        """Is an entry stored for ``key``? (Its content is checked when it is read.)"""
        path = self._entry_path(key)
        try:
            st = os.stat(path)
        except OSError:
            return False
        # (a directory in its place is no entry: it could be neither read nor deleted)
        if not stat.S_ISREG(st.st_mode):
            return False
        if st.st_size < _HEADER.size:  # (never written so: entries are renamed whole)
            self._discard(key, path, ValueError(f"truncated to {st.st_size} bytes"))
            return False
        return True

    def save(self, key: str, value: Any) -> int | None:
        """Store ``value`` under ``key``; its size in bytes, or ``None`` (with a warning)
        when it could not be stored. Never raises for a value or a disk."""
        from .remote._pickle import dumps_split  # cloudpickle: only where results are stored

        try:
            stream, buffers = dumps_split(value, threshold=64 * 1024)
        except BaseException as exc:  # pickling runs arbitrary code: SystemExit included
            _reraise_ctrl_c(exc)
            _warn(
                f"dispatcher cache: a {type(value).__name__} result is not stored "
                f"(it does not pickle: {safe_str(exc)})",
                stacklevel=3,
            )
            return None
        try:
            return self._write(key, stream, buffers)
        except OSError as exc:
            _warn(f"dispatcher cache: entry {key} not stored in {self.path}: {exc}", stacklevel=3)
            return None

    def _write(self, key: str, stream: bytes, buffers: list[memoryview]) -> int:
        table_end = _HEADER.size + _SPAN.size * len(buffers)
        offset = _aligned(table_end + len(stream))
        spans: list[tuple[int, int]] = []
        crc = zlib.crc32(stream)
        for buf in buffers:
            spans.append((offset, buf.nbytes))
            crc = zlib.crc32(buf, crc)
            offset = _aligned(offset + buf.nbytes)
        total = spans[-1][0] + spans[-1][1] if spans else table_end + len(stream)
        parts: list[Any] = [
            _HEADER.pack(_MAGIC, _VERSION, len(buffers), len(stream), total, crc, _key_check(key)),
            *(_SPAN.pack(*span) for span in spans),
            stream,
        ]
        at = table_end + len(stream)
        for (start, _), buf in zip(spans, buffers, strict=True):
            if start > at:
                parts.append(bytes(start - at))
            parts.append(buf)
            at = start + buf.nbytes
        # Written beside its final name (a rename within one directory, and writers of
        # different shards never contend for one directory), as a dot file that
        # listings skip.
        shard = f"{self._entries}{key[:2]}"
        final = f"{shard}/{key}"
        tmp = f"{shard}/.{key}.{os.urandom(8).hex()}"
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileNotFoundError:
            os.makedirs(shard, exist_ok=True)
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            try:
                _write_all(fd, parts)
            finally:
                os.close(fd)
            os.replace(tmp, final)
        except BaseException:
            _unlink(tmp)
            raise
        return total

    def load(self, key: str) -> Any:
        """The value stored under ``key``. A missing, truncated or corrupted entry is
        deleted, with a :class:`CacheWarning`, and raises :class:`CacheEntryError`."""
        path = self._entry_path(key)
        try:
            # Non-blocking: a FIFO put in an entry's place since the run was planned
            # would block an open for ever (a regular file reads the same either way).
            fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
        except OSError as exc:
            raise CacheEntryError(f"cache entry {key} is gone: {exc}") from None
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise ValueError("not a regular file")
            size = st.st_size
            if size >= _MAP_AT:
                data: Any = memoryview(mmap.mmap(fd, size, access=mmap.ACCESS_COPY))
            else:
                data = bytearray(size)
                if os.readv(fd, [data]) != size:
                    raise ValueError("short read")
            value = self._decode(data, size, key)
            if time.time() - st.st_mtime > _TOUCH_AFTER:
                try:
                    os.utime(fd)  # least recently used: this one was used now
                except OSError:
                    pass
            return value
        except BaseException as exc:  # unpickling runs arbitrary code: SystemExit included
            _reraise_ctrl_c(exc)
            self._discard(key, path, exc)
            raise CacheEntryError(f"cache entry {key} is unusable: {safe_str(exc)}") from None
        finally:
            os.close(fd)

    def _decode(self, data: Any, size: int, key: str) -> Any:
        view = memoryview(data)
        if size < _HEADER.size:
            raise ValueError(f"truncated to {size} bytes")
        magic, version, count, stream_len, total, crc, check = _HEADER.unpack_from(view)
        if magic != _MAGIC or version != _VERSION:
            raise ValueError("not a dispatcher cache entry")
        if check and check != _key_check(key):
            raise ValueError("written under another key (an entry moved or copied)")
        if total != size:
            raise ValueError(f"{size} bytes where {total} were written")
        table_end = _HEADER.size + _SPAN.size * count
        if table_end + stream_len > size:
            raise ValueError("a stream longer than the entry")
        stream = view[table_end : table_end + stream_len]
        buffers = []
        # Unverified, only a memory-mapped entry goes unchecked: a smaller one was read
        # whole, and its checksum costs little beside that.
        verify = self.verify or size < _MAP_AT
        check = zlib.crc32(stream) if verify else crc
        for i in range(count):
            start, length = _SPAN.unpack_from(view, _HEADER.size + _SPAN.size * i)
            if start + length > size:
                raise ValueError("a buffer past the end of the entry")
            buf = view[start : start + length]
            if verify:
                check = zlib.crc32(buf, check)
            buffers.append(buf)
        if check != crc:
            raise ValueError("checksum mismatch")
        return pickle.loads(stream, buffers=buffers)

    def _discard(self, key: str, path: str, reason: BaseException) -> None:
        _warn(
            f"dispatcher cache: entry {key} in {self.path} is unusable ({safe_str(reason)}); "
            "it is deleted and its node computed again",
            stacklevel=4,
        )
        _unlink(path)

    # -- the whole store -----------------------------------------------------------------

    def _scan(self, partial: list[tuple[float, str]] | None = None) -> list[tuple[float, int, str]]:
        """(last used, bytes, path) of every entry; files still being written (or left by
        a writer that died) go to ``partial`` as (modified, path)."""
        found: list[tuple[float, int, str]] = []
        try:
            shards = list(os.scandir(self._entries))
        except OSError:
            return found
        for shard in shards:
            try:
                with os.scandir(shard.path) as entries:
                    for entry in entries:
                        try:
                            st = entry.stat()
                        except OSError:
                            continue
                        if entry.name.startswith(".") or not stat.S_ISREG(st.st_mode):
                            # (something else in an entry's place, a directory say, is
                            # no entry: swept as a dead writer's file is)
                            if partial is not None:
                                partial.append((st.st_mtime, entry.path))
                        else:
                            found.append((st.st_mtime, st.st_size, entry.path))
            except OSError:
                continue
        return found

    def info(self) -> CacheInfo:
        """Entries, bytes, and the last run's hits and misses."""
        import json

        partial: list[tuple[float, str]] = []
        entries = self._scan(partial)
        partial_bytes = 0
        for _, name in partial:
            try:
                partial_bytes += os.stat(name).st_size
            except OSError:  # renamed into place, or swept, meanwhile
                pass
        last: Any
        try:
            # Non-blocking, and a regular file only: a FIFO in its place would block for ever.
            fd = os.open(os.path.join(self.path, "last-run.json"), os.O_RDONLY | os.O_NONBLOCK)
            with open(fd, encoding="utf-8") as fh:
                if not stat.S_ISREG(os.fstat(fd).st_mode):
                    raise ValueError("not a regular file")
                last = json.load(fh)
        except (OSError, ValueError):
            last = None
        if not _run_record(last):
            last = None  # damaged, or written by something else: as if none was recorded
        nbytes = sum(e[1] for e in entries)
        return CacheInfo(self.path, len(entries), nbytes, last, len(partial), partial_bytes)

    def clear(self, older_than: float | None = None) -> int:
        """Delete every entry (or those not used for ``older_than`` seconds); return how
        many were deleted."""
        now = time.time()
        cutoff = None if older_than is None else now - older_than
        partial: list[tuple[float, str]] = []
        removed = 0
        for mtime, _, path in self._scan(partial):
            if (cutoff is None or mtime < cutoff) and _unlink(path):
                removed += 1
        _sweep(partial, now - (_STALE_TMP if older_than is not None else 0.0))
        return removed

    def evict(self) -> int:
        """Delete the least recently used entries until at most ``max_bytes`` remain;
        return the bytes freed. (Without ``max_bytes``, nothing: not even a listing.)"""
        if self.max_bytes is None:
            return 0
        partial: list[tuple[float, str]] = []
        entries = self._scan(partial)
        _sweep(partial, time.time() - _STALE_TMP)
        total = sum(e[1] for e in entries)
        freed = 0
        if total <= self.max_bytes:
            return 0
        entries.sort()
        for _, size, path in entries:
            if total - freed <= self.max_bytes:
                break
            if _unlink(path):
                freed += size
        return freed

    def _record_run(self, hits: int, misses: int, uncacheable: int) -> None:
        """Keep the last run's numbers for ``dispatcher cache info``."""
        record = {
            "hits": hits,
            "misses": misses,
            "uncacheable": uncacheable,
            "finished": time.time(),
        }
        import json

        tmp = os.path.join(self.path, f".last-run.{os.urandom(8).hex()}")
        try:
            os.makedirs(self.path, exist_ok=True)
            with open(tmp, "w", encoding="utf-8") as fh:
                json.dump(record, fh)
            os.replace(tmp, os.path.join(self.path, "last-run.json"))
        except OSError:
            _unlink(tmp)


_warning_sink: Callable[[str], bool] | None = None
"""Where this process's cache warnings go instead of ``warnings.warn``: a worker process
sends them to its caller (see :func:`send_warnings_to`)."""


def send_warnings_to(sink: Callable[[str], bool] | None) -> None:
    """Hand this process's cache warnings to ``sink(text)`` (``None``: warn here again).
    A worker process sets it, so that a "not stored" on its disk reaches the user, as a
    :class:`CacheWarning` in the caller, rather than the worker's own stderr; the sink
    returns False for one it does not take (one said outside a task), warned here."""
    global _warning_sink
    _warning_sink = sink


def _warn(text: str, stacklevel: int) -> None:
    sink = _warning_sink
    if sink is None or not sink(text):
        warnings.warn(text, CacheWarning, stacklevel=stacklevel)


def _reraise_ctrl_c(exc: BaseException) -> None:
    """Raise ``exc`` again if it is the user's Ctrl-C: a KeyboardInterrupt in the main
    thread (anything else that (un)pickling raised is the entry's or the value's fault)."""
    if isinstance(exc, KeyboardInterrupt) and threading.current_thread() is threading.main_thread():
        raise exc


def _rebuild(path: str, max_bytes: int | None, verify: bool, min_seconds: float) -> Cache:
    return Cache(path, max_bytes, verify=verify, min_seconds=min_seconds)


def _run_record(record: Any) -> bool:
    """Is ``record`` what :meth:`Cache._record_run` writes: counts, and a time that a
    date can be made of?"""
    if not isinstance(record, dict):
        return False
    numbers = [record.get(name, 0) for name in ("hits", "misses", "uncacheable", "finished")]
    if not all(isinstance(n, (int, float)) and not isinstance(n, bool) for n in numbers):
        return False
    try:
        datetime.fromtimestamp(numbers[-1])
    except (OverflowError, OSError, ValueError):
        return False
    return True


def _key_check(key: str) -> int:
    """What an entry's header holds of its key (never 0): an entry moved or copied to
    another key's name is caught, not served for it (its checksum still holds)."""
    return zlib.crc32(key.encode()) or 1


def _write_all(fd: int, parts: list[Any]) -> None:
    views = [memoryview(p).cast("B") for p in parts if len(p)]
    while views:
        written = os.writev(fd, views[:1024])
        while written:
            first = views[0]
            if written >= first.nbytes:
                written -= first.nbytes
                views.pop(0)
            else:
                views[0] = first[written:]
                written = 0


def _sweep(partial: list[tuple[float, str]], cutoff: float) -> None:
    """Delete the files being written that were last modified before ``cutoff``: their
    writers died."""
    for mtime, path in partial:
        if mtime <= cutoff:
            _unlink(path)


def _unlink(path: str) -> bool:
    try:
        os.unlink(path)
        return True
    except IsADirectoryError:
        shutil.rmtree(path, ignore_errors=True)
        return not os.path.lexists(path)
    except OSError:
        return False


def load_entry(cache: Cache, key: str) -> Any:
    """A cache hit's task: the stored value, read where the task runs."""
    return cache.load(key)
