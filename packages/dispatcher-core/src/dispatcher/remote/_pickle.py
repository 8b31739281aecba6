"""Pickling for the wire: plain pickles for small things, buffers out of band for big ones.

Functions, arguments and control messages travel as ordinary protocol-5 pickles made by
cloudpickle (so lambdas and closures travel too), except that the code of a function
shipped by value keeps the name of its file: cloudpickle would call it ``<dynamic-code>``,
and a worker's traceback could then show neither the user's file nor the failing source
line. Values that may be large are pickled with
:func:`dumps_split`: every buffer pickle can pass out of band (NumPy arrays, bytearrays,
memoryviews, and ``bytes`` of at least ``threshold`` bytes) is handed back separately,
so a backend can move it without a copy into the pickle stream (through shared memory, or
as a raw MPI message).
"""

from __future__ import annotations

import io
import marshal
import pickle
import types
from collections import ChainMap
from typing import Any

import cloudpickle

__all__ = ["OUT_OF_BAND_BYTES", "dumps", "dumps_split", "loads", "pickle_by_reference"]

OUT_OF_BAND_BYTES = 256 * 1024
"""The default ``threshold`` of :func:`dumps_split`: ``bytes`` at least this long are
passed out of band; shorter ones are cheaper to copy into the pickle stream."""

loads = pickle.loads


_cloudpickle_code_reduce = cloudpickle.Pickler.dispatch_table[types.CodeType]


def _reduce_code(code: types.CodeType) -> Any:
    """A code object with its file name (and its nested code objects with theirs): the
    worker's traceback points at the user's file and line, and shows the source line
    where the worker can read that file. Both ends run the same Python, as cloudpickle
    requires for code anyway."""
    try:
        return marshal.loads, (marshal.dumps(code),)
    except ValueError:  # a constant marshal does not know (code built by hand)
        return _cloudpickle_code_reduce(code)


class _Pickler(cloudpickle.Pickler):  # type: ignore[misc]
    """cloudpickle, keeping the file names of the code it pickles by value."""

    # One level of maps, as cloudpickle's own: looked up for every object pickled.
    dispatch_table = ChainMap(
        {types.CodeType: _reduce_code}, *cloudpickle.Pickler.dispatch_table.maps
    )


def dumps(obj: Any) -> bytes:
    """A plain (in-band) pickle of ``obj``: functions, arguments, small messages."""
    stream = io.BytesIO()
    _Pickler(stream, protocol=5).dump(obj)
    return stream.getvalue()


_BY_REFERENCE: set[type] = set()


def pickle_by_reference(cls: type) -> type:
    """Declare ``cls`` importable wherever its instances are unpickled (a message class),
    so :func:`dumps_split` names it at once instead of having cloudpickle check again in
    every pickle whether it must be pickled by value. Returns ``cls``: a class decorator."""
    _BY_REFERENCE.add(cls)
    return cls


class _SplitPickler(_Pickler):
    """cloudpickle, plus ``bytes`` of at least ``threshold`` passed out of band."""

    threshold = OUT_OF_BAND_BYTES

    def reducer_override(self, obj: Any) -> Any:
        cls = type(obj)
        if cls is bytes:
            if len(obj) >= self.threshold:
                return bytes, (pickle.PickleBuffer(obj),)
            return NotImplemented
        if cls is type and obj in _BY_REFERENCE:
            return NotImplemented
        return super().reducer_override(obj)


_picklers: dict[int, type[_SplitPickler]] = {}


def dumps_split(obj: Any, threshold: int = OUT_OF_BAND_BYTES) -> tuple[bytes, list[memoryview]]:
    """``obj`` as its pickle stream and the raw views of its out-of-band buffers, in the
    order ``pickle.loads(stream, buffers=...)`` wants them back."""
    pickler = _picklers.get(threshold)
    if pickler is None:
        pickler = _picklers[threshold] = type(
            "_SplitPickler", (_SplitPickler,), {"threshold": threshold}
        )
    raw: list[pickle.PickleBuffer] = []
    stream = io.BytesIO()
    pickler(stream, protocol=5, buffer_callback=raw.append).dump(obj)
    return stream.getvalue(), [b.raw() for b in raw]
