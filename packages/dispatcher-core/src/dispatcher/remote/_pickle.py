"""Pickling for the wire: plain pickles for small things, buffers out of band for big ones.

Functions, arguments and control messages travel as ordinary protocol-5 pickles: made by
the C pickler alone when they are builtin data only (most messages, plain arguments and
small results), else by cloudpickle (so lambdas and closures travel too), except that the
code of a function shipped by value keeps the name of its file: cloudpickle would call it
``<dynamic-code>``, and a worker's traceback could then show neither the user's file nor
the failing source line. Values that may be large are pickled with :func:`dumps_split`:
every buffer pickle can pass out of band (NumPy arrays, ``PickleBuffer``), and every
``bytes`` and ``bytearray`` of at least ``threshold`` bytes, is handed back separately, so
a backend can move it without a copy into the pickle stream (through shared memory, or as
a raw MPI message). The stream is an ordinary protocol-5 pickle: ``pickle.loads(stream,
buffers=...)`` reads it.
"""

from __future__ import annotations

import builtins
import importlib
import io
import marshal
import pickle
import sys
import threading
import types
from collections import ChainMap
from typing import Any

import cloudpickle

from .._template import Ref, _ref

__all__ = ["OUT_OF_BAND_BYTES", "dumps", "dumps_split", "loads", "pickle_by_reference"]

OUT_OF_BAND_BYTES = 256 * 1024
"""The default ``threshold`` of :func:`dumps_split`: ``bytes`` and ``bytearray`` values at
least this long are passed out of band; shorter ones are cheaper to copy into the pickle
stream."""

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


_cloudpickle_reducer_override = cloudpickle.Pickler.reducer_override
_NOT_IMPORTABLE: set[str] = set()
"""Modules :func:`_import_declaring_module` tried and could not import: not tried again."""


def _import_declaring_module(obj: Any) -> None:
    """Import the module a class or function says it is from, when its package is loaded
    but the module is not: a package that loads a submodule on first use (``numpy.rec``,
    declaring ``np.recarray``) leaves it out of ``sys.modules`` until then. cloudpickle
    takes such a module for one made at run time and copies the class by value, and the
    copy is another class where it arrives: ``np.recarray``'s own methods fail on it.
    Imported, the class travels by reference, as the plain pickler would send it."""
    module = getattr(obj, "__module__", None)
    if type(module) is not str or module in sys.modules or module in _NOT_IMPORTABLE:
        return
    package = module.partition(".")[0]
    if package == module or package not in sys.modules:
        return
    try:
        importlib.import_module(module)
    except Exception:  # made at run time after all: it travels by value, as before
        _NOT_IMPORTABLE.add(module)


class _Pickler(cloudpickle.Pickler):  # type: ignore[misc]
    """cloudpickle, keeping the file names of the code it pickles by value, and sending
    classes and functions of lazily loaded submodules by reference."""

    # One level of maps, as cloudpickle's own: looked up for every object pickled.
    dispatch_table = ChainMap(
        {types.CodeType: _reduce_code}, *cloudpickle.Pickler.dispatch_table.maps
    )

    def reducer_override(self, obj: Any) -> Any:
        if isinstance(obj, (type, types.FunctionType)):
            _import_declaring_module(obj)
        return _cloudpickle_reducer_override(self, obj)


# What the plain pickler may name by reference (importable wherever it is unpickled):
# message classes, and the call template's placeholders.
_BY_REFERENCE: set[Any] = {Ref, _ref}


def pickle_by_reference(cls: type) -> type:
    """Declare ``cls`` importable wherever its instances are unpickled (a message class),
    so that they pickle without cloudpickle's care for what must travel by value. Returns
    ``cls``: a class decorator."""
    _BY_REFERENCE.add(cls)
    return cls


# The exceptions of the language itself: importable everywhere, and made of their
# arguments (and their attributes), as cloudpickle pickles them too. A task that raises
# one is reported without cloudpickle's cost, several times the rest of the report.
_BUILTIN_ERRORS = frozenset(
    cls
    for cls in vars(builtins).values()
    if isinstance(cls, type) and issubclass(cls, BaseException)
)


