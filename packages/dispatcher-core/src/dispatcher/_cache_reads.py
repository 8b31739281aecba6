"""What a function's code reads from outside it, for its cache key: the globals it loads,
and the attribute chains it loads from modules (``utils.scale``, ``pkg.sub.RATE``, a
module imported in its body and used as ``h.scale`` or ``from utils import scale``).

The bytecode says this exactly. ``co_names`` would not: it also holds attribute names,
so ``m.start`` on any object would count as reading a global ``start``, and it does not
say which attribute is loaded from which module.

Also here: which modules are the program's own (its scripts, its modules, a package it
develops in place) and which are installed code (the standard library, site-packages).
Keys follow attributes into the first only.
"""

from __future__ import annotations

import dis
import functools
import importlib.util
import os
import site
import sys
import sysconfig
import types
from importlib.machinery import PathFinder
from typing import Any, NamedTuple

__all__ = ["CodeReads", "code_reads", "imported_source", "installed", "module_member"]

_GLOBAL_LOADS = frozenset({"LOAD_GLOBAL", "LOAD_NAME", "LOAD_FROM_DICT_OR_GLOBALS"})
_LOCAL_LOADS = frozenset(
    {"LOAD_FAST", "LOAD_FAST_CHECK", "LOAD_DEREF", "LOAD_CLASSDEREF", "LOAD_FROM_DICT_OR_DEREF"}
)
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
    module: Root | None = None  # a module an import left on the stack
    imported: Chain | None = None  # what the last import or IMPORT_FROM pushed
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
        elif op == "IMPORT_NAME":
            level, fromlist = consts
            name = str(ins.argval)
            # ``import a.b`` binds ``a``; ``from a.b import c`` takes ``c`` from ``a.b``
            top = not fromlist and not level
            module = Root(name.partition(".")[0] if top else name, level or 0, True)
            imported = (module, ())
            continue
        elif op == "IMPORT_FROM" and module is not None:
            imported = (module, (str(ins.argval),))
            chains.add(imported)
            continue
        elif op in _STORES:
            if imported is not None:
                bound[ins.argval] = imported
            else:
                bound.pop(ins.argval, None)
            if imported is not None and not imported[1]:
                module = None  # ``import a as b``: nothing more comes from it
            imported = None
            continue
        elif op == "LOAD_CONST":
            consts = [consts[1], ins.argval]
            continue
        module = imported = None
    if chain is not None and chain[1]:
        chains.add(chain)
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            _scan(const, bound, names, chains)


_MISSING = object()


def module_member(root: Root, attributes: tuple[str, ...], namespace: dict[str, Any]) -> Any:
    """What ``attributes`` reach from the global module ``root`` names in a function's
    ``namespace``, through the program's own modules only: the first value that is not a
    module, or ``None`` when the chain leaves them, ends at a module or finds nothing.
    Reads module dictionaries, so no module ``__getattr__`` runs."""
    value = namespace.get(root.name)
    if not isinstance(value, types.ModuleType):
        return None
    for attribute in attributes:
        if installed(value.__name__):
            return None
        value = vars(value).get(attribute, _MISSING)
        if value is _MISSING:
            return None
        if not isinstance(value, types.ModuleType):
            return value
    return None


def imported_source(root: Root, attributes: tuple[str, ...], namespace: dict[str, Any]) -> str:
    """The source file of the deepest module a chain from an import in a function's
    body reaches (``import kpkg.sub``, then ``kpkg.sub.shift``: ``kpkg/sub.py``), if it
    is the program's own; ``""`` if not, or if it cannot be found.

    Such a module may not be imported yet when the key is made (the task imports it
    when it runs), and importing it here could cost, or do, what the program keeps
    out of this process (a GPU library's set-up, say): it is found, not imported, and
    keyed by its file whether imported or not, so a key does not change once it is."""
    name = root.name
    if root.level:
        package = namespace.get("__package__")
        if not package:
            return ""
        try:
            name = importlib.util.resolve_name("." * root.level + name, package)
        except ImportError:
            return ""
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
