"""Cache keys: a content hash of what a node computes.

A node's key hashes the function's identity and code, the node's constant arguments by
value and the keys of its inputs, so two nodes with the same key compute the same value
(for functions without side effects). A function is hashed by its bytecode, constants,
names, nested code objects, default arguments, the values its closure captured, the
globals its code loads (functions by their code in turn, modules by name, other values
by content) and what it loads through the program's own modules (``utils.scale(x)``:
functions and classes by their code, constants by value; a module imported in its body
by its source file; see :mod:`._cache_reads`) -- never by its line numbers or source
text, so editing a comment or moving the function changes nothing, while editing its
body, a helper it calls or a constant it reads does. (joblib's ``Memory`` hashes the
source text instead, so a comment edit re-runs it, and it ignores closure values and
globals, so a changed captured value or module constant is a wrong hit there.)

Constants are hashed by value: scalars, strings, bytes, containers (dicts in their order,
sets in sorted order of their items' hashes), NumPy arrays and other buffers by their
bytes, functions by their code; anything else by its pickle, in which the functions and
classes it holds count by their code too (a class: its methods and constant attributes,
over its bases), so editing a method of an argument's class changes the key. What cannot be
hashed that way (an object that does not pickle, an object-dtype array, a cycle) makes
the node -- and everything downstream of it -- uncacheable, with a debug log line saying
why: never an error, never a wrong hit.

A global that cannot be hashed by content (a lock, a connection) is left out of the key,
with a debug line: such objects hold state, not a value a result depends on. So are
mutable values read through a module (``counters.calls``, a registry, a memo) and
mutable class attributes. Installed code (the standard library, site-packages) is not
followed through its modules, and the functions a value is rebuilt with from its pickle
count by name there: a library's version is not keyed. What a
function reads from outside the program -- files, databases, the clock -- no key sees.
"""

from __future__ import annotations

import enum
import functools
import hashlib
import io
import logging
import pickle
import struct
import sys
import types
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from ._cache import _reraise_ctrl_c
from ._cache_reads import (
    UNLOADED,
    Chain,
    Root,
    absolute_name,
    code_reads,
    constant,
    installed,
    module_member,
    root_module,
    source_file,
)
from ._errors import safe_str
from ._template import Ref, user_callable

__all__ = ["KEY_VERSION", "Uncacheable", "function_digest", "node_key", "value_digest"]

log = logging.getLogger("dispatcher.cache")

KEY_VERSION = b"dispatcher-cache-1:%d.%d" % sys.version_info[:2]
"""Namespaces every key: bytecode and pickles differ between Python versions."""

_DIGEST_SIZE = 16


class Uncacheable(Exception):
    """A value or function that cannot be hashed by content; the message says why."""


Memo = dict[int | str, tuple[Any, bytes]]
"""One run's digests of functions (by ``id``), of values (by ``~id``) and of source
files (by path), each with what it is the digest of."""

_pack_q = struct.Struct("<q").pack
_pack_d = struct.Struct("<d").pack

# Code objects are immutable: their digests are kept (with the object, so its id stays
# unique) for as long as the process lives.
_code_digests: dict[int, tuple[types.CodeType, bytes]] = {}