class _NotPlain(Exception):
    """Raised by :class:`_PlainPickler` at the first object it must leave to cloudpickle."""


class _PlainPickler(pickle.Pickler):
    """The C pickler, for what is made of builtin data only (and of :data:`_BY_REFERENCE`).

    Exact ``int``, ``float``, ``bool``, ``None``, ``str``, ``bytes``, ``bytearray``,
    ``tuple``, ``list``, ``dict``, ``set``, ``frozenset`` and ``PickleBuffer`` never reach
    :meth:`reducer_override`, and pickle exactly as cloudpickle would pickle them.
    So do the builtin exceptions (with builtin data for arguments). Anything else (a
    function, a class, an instance) ends the attempt: cloudpickle decides whether it
    travels by reference or by value. Most of what travels (messages,
    plain arguments, small results) is plain, and cloudpickle's pickler costs several
    times what the C pickler alone does on such objects.
    """

    def reducer_override(self, obj: Any) -> Any:
        cls = type(obj)
        if cls in _BY_REFERENCE or (
            (cls is type or cls is types.FunctionType) and obj in _BY_REFERENCE
        ):
            return NotImplemented
        if cls in _BUILTIN_ERRORS or (cls is type and obj in _BUILTIN_ERRORS):
            return NotImplemented
        raise _NotPlain


_MEMO_KEPT = 1024
"""A pickler that wrote a pickle longer than this many bytes is replaced, not cleared:
its memo table never shrinks, and clearing it clears all of it, every time. One batch of
5,000 results made every later small pickle on that thread cost 50 µs instead of 2."""


class _Plain(threading.local):
    """One :class:`_PlainPickler` per thread, reused: making one costs more than
    pickling a small message with it. Reused only after small pickles (see
    :data:`_MEMO_KEPT`)."""

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
        if len(data) > _MEMO_KEPT:  # at most one memo entry per byte written
            self._reset()
            return data, buffers
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
    """cloudpickle, naming :data:`_BY_REFERENCE` classes by reference."""

    def reducer_override(self, obj: Any) -> Any:
        if type(obj) is type and obj in _BY_REFERENCE:
            return NotImplemented
        return _Pickler.reducer_override(self, obj)


class _FindingPickler(_SplitPickler):
    """:class:`_SplitPickler`, collecting every ``bytes`` and ``bytearray`` of at least
    ``threshold`` bytes it meets. The C pickler writes those two types itself, in band,
    without asking ``reducer_override``; ``persistent_id`` is the one hook it calls for
    every object (a Python call each: the plain pickler, for builtin data, goes without)."""

    threshold = OUT_OF_BAND_BYTES
    found: dict[int, bytes | bytearray] | None = None  # made at the first find

    def persistent_id(self, obj: Any) -> None:
        cls = type(obj)
        if (cls is bytes or cls is bytearray) and len(obj) >= self.threshold:
            if self.found is None:
                self.found = {}
            self.found[id(obj)] = obj

    def held(self) -> list[bytes | bytearray]:
        """The buffers found that the pickled object holds: not those a reducer made
        while pickling (NumPy makes its data ``bytes`` for an array it cannot pass out of
        band), which another pickling would make anew, so they stay in band."""
        if self.found is None:
            return []
        self.clear_memo()
        found = list(self.found.values())
        self.found = None
        return [b for b, refs in zip(found, _references(found), strict=True) if refs > _ALONE]


def _references(objects: list[Any]) -> list[int]:
    return [sys.getrefcount(o) for o in objects]


# What _references says of an object nothing else holds, measured through the same code
# (the count includes references this interpreter makes to call getrefcount).
_ALONE = _references([bytearray(1)])[0]


class _Discard:
    """A file that keeps nothing: the finder's pickle is not wanted, only what it saw."""

    def write(self, data: Any) -> int:
        return len(data)


def _discard(buffer: pickle.PickleBuffer) -> None:
    pass


