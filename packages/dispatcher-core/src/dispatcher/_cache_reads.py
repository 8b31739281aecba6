"""What a function's code reads from outside it, for its cache key: the globals it loads,
and the attribute chains it loads from modules (``utils.scale``, ``pkg.sub.RATE``, a
module imported in its body and used as ``h.scale`` or ``from utils import scale``).

The bytecode says this, where a linear pass can read it (a module bound to another
local, or looped over, is not followed). ``co_names`` would not: it also holds attribute
names, so ``m.start`` on any object would count as reading a global ``start``, and it
does not say which attribute is loaded from which module. The instructions read are
those of Python 3.11 to 3.13 (3.13's paired loads and stores of locals included).

Also here: which modules are the program's own (its scripts, its modules, a package it
develops in place) and which are installed code (the standard library, site-packages).
Keys follow attributes into the first only.
"""

from __future__ import annotations

import datetime
import decimal
import dis
import enum
import fractions
import functools
import importlib.util
import os
import site
import sys
import sysconfig
import types
from importlib.machinery import PathFinder
from pathlib import PurePath
from typing import Any, NamedTuple

__all__ = [
    "UNLOADED",
    "CodeReads",
    "Root",
    "absolute_name",
    "code_reads",
    "constant",
    "installed",
    "module_member",
    "root_module",
    "source_file",
]

_GLOBAL_LOADS = frozenset({"LOAD_GLOBAL", "LOAD_NAME", "LOAD_FROM_DICT_OR_GLOBALS"})
_LOCAL_LOADS = frozenset(
    {
        "LOAD_FAST",
        "LOAD_FAST_CHECK",
        "LOAD_FAST_BORROW",
        "LOAD_FAST_AND_CLEAR",
        "LOAD_DEREF",
        "LOAD_CLASSDEREF",
        "LOAD_FROM_DICT_OR_DEREF",
    }
)
_PAIRS = frozenset(
    {
        "LOAD_FAST_LOAD_FAST",
        "LOAD_FAST_BORROW_LOAD_FAST_BORROW",
        "STORE_FAST_LOAD_FAST",
        "STORE_FAST_STORE_FAST",
    }
)
"""Two locals loaded or stored in one instruction (Python 3.13 on)."""
_ATTRIBUTE_LOADS = frozenset({"LOAD_ATTR", "LOAD_METHOD"})
_STORES = frozenset({"STORE_FAST", "STORE_DEREF", "STORE_NAME", "STORE_GLOBAL"})


class Root(NamedTuple):
    """Where a chain starts: a global (``level`` 0, ``imported`` false), or a module an
    ``import`` in the code names (``level`` dots before it, as written)."""

    name: str
    level: int
    imported: bool


Chain = tuple[Root, tuple[str, ...]]


class CodeReads(NamedTuple):
    """The global names a code loads, and the attribute chains it loads from a global
    or an imported module (each with one attribute or more), both sorted."""

    globals: tuple[str, ...]
    chains: tuple[Chain, ...]


_reads_of: dict[int, tuple[types.CodeType, CodeReads]] = {}


def code_reads(code: types.CodeType) -> CodeReads:
    """What ``code`` and the code nested in it read (kept for as long as the process
    lives: code objects are immutable)."""
    entry = _reads_of.get(id(code))
    if entry is not None and entry[0] is code:
        return entry[1]
    names: set[str] = set()
    chains: set[Chain] = set()
    _scan(code, {}, names, chains)
    reads = CodeReads(tuple(sorted(names)), tuple(sorted(chains)))
    _reads_of[id(code)] = (code, reads)
    return reads