class _Hasher:
    """Feeds values into one blake2b hash; ``seen`` breaks cycles through functions,
    ``cut`` holds those of them that a digest being made stands for by a placeholder, and
    ``local`` keeps such digests until the outermost function's is made."""

    __slots__ = ("cut", "functions", "h", "local", "seen")

    def __init__(self, functions: Memo) -> None:
        self.h = hashlib.blake2b(digest_size=_DIGEST_SIZE)
        self.functions = functions
        self.seen: set[int] = set()
        self.cut: set[int] = set()
        self.local: dict[int, tuple[Any, bytes, frozenset[int]]] = {}

    def feed(self, value: Any) -> None:
        update = self.h.update
        cls = type(value)
        if value is None or value is True or value is False or value is Ellipsis:
            update(b"c" + repr(value).encode())
        elif cls is int:
            text = str(value).encode()
            update(b"i" + _pack_q(len(text)) + text)
        elif cls is float:
            update(b"f" + _pack_d(value))
        elif cls is str:
            data = value.encode("utf-8", "surrogatepass")
            update(b"s" + _pack_q(len(data)))
            update(data)
        elif cls is bytes or cls is bytearray:
            update((b"b" if cls is bytes else b"B") + _pack_q(len(value)))
            update(value)
        elif cls is tuple or cls is list:
            update((b"t" if cls is tuple else b"l") + _pack_q(len(value)))
            for item in value:
                self.feed(item)
        elif cls is dict:
            update(b"d" + _pack_q(len(value)))
            for k, v in value.items():
                self.feed(k)
                self.feed(v)
        elif cls is set or cls is frozenset:
            # Iteration order of a set depends on the process's hash seed: sort by digest.
            digests = sorted(self._sub(item) for item in value)
            update((b"S" if cls is set else b"Z") + _pack_q(len(digests)) + b"".join(digests))
        elif cls is Ref:
            update(b"R" + _pack_q(value.index))
        elif cls is complex:
            update(b"j" + _pack_d(value.real) + _pack_d(value.imag))
        elif cls is memoryview:
            update(b"m" + value.format.encode() + repr(value.shape).encode())
            update(value.tobytes() if not value.c_contiguous else value.cast("B"))
        elif _is_ndarray(value):
            self._array(value)
        elif (
            callable(value)
            and not isinstance(value, type)
            and (_is_function_like(value) or _wraps(value))
        ):
            update(b"F" + self.function(value))
        elif isinstance(value, type):
            update(b"T" + _type_name(value) + self.function(value))
        elif isinstance(value, tuple) and hasattr(cls, "_fields"):  # a namedtuple
            update(b"n" + _type_name(cls) + _pack_q(len(value)))
            for item in value:
                self.feed(item)
        else:
            self._pickled(value)

    def _sub(self, value: Any) -> bytes:
        sub = _Hasher(self.functions)
        sub.seen, sub.cut, sub.local = self.seen, self.cut, self.local
        sub.feed(value)
        return sub.h.digest()

    def _array(self, value: Any) -> None:
        if value.dtype.hasobject:
            raise Uncacheable(f"a NumPy array of dtype {value.dtype} is hashed by its objects")
        # (the class too: a NumPy scalar and a 0-d array of its value are not alike)
        self.h.update(b"a" + _type_name(type(value)) + value.dtype.str.encode())
        self.h.update(repr(value.shape).encode())
        if value.flags.c_contiguous and value.dtype.kind not in "mM":
            self.h.update(memoryview(value).cast("B") if value.size else b"")
        else:  # (dates and durations have no buffer format: copied)
            self.h.update(value.tobytes())

    def _pickled(self, value: Any) -> None:
        # One object is often the argument of many nodes: its digest is kept for the run
        # (planning runs no user code but __reduce__, so it does not change meanwhile),
        # when made outside any function's (where it would hold placeholders).
        outside = not self.seen
        if outside:  # (keyed apart from the same object's digest as a function)
            kept = self.functions.get(~id(value))
            if kept is not None and kept[0] is value:
                self.h.update(kept[1])
                return
        try:
            out = io.BytesIO()
            _CodePickler(out, self).dump(value)
            data = out.getbuffer()
        except Uncacheable:
            raise
        except BaseException as exc:  # pickling runs arbitrary code: SystemExit included
            _reraise_ctrl_c(exc)
            raise Uncacheable(
                f"{type(value).__name__} cannot be hashed by value (it does not pickle: {exc!r})"
            ) from None
        h = hashlib.blake2b(
            b"p" + _type_name(type(value)) + _pack_q(len(data)), digest_size=_DIGEST_SIZE
        )
        h.update(data)
        digest = h.digest()
        if outside:
            self.functions[~id(value)] = (value, digest)
        self.h.update(digest)

    # -- functions ---------------------------------------------------------------------

    def function(self, func: Any) -> bytes:
        """The digest of a callable, memoised per run (closure values may change between
        runs, so never for longer)."""
        entry = self.functions.get(id(func))
        if entry is not None and entry[0] is func:
            return entry[1]
        if id(func) in self.seen:  # a closure that refers to itself, or mutual recursion
            self.cut.add(id(func))
            return b"<recursive>"
        local = self.local
        kept = local.get(id(func))
        if kept is not None and kept[0] is func:
            self.cut.update(kept[2])
            return kept[1]
        self.seen.add(id(func))
        cut = self.cut
        outer = set(cut) if cut else None
        cut.clear()
        try:
            sub = _Hasher(self.functions)
            sub.seen, sub.cut, sub.local = self.seen, cut, local
            sub._function(func)
            digest = sub.h.digest()
            cut.discard(id(func))
            # Met inside another function's hash, a function calling back into it has that
            # one as a placeholder: the digest holds within the outermost one's only, so it
            # is kept there (each function is expanded once: linear, not one expansion per
            # path), not as its own. The outermost digest covers every function reachable.
            if not cut or len(self.seen) == 1:  # (or the outermost: complete)
                self.functions[id(func)] = (func, digest)
            else:
                local[id(func)] = (func, digest, frozenset(cut))
        finally:
            self.seen.discard(id(func))
            if outer:
                cut.update(outer)
            if not self.seen:
                local.clear()
        return digest

    def _function(self, func: Any) -> None:
        update = self.h.update
        func = user_callable(func)
        if isinstance(func, types.FunctionType):
            update(b"fn" + _name_of(func))
            update(_code_digest(func.__code__))
            self.feed(func.__defaults__)
            self.feed(func.__kwdefaults__)
            self._globals(func)
            if func.__closure__:
                for cell in func.__closure__:
                    try:
                        contents = cell.cell_contents
                    except ValueError:  # an empty cell (not assigned yet)
                        update(b"<empty>")
                        continue
                    self.feed(contents)
        elif isinstance(func, (types.BuiltinFunctionType, types.BuiltinMethodType)):
            owner = getattr(func, "__self__", None)
            update(b"bi" + _name_of(func))
            if owner is not None and not isinstance(owner, types.ModuleType):
                self.feed(owner)
        elif isinstance(func, types.MethodType):
            update(b"me")
            self.feed(func.__func__)
            self.feed(func.__self__)
        elif isinstance(func, functools.partial):
            update(b"pa")
            self.feed(func.func)
            self.feed(func.args)
            self.feed(dict(sorted(func.keywords.items())))
        elif isinstance(func, type):
            update(b"cl" + _type_name(func))
            self._class_code(func)
        else:  # a callable instance: its class's code and its own state
            update(b"ob" + _type_name(type(func)))
            self._class_code(type(func))
            if _wraps(func):  # functools.lru_cache and its kind pickle by name alone
                self.feed(func.__wrapped__)
            self._pickled(func)

    def _globals(self, func: types.FunctionType) -> None:
        """The globals ``func``'s code loads (nested code included), by name and value, and
        what it loads from the program's own modules (see :meth:`_members`)."""
        reads = code_reads(func.__code__)
        namespace = func.__globals__
        builtins_ = namespace.get("__builtins__")
        update = self.h.update
        for name in reads.globals:
            if name in namespace:
                value = namespace[name]
            else:
                continue  # a builtin, or not defined yet
            update(b"g" + name.encode() + b"\0")
            if isinstance(value, types.ModuleType):
                update(b"M" + value.__name__.encode() + b"\0")
                continue
            if value is builtins_:
                continue
            self._global(name, value, func)
        if reads.chains:
            self._members(reads.chains, namespace, func)

    def _members(self, chains: tuple[Chain, ...], namespace: dict[str, Any], func: Any) -> None:
        """What ``func`` reads through the program's own modules (``utils.scale(x)``, or
        a module imported in its body): functions and classes by their code, constants
        (numbers, strings, enum members, paths, dates, tuples of them) by value. Other
        values read that way (a list, a dict, an object) are taken for state -- a
        registry, a memo, a counter -- as mutable class attributes are, and left out. A
        module not imported yet counts by its source file (see
        :func:`._cache_reads.source_file`). Installed modules are not followed: their
        code changes with their version, which keys do not see."""
        update = self.h.update
        sources: set[str] = set()
        for root, attributes in chains:
            module = root_module(root, namespace)
            value = UNLOADED if module is None else module_member(module, attributes)
            if value is None:
                continue
            path = self._keyed_file(root, attributes, namespace, value)
            if path:
                sources.add(path)
            elif value is not UNLOADED:
                update(b"A" + ".".join((root.name, *attributes)).encode() + b"\0")
                if _is_function_like(value) or _wraps(value) or constant(value):  # (classes)
                    self._global(".".join(attributes), value, func)
                else:
                    update(b"<state>")
        # By their contents alone: a key must hold for a copy of the program elsewhere.
        for digest in sorted(self._file(path) for path in sources):
            update(b"S" + digest)

    def _keyed_file(
        self, root: Root, attributes: tuple[str, ...], namespace: dict[str, Any], value: Any
    ) -> str:
        """The source file a chain reaching ``value`` is keyed by instead of ``value``
        (``""``: none): that of a module, or a submodule, not imported yet; or of one
        imported since this process keyed it by that very file (the task imported it):
        the code in memory is the file's, and the key stays, so a second run here hits."""
        if value is not UNLOADED and not _keyed_by_file:
            return ""
        name = absolute_name(root, namespace)
        path = source_file(name, attributes) if name else ""
        if not path:
            return ""
        digest = self._file(path)
        if value is UNLOADED:
            _keyed_by_file[path] = digest
            return path
        return path if _keyed_by_file.get(path) == digest else ""

    def _file(self, path: str) -> bytes:
        """The digest of a source file's bytes, read once per run (empty when it cannot
        be read)."""
        kept = self.functions.get(path)
        if kept is not None:
            return kept[1]
        try:
            with open(path, "rb") as file:
                digest = hashlib.blake2b(file.read(), digest_size=_DIGEST_SIZE).digest()
        except OSError:
            digest = b""
        self.functions[path] = (path, digest)
        return digest

    def _global(self, name: str, value: Any, func: Any) -> None:
        exc = self._value_or_left_out(value)
        if exc is not None:
            log.debug(
                "global %r of %s is left out of its key: %s",
                name,
                getattr(func, "__qualname__", func),
                exc,
            )

    def _class_code(self, cls: type) -> None:
        """What a class's instances compute with: over its bases too, its methods (and
        properties) by their code (not the globals they read) and its constants (numbers,
        strings, tuples of them, an enum's members) by value. Dunders aside, and mutable
        attributes, which hold state (a registry, a counter), not a value results depend
        on; one that cannot be hashed is left out, as a global would be."""
        update = self.h.update
        for klass in cls.__mro__:
            if klass.__module__ == "builtins":
                continue
            update(b"K" + _type_name(klass))
            members: Mapping[str, enum.Enum] = {}
            if isinstance(klass, enum.EnumMeta):  # its members are constants, by value
                members = klass.__members__
                for name in members:
                    update(b"e" + name.encode() + b"\0")
                    self._value_or_left_out(members[name].value)
            for name, member in vars(klass).items():
                if name in members:
                    continue
                if isinstance(member, (staticmethod, classmethod)):
                    member = member.__func__
                if isinstance(member, property):
                    update(b"p" + name.encode() + b"\0")
                    for f in (member.fget, member.fset, member.fdel):
                        if isinstance(f, types.FunctionType):
                            update(_code_digest(f.__code__))
                elif isinstance(member, types.FunctionType):
                    # By its code only: through the globals of every method, an instance
                    # of a library's class would hash much of the library.
                    update(b"m" + name.encode() + b"\0" + _code_digest(member.__code__))
                elif not (name.startswith("__") and name.endswith("__")) and constant(member):
                    update(b"a" + name.encode() + b"\0")
                    self._value_or_left_out(member)

    def _value_or_left_out(self, value: Any) -> BaseException | None:
        """Feed a global's or a class constant's digest; one that cannot be hashed is left
        out (a placeholder instead), and what that raised is returned."""
        try:
            self.h.update(self._sub(value))
        except BaseException as exc:  # Uncacheable, or a __reduce__ that fails oddly
            _reraise_ctrl_c(exc)
            self.h.update(b"<unhashable>")
            return exc
        return None