# How a buffer found by _FindingPickler is rebuilt from an out-of-band buffer: the opcodes
# of ``bytes(buffer)`` (``bytearray(buffer)``), then MEMOIZE and POP. See _dumps_big.
_REBUILD = {
    bytes: b"\x8c\x08builtins\x8c\x05bytes\x93\x97\x98\x85R\x940",
    bytearray: b"\x8c\x08builtins\x8c\x09bytearray\x93\x97\x85R\x940",
}


def _dumps_big(obj: Any, big: list[bytes | bytearray]) -> tuple[bytes, list[memoryview]]:
    """``obj``'s pickle with the buffers ``big`` out of band, readable by ``pickle.loads``.

    The stream starts by rebuilding each of ``big`` from its out-of-band buffer into the
    unpickler's memo (entries 0, 1, ...); the pickler starts with a memo that already
    holds them under those numbers, so wherever ``obj`` refers to one, the stream just
    says "memo entry i", as for any object met twice."""
    stream = io.BytesIO()
    stream.write(b"\x80\x05")  # PROTO 5
    for buffer in big:
        stream.write(_REBUILD[type(buffer)])
    raw: list[pickle.PickleBuffer] = []
    pickler = _SplitPickler(stream, protocol=5, buffer_callback=raw.append)
    pickler.memo = {id(buffer): (i, buffer) for i, buffer in enumerate(big)}
    pickler.dump(obj)
    return stream.getvalue(), [memoryview(b) for b in big] + [b.raw() for b in raw]


_AFTER_BUFFER = (0x94, 0x95)  # MEMOIZE, or the FRAME holding it after an unframed buffer


def _may_hold_big(data: bytes, threshold: int) -> bool:
    """Whether the pickle ``data`` may hold a ``bytes`` or ``bytearray`` of at least
    ``threshold`` bytes in band: a ``BINBYTES`` or ``BYTEARRAY8`` opcode byte with such a
    length after it, followed that far on by the ``MEMOIZE`` the pickler writes after
    each. A superset (the finder decides), searched byte by byte at C speed, so that a
    long pickle of many small objects (a list of a million numbers) is mostly spared the
    finder's call per object."""
    size = len(data)
    if size >= 1 << 32:  # BINBYTES8 too, and no search is worth it beside that pickle
        return True
    for opcode, head in ((b"B", 5), (b"\x96", 9)):  # the opcode and its length's 4 or 8 bytes
        at = data.find(opcode)
        while at >= 0:
            length = int.from_bytes(data[at + 1 : at + head], "little")
            end = at + head + length
            if length >= threshold and end < size and data[end] in _AFTER_BUFFER:
                return True
            at = data.find(opcode, at + 1)
    return False


def dumps_split(obj: Any, threshold: int = OUT_OF_BAND_BYTES) -> tuple[bytes, list[memoryview]]:
    """``obj`` as its pickle stream and the raw views of its out-of-band buffers, in the
    order ``pickle.loads(stream, buffers=...)`` wants them back: those pickle passes out
    of band itself (NumPy arrays, ``PickleBuffer``), and every ``bytes`` and
    ``bytearray`` of at least ``threshold`` bytes.

    A pickle shorter than ``threshold`` cannot hold such a buffer in band, so small builtin
    values cost what the plain pickle costs; a longer one is searched for them. Where a
    value holds such a buffer, it is pickled a second time, its pickle starting with the
    buffers (see :func:`_dumps_big`)."""
    plain = _plain.dumps(obj)
    if plain is not None:
        data, raw = plain
        if len(data) < threshold or not _may_hold_big(data, threshold):
            return data, [b.raw() for b in raw] if raw else []
        finder = _FindingPickler(_Discard(), protocol=5, buffer_callback=_discard)
        finder.threshold = threshold
        finder.dump(obj)  # builtin data: no reducer of the user's runs twice
    else:
        raw = []
        stream = io.BytesIO()
        finder = _FindingPickler(stream, protocol=5, buffer_callback=raw.append)
        finder.threshold = threshold
        finder.dump(obj)
        data = stream.getvalue()
    big = finder.held()
    if big:
        return _dumps_big(obj, big)
    return data, [b.raw() for b in raw]
