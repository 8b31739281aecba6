"""Pickling for the wire: plain pickles for small things, buffers out of band for big ones.

Functions, arguments and control messages travel as ordinary protocol-5 pickles: made by
the C pickler alone when they are builtin data only (most messages, plain arguments and
small results), else by cloudpickle (so lambdas and closures travel too), except that the
code of a function shipped by value keeps the name of its file: cloudpickle would call it
``<dynamic-code>``, and a worker's traceback could then show neither the user's file nor
the failing source line. Values that may be large are pickled with :func:`dumps_split`:
every buffer pickle can pass out of band (NumPy arrays, bytearrays, memoryviews, and
``bytes`` of at least ``threshold`` bytes) is handed back separately, so a backend can
move it without a copy into the pickle stream (through shared memory, or as a raw MPI
message).
"""

from __future__ import annotations

import io
import marshal
import pickle
import threading
import types
from collections import ChainMap
from typing import Any

import cloudpickle

from .._template import Ref, _ref

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


# What the plain pickler may name by reference (importable wherever it is unpickled):
# message classes, and the call template's placeholders.
_BY_REFERENCE: set[Any] = {Ref, _ref}


def pickle_by_reference(cls: type) -> type:
    """Declare ``cls`` importable wherever its instances are unpickled (a message class),
    so that they pickle without cloudpickle's care for what must travel by value. Returns
    ``cls``: a class decorator."""
    _BY_REFERENCE.add(cls)
    return cls


class _NotPlain(Exception):
    """Raised by :class:`_PlainPickler` at the first object it must leave to cloudpickle."""


class _PlainPickler(pickle.Pickler):
    """The C pickler, for what is made of builtin data only (and of :data:`_BY_REFERENCE`).

    Exact ``int``, ``float``, ``bool``, ``None``, ``str``, ``bytes``, ``bytearray``,
    ``tuple``, ``list``, ``dict``, ``set``, ``frozenset`` and ``PickleBuffer`` never reach
    :meth:`reducer_override`, and pickle exactly as cloudpickle would pickle them.
    Anything else (a function, a class, an instance) ends the attempt: cloudpickle
    decides whether it travels by reference or by value. Most of what travels (messages,
    plain arguments, small results) is plain, and cloudpickle's pickler costs several
    times what the C pickler alone does on such objects.
    """

    def reducer_override(self, obj: Any) -> Any:
        cls = type(obj)
        if cls in _BY_REFERENCE or (
            (cls is type or cls is types.FunctionType) and obj in _BY_REFERENCE
        ):
            return NotImplemented
        raise _NotPlain


class _Plain(threading.local):
    """One :class:`_PlainPickler` per thread, reused: making one costs more than
    pickling a small message with it."""

    def __init__(self) -> None:
        self._reset()

    def _reset(self) -> None:
        self.stream = io.BytesIO()
        self.buffers: list[pickle.PickleBuffer] = []
        self.pickler = _PlainPickler(self.stream, protocol=5, buffer_callback=self.buffers.append)

    def dumps(self, obj: Any) -> tuple[bytes, list[pickle.PickleBuffer]] | None:
        """``obj``'s pickle and out-of-band buffers by the C pickler alone; ``None`` when
        cloudpickle must make it (or say why it cannot: its errors are the ones users
        know)."""
        stream, buffers = self.stream, self.buffers
        try:
            self.pickler.dump(obj)
        except BaseException:
            self._reset()  # it stopped halfway, holding on to what it saw
            return None
        data = stream.getvalue()
        stream.seek(0)
        stream.truncate()
        self.pickler.clear_memo()
        if not buffers:
            return data, []
        taken = buffers[:]
        buffers.clear()
        return data, taken


_plain = _Plain()


def dumps(obj: Any) -> bytes:
    """A plain (in-band) pickle of ``obj``: functions, arguments, small messages."""
    plain = _plain.dumps(obj)
    if plain is not None and not plain[1]:  # (a PickleBuffer would go out of band)
        return plain[0]
    stream = io.BytesIO()
    _Pickler(stream, protocol=5).dump(obj)
    return stream.getvalue()


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
    plain = _plain.dumps(obj)
    if plain is not None:
        return plain[0], [b.raw() for b in plain[1]]
    pickler = _picklers.get(threshold)
    if pickler is None:
        pickler = _picklers[threshold] = type(
            "_SplitPickler", (_SplitPickler,), {"threshold": threshold}
        )
    raw: list[pickle.PickleBuffer] = []
    stream = io.BytesIO()
    pickler(stream, protocol=5, buffer_callback=raw.append).dump(obj)
    return stream.getvalue(), [b.raw() for b in raw]