class _CodePickler(pickle.Pickler):
    """Pickles a value for its digest with the functions and classes in it by their code
    (a plain pickle names them only, so editing a method of an argument's class, or a
    function an argument holds, would keep the key), and its sets by their items' digests
    in sorted order (a plain pickle follows the set's iteration order, which differs
    between processes: the key would never be found again)."""

    def __init__(self, file: Any, hasher: _Hasher) -> None:
        super().__init__(file, protocol=5)
        self.hasher = hasher

    def persistent_id(self, obj: Any) -> Any:
        cls = type(obj)
        if cls is types.FunctionType and _installed_by_name(obj):
            # A library's function a value is rebuilt with (``re._compile`` for a compiled
            # pattern): by name, as a library's version is not keyed; through its globals
            # (``re``'s cache of patterns) the key would change with what ran before.
            return _name_of(obj)
        if cls is types.FunctionType or (isinstance(obj, type) and obj.__module__ != "builtins"):
            return self.hasher.function(obj)
        if cls is set or cls is frozenset:
            return self.hasher._sub(obj)
        return None


_keyed_by_file: dict[str, bytes] = {}
"""Source files this process keyed a module by before it was imported, with their
digests then: see :meth:`_Hasher._members`."""


def _installed_by_name(func: types.FunctionType) -> bool:
    """Is ``func`` installed code that its module and name find again (not a function
    made at run time, whose closure holds values)?"""
    if installed(func.__module__):
        found: Any = sys.modules.get(func.__module__)
        for part in func.__qualname__.split("."):
            found = getattr(found, part, None)
        return found is func
    return False


