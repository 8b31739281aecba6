"""Pickling for the wire: plain pickles for small things, buffers out of band for big ones.

Functions, arguments and control messages travel as ordinary protocol-5 pickles made by
cloudpickle (so lambdas and closures travel too). Values that may be large are pickled with
:func:`dumps_split`: every buffer pickle can pass out of band (NumPy arrays, bytearrays,
memoryviews, and ``bytes`` of at least ``threshold`` bytes) is handed back separately,
so a backend can move it without a copy into the pickle stream (through shared memory, or
as a raw MPI message).
"""

from __future__ import annotations

import io
import pickle
from typing import Any

import cloudpickle

__all__ = ["OUT_OF_BAND_BYTES", "dumps", "dumps_split", "loads"]

OUT_OF_BAND_BYTES = 256 * 1024
"""The default ``threshold`` of :func:`dumps_split`: ``bytes`` at least this long are
passed out of band; shorter ones are cheaper to copy into the pickle stream."""

loads = pickle.loads


def dumps(obj: Any) -> bytes:
    """A plain (in-band) pickle of ``obj``: functions, arguments, small messages."""
    data: bytes = cloudpickle.dumps(obj, protocol=5)
    return data


class _SplitPickler(cloudpickle.Pickler):  # type: ignore[misc]
    """cloudpickle, plus ``bytes`` of at least ``threshold`` passed out of band."""

    def __init__(self, file: Any, threshold: int, buffer_callback: Any) -> None:
        super().__init__(file, protocol=5, buffer_callback=buffer_callback)
        self.threshold = threshold

    def reducer_override(self, obj: Any) -> Any:
        if type(obj) is bytes and len(obj) >= self.threshold:
            return bytes, (pickle.PickleBuffer(obj),)
        return super().reducer_override(obj)


def dumps_split(obj: Any, threshold: int = OUT_OF_BAND_BYTES) -> tuple[bytes, list[memoryview]]:
    """``obj`` as its pickle stream and the raw views of its out-of-band buffers, in the
    order ``pickle.loads(stream, buffers=...)`` wants them back."""
    raw: list[pickle.PickleBuffer] = []
    stream = io.BytesIO()
    _SplitPickler(stream, threshold, raw.append).dump(obj)
    return stream.getvalue(), [b.raw() for b in raw]
