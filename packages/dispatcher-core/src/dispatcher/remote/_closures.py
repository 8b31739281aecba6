"""Functions made over and over from the same code, shipped for the price of their values.

A program that makes a function per node (``[op(lambda x, k=k: x + k)(...) for k in ...]``,
or a closure over a loop variable) gives the shipper a new function each time; pickling
each one by value through cloudpickle cost hundreds of microseconds, several times the
task. Those functions differ only in their defaults and their closure's values: the first
of a code is pickled in full and becomes the *template*; each later one with that code,
the same globals (each name its code reads still bound to the very object it was bound to
then) and no attributes of its own travels as the template's pickle, as it is, with its
own defaults and cell values (:func:`dumps_function`), pickled by the C pickler when they
are builtin data. The worker loads each template once and builds the function from its
code with those values (:func:`_derive`): a different function for every different value,
as the caller's are. Anything else is pickled in full, as before.
"""

from __future__ import annotations

import types
from collections.abc import Callable
from typing import Any

from ._pickle import _BY_REFERENCE, _plain, loads, pickle_by_reference

__all__ = ["dumps_function"]

_TEMPLATE_BYTES = 64 * 1024
"""A larger first pickle (a function reading large globals) makes no template: every
function of its code would carry it."""
_TEMPLATES_KEPT = 128
_MISSING = object()


def _global_names(code: types.CodeType) -> tuple[str, ...]:
    """The names ``code`` (and the code nested in it) may read as globals."""
    names = set(code.co_names)
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            names.update(_global_names(const))
    return tuple(sorted(names))


class _Template:
    """The first function of a code, pickled in full, and what it read then."""

    __slots__ = ("annotations", "data", "doc", "globals", "module", "name", "qualname", "read")

    def __init__(self, func: types.FunctionType, data: bytes) -> None:
        self.data = data
        self.globals = func.__globals__
        self.read = {n: func.__globals__.get(n, _MISSING) for n in _global_names(func.__code__)}
        self.name, self.qualname = func.__name__, func.__qualname__
        self.module, self.doc = func.__module__, func.__doc__
        self.annotations = dict(func.__annotations__)

    def derive(self, func: types.FunctionType) -> bytes | None:
        """``func``'s pickle as this template and its own values; ``None`` when it
        differs otherwise, or its values are not builtin data."""
        scope = func.__globals__
        if scope is not self.globals or func.__dict__:
            return None
        for name, value in self.read.items():
            if scope.get(name, _MISSING) is not value:
                return None
        try:
            if (
                func.__name__ != self.name
                or func.__qualname__ != self.qualname
                or func.__module__ != self.module
                or func.__doc__ != self.doc
                or func.__annotations__ != self.annotations
            ):
                return None
            closure = func.__closure__
            cells = None if closure is None else tuple(cell.cell_contents for cell in closure)
        except Exception:  # an empty cell, annotations that will not compare
            return None
        made = _plain.dumps(_Derived(self.data, func.__defaults__, func.__kwdefaults__, cells))
        if made is None or made[1]:
            return None
        return made[0]


_templates: dict[types.CodeType, _Template] = {}


def dumps_function(func: Any, dumps: Callable[[Any], bytes]) -> bytes:
    """``dumps(func)``; for a function whose code was pickled before, the template's
    pickle with its own defaults and cell values where that will do (see the module)."""
    if type(func) is not types.FunctionType:
        return dumps(func)
    code = func.__code__
    template = _templates.get(code)
    if template is not None:
        data = template.derive(func)
        if data is not None:
            return data
    data = dumps(func)
    # (One that would not do replaces the template: its globals may have moved on.)
    if len(data) <= _TEMPLATE_BYTES:
        if template is None and len(_templates) >= _TEMPLATES_KEPT:
            _templates.clear()
        _templates[code] = _Template(func, data)
    return data


@pickle_by_reference
class _Derived:
    """Pickles as the call of :func:`_derive` that rebuilds a function of a template."""

    __slots__ = ("args",)

    def __init__(self, *args: Any) -> None:
        self.args = args

    def __reduce__(self) -> tuple[Any, ...]:
        return _derive, self.args


_BASES_KEPT = 256
_bases: dict[bytes, types.FunctionType] = {}
"""Worker side: each template loaded once, by its pickle."""


def _derive(
    template: bytes,
    defaults: tuple[Any, ...] | None,
    kwdefaults: dict[str, Any] | None,
    cells: tuple[Any, ...] | None,
) -> types.FunctionType:
    """The function of ``template``'s code and globals with these defaults and cell
    values (where a function shipped from a template is unpickled)."""
    base = _bases.get(template)
    if base is None:
        if len(_bases) >= _BASES_KEPT:
            _bases.clear()
        base = _bases[template] = loads(template)
    closure = None if cells is None else tuple(types.CellType(value) for value in cells)
    func = types.FunctionType(base.__code__, base.__globals__, base.__name__, defaults, closure)
    func.__kwdefaults__ = kwdefaults
    func.__qualname__ = base.__qualname__
    func.__module__ = base.__module__
    func.__doc__ = base.__doc__
    func.__annotations__ = dict(base.__annotations__)
    return func


_BY_REFERENCE.add(_derive)