def _is_ndarray(value: Any) -> bool:
    cls = type(value)
    return cls.__module__ == "numpy" and hasattr(value, "dtype") and hasattr(value, "shape")


def _is_function_like(value: Any) -> bool:
    return isinstance(
        value,
        (
            types.FunctionType,
            types.BuiltinFunctionType,
            types.BuiltinMethodType,
            types.MethodType,
            functools.partial,
        ),
    )


def _wraps(value: Any) -> bool:
    """Does ``value`` wrap a function (``functools.lru_cache``, ``functools.wraps``)?"""
    try:
        return isinstance(getattr(value, "__wrapped__", None), types.FunctionType)
    except Exception:  # a __getattr__ that fails: wraps nothing we can see
        return False


def _name_of(func: Any) -> bytes:
    module = getattr(func, "__module__", None) or ""
    qualname = getattr(func, "__qualname__", None) or getattr(func, "__name__", "")
    return f"{module}:{qualname}".encode() + b"\0"


def _type_name(cls: type) -> bytes:
    return f"{cls.__module__}:{cls.__qualname__}".encode() + b"\0"


def _code_digest(code: types.CodeType) -> bytes:
    """The digest of what a code object does: bytecode, constants (nested code objects
    included), names, argument layout and flags -- never its file, line numbers or
    line table."""
    entry = _code_digests.get(id(code))
    if entry is not None and entry[0] is code:
        return entry[1]
    h = hashlib.blake2b(digest_size=_DIGEST_SIZE)
    h.update(code.co_code)
    h.update(code.co_exceptiontable)
    h.update(
        repr(
            (
                code.co_argcount,
                code.co_posonlyargcount,
                code.co_kwonlyargcount,
                code.co_flags,
                code.co_names,
                code.co_varnames,
                code.co_freevars,
                code.co_cellvars,
                code.co_name,
            )
        ).encode()
    )
    consts = _Hasher({})
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            consts.h.update(b"C" + _code_digest(const))
        else:
            consts.feed(const)
    h.update(consts.h.digest())
    digest = h.digest()
    _code_digests[id(code)] = (code, digest)
    return digest