def _scan(
    code: types.CodeType, outer: dict[str, Chain], names: set[str], chains: set[Chain]
) -> None:
    # A linear pass: what a local bound to an imported module holds is taken from the
    # import that last stored it (control flow aside: at worst a chain more is keyed).
    bound = {name: outer[name] for name in code.co_freevars if name in outer}
    chain: Chain | None = None  # the chain the instructions are loading
    source: Chain | None = None  # what an import's IMPORT_FROM reads from
    imported: Chain | None = None  # what the last IMPORT_NAME or IMPORT_FROM pushed
    swapping = False  # ``import a.b.c as x``: an attribute replaces the module under it
    consts: list[Any] = [None, None]  # the last two constants loaded: an import's operands
    for ins in dis.get_instructions(code):
        op = ins.opname
        if op in _ATTRIBUTE_LOADS and chain is not None and isinstance(ins.argval, str):
            chain = (chain[0], (*chain[1], ins.argval))
            continue
        if chain is not None and chain[1]:
            chains.add(chain)
        chain = None
        if op in _GLOBAL_LOADS and isinstance(ins.argval, str):
            names.add(ins.argval)
            chain = (Root(ins.argval, 0, False), ())
        elif op in _LOCAL_LOADS and ins.argval in bound:
            chain = bound[ins.argval]
        elif op in _PAIRS and isinstance(ins.argval, tuple) and len(ins.argval) == 2:
            first, second = ins.argval
            if op.startswith("STORE"):
                bound.pop(first, None)
            if op.endswith("STORE_FAST"):
                bound.pop(second, None)
            elif second in bound:
                chain = bound[second]  # (the second is on top, where LOAD_ATTR reads)
        elif op == "IMPORT_NAME":
            level, fromlist = consts
            name = str(ins.argval)
            # ``import a.b`` binds ``a``; ``from a.b import c`` takes ``c`` from ``a.b``
            top = not fromlist and not level
            source = imported = (
                Root(name.partition(".")[0] if top else name, level or 0, True),
                (),
            )
            continue
        elif op == "IMPORT_FROM" and source is not None:
            imported = (source[0], (*source[1], str(ins.argval)))
            chains.add(imported)
            continue
        elif op == "SWAP" and imported is not None and imported is not source:
            source, swapping = imported, True
            continue
        elif op == "POP_TOP" and swapping:
            swapping = False  # (the module the attribute replaced)
            continue
        elif op in _STORES:
            if imported is not None:
                bound[ins.argval] = imported
            else:
                bound.pop(ins.argval, None)
            if imported is source:
                source = None  # ``import a as b``: nothing more comes from it
            imported = None
            continue
        elif op == "LOAD_CONST":
            consts = [consts[1], ins.argval]
            continue
        source = imported = None
        swapping = False
    if chain is not None and chain[1]:
        chains.add(chain)
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            _scan(const, bound, names, chains)


_CONSTANT_TYPES = (
    type(None),
    bool,
    int,
    float,
    complex,
    str,
    bytes,
    type,
    range,
    enum.Enum,
    PurePath,
    datetime.date,
    datetime.time,
    datetime.timedelta,
    decimal.Decimal,
    fractions.Fraction,
)


def constant(value: Any) -> bool:
    """Is a value read through a module, or a class attribute, a constant (keyed by
    value, where anything else read that way is state): a number (a NumPy scalar too), a
    string, a class, an enum's member, a path, a date, or a tuple or frozenset of them?"""
    if isinstance(value, (tuple, frozenset)):
        return all(constant(item) for item in value)
    if isinstance(value, _CONSTANT_TYPES):
        return True
    cls = type(value)
    return (  # a NumPy scalar (not a 0-d array: that one is mutable)
        cls.__module__ == "numpy"
        and cls.__name__ != "ndarray"
        and getattr(value, "shape", None) == ()
        and getattr(value, "dtype", None) is not None
        and not value.dtype.hasobject
    )


def root_module(root: Root, namespace: dict[str, Any]) -> types.ModuleType | None:
    """The module a chain starts from: the global ``root`` names in a function's
    ``namespace``, or the module an import in its body names, if it is imported (see
    :func:`source_file` for one that is not); ``None`` otherwise."""
    if root.imported:
        module = sys.modules.get(_absolute(root, namespace))  # (not imported here)
    else:
        module = namespace.get(root.name)
    return module if isinstance(module, types.ModuleType) else None


UNLOADED = object()
"""What :func:`module_member` finds where a module of the program's own lacks the
attribute: a submodule not imported yet, most often."""


