"""Reading a worker's pipe a buffer at a time rather than a message at a time.

Workers write with ``Connection.send_bytes``: each message is a 4-byte big-endian signed
length, or ``-1`` followed by an 8-byte length for messages over 2 GiB, then the bytes.
``Connection.recv_bytes`` reads one message with two system calls and, to know whether
another is waiting, ``poll`` sets up a selector each time; a worker reporting many tiny
tasks sends many small messages, and that overhead in the caller's reader thread was a
large share of its time. :class:`FrameReader` takes whatever the pipe holds in one read
and splits it into messages.
"""

from __future__ import annotations

import os
import struct

__all__ = ["FrameReader"]

_SHORT = struct.Struct("!i")
_LONG = struct.Struct("!Q")
_READ_SIZE = 1 << 20


class FrameReader:
    """The messages readable now from one pipe end (``fd``), which must be readable."""

    __slots__ = ("_buffer", "fd")

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self._buffer = bytearray()

    def read(self) -> list[bytes] | None:
        """Every complete message after one read; ``None`` at the end of the stream (or
        when the pipe broke). A partial message stays buffered for the next call."""
        try:
            chunk = os.read(self.fd, _READ_SIZE)
        except OSError:
            return None
        if not chunk:
            return None
        buffer = self._buffer
        buffer += chunk
        messages: list[bytes] = []
        start, end = 0, len(buffer)
        with memoryview(buffer) as view:
            while end - start >= 4:
                (size,) = _SHORT.unpack_from(view, start)
                header = 4
                if size == -1:
                    if end - start < 12:
                        break
                    (size,) = _LONG.unpack_from(view, start + 4)
                    header = 12
                if end - start - header < size:
                    break
                begin = start + header
                messages.append(view[begin : begin + size].tobytes())
                start = begin + size
        del buffer[:start]
        return messages