def function_digest(func: Callable[..., Any], memo: Memo) -> bytes:
    """The digest of ``func``'s identity and code; raises :class:`Uncacheable`."""
    return _Hasher(memo).function(func)


def value_digest(value: Any) -> str:
    """The hex digest of ``value``, hashed by content; raises :class:`Uncacheable`."""
    hasher = _Hasher({})
    hasher.h.update(KEY_VERSION + b"value")
    _guarded(hasher.feed, value)
    return hasher.h.hexdigest()


def node_key(
    kind: str,
    func: Callable[..., Any],
    shape: int,
    args: Sequence[Any],
    kwargs: Mapping[str, Any] | None,
    input_keys: Sequence[str],
    memo: Memo,
) -> str:
    """The hex key of a call node: its kind, function, argument template (``Ref``
    placeholders stand for the inputs) and its inputs' keys, in order. Raises
    :class:`Uncacheable`."""
    hasher = _Hasher(memo)
    update = hasher.h.update
    update(KEY_VERSION + b"node:" + kind.encode() + b"\0" + _pack_q(shape))
    update(_guarded(hasher.function, func))
    _guarded(hasher.feed, tuple(args))
    _guarded(hasher.feed, dict(kwargs) if kwargs else None)
    update(_pack_q(len(input_keys)))
    for key in input_keys:
        update(key.encode())
    return hasher.h.hexdigest()


def _guarded(step: Callable[[Any], Any], value: Any) -> Any:
    try:
        return step(value)
    except Uncacheable:
        raise
    except RecursionError:
        raise Uncacheable("a value nested too deeply (or containing itself)") from None
    except BaseException as exc:  # a __reduce__ or __eq__ that fails: not hashable by value
        _reraise_ctrl_c(exc)
        raise Uncacheable(f"hashing it raised {type(exc).__name__}: {safe_str(exc)}") from None
