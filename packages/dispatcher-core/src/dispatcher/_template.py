"""The call template: how a node's function and arguments are kept, its dependencies taken
out.

Building a node replaces every dependency found in its arguments (inside plain containers,
at any depth) by a :class:`Ref` placeholder (:func:`capture`); running it fills the
placeholders back with the input values (:func:`call_task`). Both directions live here so
they stay each other's inverse. A leaf module: worker processes import it.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping, Sequence
from types import BuiltinFunctionType, FunctionType
from typing import Any

__all__ = [
    "SHAPE_CALL",
    "SHAPE_CONSTANT",
    "SHAPE_POSITIONAL",
    "SHAPE_TEMPLATE",
    "ByIdentity",
    "Ref",
    "call_task",
    "capturer",
    "function_kind",
    "hashable",
    "user_callable",
]


class ByIdentity:
    """A node's callable that cannot be hashed (an instance of a ``@dataclass``, whose
    ``eq=True`` takes its hash away), held so that it can be: the scheduler keeps what it
    learns of each function in tables keyed by it. Hashed and compared by identity; its
    calls, attributes, ``repr`` and pickle are the callable's."""

    __slots__ = ("func",)

    def __init__(self, func: Callable[..., Any]) -> None:
        self.func = func

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.func(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        if name == "func":  # not set yet (never, outside __init__)
            raise AttributeError(name)
        return getattr(self.func, name)

    def __repr__(self) -> str:
        return repr(self.func)

    def __reduce__(self) -> tuple[Any, ...]:
        return (ByIdentity, (self.func,))


def hashable(func: Callable[..., Any]) -> Callable[..., Any]:
    """``func``, or for one that cannot be hashed, a :class:`ByIdentity` holding it: one
    whose class takes its hash away, or whose own ``__hash__`` raises."""
    kind = type(func)
    if kind is FunctionType or kind is BuiltinFunctionType:
        return func  # (the usual case, once per node made: no hash to try)
    if kind.__hash__ is None:
        return ByIdentity(func)
    try:
        hash(func)
    except Exception:
        return ByIdentity(func)
    return func


def user_callable(func: Callable[..., Any]) -> Callable[..., Any]:
    """The callable the user gave, ``func`` unless :func:`hashable` wrapped it."""
    return func.func if type(func) is ByIdentity else func


def function_kind(func: Callable[..., Any]) -> Any:
    """What to learn a node's function's durations (or sizes) by, shared by the callables
    a graph makes afresh for each node: a function's code (closures), the code of the
    function a ``functools.partial`` calls, the ``__call__`` of a user's callable class (its
    instances); otherwise the callable itself (its type, if it cannot be hashed)."""
    code = getattr(func, "__code__", None)  # (twice per task: a function's answer comes first)
    if code is not None:
        return code
    func = user_callable(func)
    while isinstance(func, functools.partial):
        func = func.func
    code = getattr(func, "__code__", None)
    if code is None:
        code = getattr(type(func).__call__, "__code__", None)  # every callable has one
    if code is not None:
        return code
    try:
        hash(func)
    except TypeError:
        return type(func)
    return func


class Ref:
    """Placeholder in an argument template for the value of the ``index``-th dependency."""

    __slots__ = ("index",)

    def __init__(self, index: int) -> None:
        self.index = index

    def __reduce__(self) -> tuple[Any, ...]:
        return (_ref, (self.index,))

    def __repr__(self) -> str:
        return f"Ref({self.index})"


_REFS = [Ref(i) for i in range(256)]


def _ref(index: int) -> Ref:
    # Shared instances keep a million-node graph small; identity is never relied on.
    return _REFS[index] if index < 256 else Ref(index)


# How ``args``/``kwargs`` of a task combine with its input values (see call_task).
SHAPE_CALL = 0
"""No inputs: ``func(*args, **kwargs)``."""
SHAPE_POSITIONAL = 1
"""Inputs are the positional arguments, in order, and nothing else: ``func(*values)``."""
SHAPE_TEMPLATE = 2
"""``args``/``kwargs`` hold :class:`Ref` placeholders, possibly nested in containers."""
SHAPE_CONSTANT = -1
"""A data node: the value is held by the caller, nothing is called."""


def _fill(obj: Any, values: Sequence[Any]) -> Any:
    cls = type(obj)
    if cls is Ref:
        return values[obj.index]
    if cls is list:
        return [_fill(x, values) for x in obj]
    if cls is tuple:
        return tuple([_fill(x, values) for x in obj])
    if cls is dict:
        return {k: _fill(v, values) for k, v in obj.items()}
    if cls is set or cls is frozenset:
        return cls(_fill(x, values) for x in obj)
    if isinstance(obj, tuple) and hasattr(cls, "_fields"):
        return cls._make(_fill(x, values) for x in obj)
    return obj


def call_task(
    func: Callable[..., Any],
    args: tuple[Any, ...],
    kwargs: Mapping[str, Any] | None,
    shape: int,
    values: Sequence[Any],
) -> Any:
    """Call ``func`` with its argument template filled from ``values`` (one per dependency)."""
    if shape == SHAPE_POSITIONAL:
        return func(*values)
    if shape == SHAPE_CALL:
        return func(*args, **kwargs) if kwargs else func(*args)
    filled = [_fill(a, values) for a in args]
    if kwargs:
        return func(*filled, **{k: _fill(v, values) for k, v in kwargs.items()})
    return func(*filled)


def capturer(node_type: type) -> Callable[[Any, dict[Any, int]], Any]:
    """The inverse of :func:`call_task`'s filling, for nodes of ``node_type``: a function
    ``capture(obj, found)`` returning a copy of ``obj`` with every node in it replaced by a
    :class:`Ref` to its index in ``found`` (the dependencies met so far, added to in
    order). Made once per node type, so the recursion pays no extra argument."""

    def capture(obj: Any, found: dict[Any, int]) -> Any:
        if isinstance(obj, node_type):
            index = found.get(obj)
            if index is None:
                index = found[obj] = len(found)
            return _ref(index)
        cls = type(obj)
        if cls is list:
            return [capture(x, found) for x in obj]
        if cls is tuple:
            return tuple([capture(x, found) for x in obj])
        if cls is dict:
            return {k: capture(v, found) for k, v in obj.items()}
        if cls is set or cls is frozenset:
            return cls(capture(x, found) for x in obj)
        if isinstance(obj, tuple) and hasattr(cls, "_fields"):
            return cls._make(capture(x, found) for x in obj)
        return obj

    return capture
