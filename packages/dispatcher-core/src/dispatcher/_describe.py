"""How users recognise a node: its label with its arguments, short (``str(node)``).

Every message, log line and picture names nodes this way, so it never raises and never
grows past a bound, whatever the arguments' ``repr`` does. It reads what nodes keep
(label, arguments, dependencies) and how each class of node reads (``_reads_as``), and
imports no node class.
"""

from __future__ import annotations

import reprlib
from typing import TYPE_CHECKING, Any

from ._template import SHAPE_POSITIONAL, Ref

if TYPE_CHECKING:
    from ._nodes import DispatchNode

__all__ = ["DESCRIPTION_LIMIT", "describe", "short_repr"]


_REPR = reprlib.Repr()
_REPR.maxlevel = 3
_REPR.maxstring = _REPR.maxother = 40


def short_repr(value: Any) -> str:
    """At most about 40 characters of ``repr(value)``, for a label: cheap for a huge
    value, safe for one nested thousands deep or whose ``__repr__`` raises."""
    try:
        text = _REPR.repr(value)
    except Exception:  # RecursionError included: a label must never fail
        return f"<{type(value).__name__}>"
    return text if len(text) <= 40 else text[:37] + "..."


DESCRIPTION_LIMIT = 80
"""The longest :func:`describe` makes a description, in characters."""


class _ArgumentRepr(reprlib.Repr):
    """reprlib's bounded repr, naming a dependency (a :class:`Ref`) by its description."""

    def __init__(self, deps: tuple[DispatchNode, ...] = (), depth: int = 0) -> None:
        super().__init__()
        self.maxlevel = 2
        self.maxstring = self.maxother = 40
        self.maxlist = self.maxtuple = self.maxset = self.maxfrozenset = self.maxdict = 4
        self.deps = deps
        self.depth = depth

    def repr_Ref(self, ref: Ref, level: int) -> str:
        return _describe(self.deps[ref.index], self.depth)

    def repr_bytes(self, value: bytes, level: int) -> str:
        # reprlib would repr all of it before cutting it short.
        text = repr(value[: self.maxstring])
        return text if len(value) <= self.maxstring else text + "..."

    repr_bytearray = repr_bytes

    def repr_instance(self, value: Any, level: int) -> str:
        try:
            text = repr(value)
        except Exception:
            return f"<{type(value).__name__}>"  # not reprlib's "instance at 0x...": noise
        if text.startswith("<") and " at 0x" in text:
            # object's own repr: its address tells a reader nothing, its type does.
            cls = type(value)
            module = "" if cls.__module__ in ("builtins", "__main__") else cls.__module__ + "."
            return f"<{module}{cls.__qualname__}>"
        if len(text) > self.maxother:
            half = max(0, (self.maxother - 3) // 2)
            text = text[:half] + "..." + text[len(text) - half :]
        return text


_CONSTANTS = _ArgumentRepr()  # holds no state of a call: shared by every thread


def describe(node: DispatchNode, limit: int = DESCRIPTION_LIMIT) -> str:
    """How a user recognises ``node``, for messages, logs and pictures.

    A call reads as its label with its arguments: constants as a short ``repr``,
    dependencies described the same way, two levels deep (``count(load('b.txt'))``,
    ``total([count(load(...)), ...])``). Other nodes read as their label. Never longer than
    ``limit`` characters, and never raises: a ``repr`` that fails, or is huge, or a value
    nested thousands deep, is cut short.
    """
    try:
        text = _describe(node, 2)
    except Exception:  # a description must never be the error
        text = node.label
    return text if len(text) <= limit else text[: max(limit - 3, 0)] + "..."


_PLAIN = frozenset({int, float, bool, type(None)})


def _argument(value: Any, shown: _ArgumentRepr) -> str:
    kind = type(value)
    # The common arguments, without reprlib's dispatch: a report describes every node.
    if kind is str and len(value) <= 38:
        return repr(value)
    if kind in _PLAIN and (kind is not int or -(10**30) < value < 10**30):
        return repr(value)
    return shown.repr(value)


def _describe(node: DispatchNode, depth: int) -> str:
    label = node.label
    reads_as = node._reads_as
    if reads_as != "call":
        if reads_as == "index" and getattr(node, "_label", None) is None:
            return f"{_describe(node._deps[0], depth)}[{short_repr(node._args[1])}]"
        return label
    if depth <= 0:
        return f"{label}(...)" if node._args or node._kwargs or node._deps else f"{label}()"
    deps = node._deps
    if node._shape == SHAPE_POSITIONAL:
        parts = [_describe(dep, depth - 1) for dep in deps]
    else:
        shown = _ArgumentRepr(deps, depth - 1) if deps else _CONSTANTS
        parts = [_argument(arg, shown) for arg in node._args]
        if node._kwargs:
            parts += [f"{key}={_argument(value, shown)}" for key, value in node._kwargs.items()]
    text = label + "("
    for i, part in enumerate(parts):
        text += part if i == 0 else ", " + part
        if len(text) > DESCRIPTION_LIMIT:  # no need to make more than can be shown
            return text
    return text + ")"