def module_member(module: types.ModuleType, attributes: tuple[str, ...]) -> Any:
    """What ``attributes`` reach from ``module``, through the program's own modules
    only: the first value that is not a module; :data:`UNLOADED` where one of them
    lacks the attribute; ``None`` when the chain leaves them or ends at a module. Reads
    module dictionaries, so no module ``__getattr__`` runs."""
    value: Any = module
    for attribute in attributes:
        if installed(value.__name__):
            return None
        value = vars(value).get(attribute, UNLOADED)
        if value is UNLOADED or not isinstance(value, types.ModuleType):
            return value
    return None


def source_file(name: str, attributes: tuple[str, ...]) -> str:
    """The source file of the deepest module ``name`` and ``attributes`` reach (module
    ``kpkg``, then ``sub.shift``: ``kpkg/sub.py``), if it is the program's own; ``""``
    if not, or if it cannot be found. For a module an import in a function's body names
    and nothing has imported yet, or a submodule not imported yet.

    Importing it to follow its members could cost, or do, what the program keeps out of
    this process (a GPU library's set-up, say): it is found on the path, not imported.
    Once the task has imported it, the key keeps to this file while it is unchanged, and
    otherwise follows the code in memory, which the task runs (see
    ``_cache_key._Hasher._keyed_file``)."""
    parts = [*name.split("."), *attributes]
    found = ""
    search: Any = None  # sys.path for a top-level module
    for depth in range(1, len(parts) + 1):
        full = ".".join(parts[:depth])
        module = sys.modules.get(full)
        try:
            spec = module.__spec__ if module is not None else PathFinder.find_spec(full, search)
        except Exception:  # (an odd finder, an unreadable directory): as far as it went
            spec = None
        if spec is None:
            break
        if spec.origin and spec.has_location:
            found = spec.origin
        search = spec.submodule_search_locations
        if search is None:  # a module, not a package: the rest are its attributes
            break
    return found if found and not _installed_path(found) else ""


def absolute_name(root: Root, namespace: dict[str, Any]) -> str:
    """The module a chain's root names: a global module's name, or the module an import
    in a function's body names, resolved against the importing package; ``""`` if it
    cannot be."""
    if not root.imported:
        module = namespace.get(root.name)
        return module.__name__ if isinstance(module, types.ModuleType) else ""
    return _absolute(root, namespace)


def _absolute(root: Root, namespace: dict[str, Any]) -> str:
    """The module name an import names, resolved against the importing package."""
    if not root.level:
        return root.name
    package = namespace.get("__package__")
    if not package:
        return ""
    try:
        return importlib.util.resolve_name("." * root.level + root.name, package)
    except ImportError:
        return ""


@functools.cache
def _library_roots() -> tuple[str, ...]:
    paths = sysconfig.get_paths()
    roots = {paths[key] for key in ("stdlib", "platstdlib", "purelib", "platlib") if key in paths}
    roots.update(site.getsitepackages() if hasattr(site, "getsitepackages") else ())
    roots.add(site.getusersitepackages())
    return tuple(os.path.join(os.path.realpath(root), "") for root in roots if root)


def _installed_path(path: str) -> bool:
    return os.path.realpath(path).startswith(_library_roots())


_installed_modules: dict[str, bool] = {"__main__": False}


def installed(module_name: str) -> bool:
    """Is this module installed code (the standard library, site-packages, built in or
    frozen), not the program's own (which a module without a file, made at run time,
    counts as)? A module not imported counts as installed."""
    known = _installed_modules.get(module_name)
    if known is not None:
        return known
    module = sys.modules.get(module_name)
    if module is None:
        return True
    where = getattr(module, "__file__", None) or next(iter(getattr(module, "__path__", ())), None)
    if isinstance(where, str):
        known = _installed_path(where)
    else:  # built in or frozen, or made by the program (no file: its own)
        spec = getattr(module, "__spec__", None)
        known = getattr(spec, "origin", None) in ("built-in", "frozen")
    _installed_modules[module_name] = known
    return known
