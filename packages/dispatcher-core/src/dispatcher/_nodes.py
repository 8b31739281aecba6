"""Nodes: deferred calls whose arguments may be other nodes.

A node's dependencies are found when it is built, in its arguments and inside the plain
containers among them, at any depth. Each dependency is replaced by a :class:`Ref`
placeholder in a private copy of the arguments, so running a node is one
:func:`~dispatcher.transport.call_task` and building one costs a few hundred nanoseconds:
a million-node graph is built in seconds.
"""

from __future__ import annotations

import functools
import itertools
import operator
from collections.abc import Callable, Iterable, Iterator
from types import FunctionType
from typing import Any, ClassVar, Generic, ParamSpec, TypeVar, overload

from ._describe import DESCRIPTION_LIMIT, describe, short_repr
from ._options import check_timeout
from ._template import (
    SHAPE_CALL,
    SHAPE_CONSTANT,
    SHAPE_POSITIONAL,
    SHAPE_TEMPLATE,
    Ref,
    capturer,
    hashable,
    user_callable,
)

__all__ = [
    "DESCRIPTION_LIMIT",
    "CollectNode",
    "DataNode",
    "DispatchNode",
    "IndexNode",
    "Op",
    "OpFunction",
    "describe",
    "op",
]

P = ParamSpec("P")
R = TypeVar("R")

# Nodes are numbered as they are made. A node's dependencies exist before it does, so this
# order is already topological; DispatchGraph sorts by it instead of searching.
_sequence = itertools.count()

# Immutable types that can hold no node: arguments of these need no scan and no copy.
_SCALARS = frozenset({int, float, complex, str, bytes, bool, type(None), range, slice})


def _refuse_timeout(node: DispatchNode, value: object) -> None:
    raise AttributeError(
        "a node's timeout is fixed when the node is made, like its function and arguments: "
        "give it with op(func, timeout=...); only a node's label can be reassigned"
    )


class DispatchNode:
    """The common base class of every node.

    A node is a deferred call: ``func(*args, **kwargs)`` with dependency results in place of
    the nodes found in the arguments. Nodes are hashable by identity and immutable but for
    ``label``. ``timeout`` is the node's own limit in seconds (``math.inf``: none, whatever
    the executor's), or ``None`` for the executor's; it is checked where it is given.
    ``str(node)`` reads as the call, label and arguments (``load('b.txt')``, see
    :func:`describe`): how messages, logs and pictures name it.

    A node class of one's own subclasses it and says what its nodes compute, with
    ``super().__init__(func, *args, **kwargs)``.
    """

    __slots__ = ("_args", "_deps", "_func", "_kwargs", "_label", "_seq", "_shape", "_timeout")

    _reads_as: ClassVar[str] = "label"
    """How :func:`describe` reads nodes of this class: by their label; ``"call"``, label
    and arguments; ``"index"``, the node indexed and the index (unless labelled)."""

    _func: Callable[..., Any]
    _args: tuple[Any, ...]
    _kwargs: dict[str, Any] | None
    _deps: tuple[DispatchNode, ...]
    _shape: int
    _label: str | None
    _timeout: float | None

    def __init__(self, func: Callable[..., Any], /, *args: Any, **kwargs: Any) -> None:
        """A node that computes ``func(*args, **kwargs)``: what a node class of one's own
        calls from its constructor (``super().__init__(func, *args, **kwargs)``) to say
        what its nodes compute. Its label is the class's name."""
        if not callable(func):
            raise TypeError(f"a node needs a callable to compute with, got {func!r}")
        self._init_call(func, args, kwargs or None, None)

    def _init_call(
        self,
        func: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any] | None,
        label: str | None,
        timeout: float | None = None,
    ) -> None:
        """Make this node the call ``func(*args, **kwargs)``: what a node class calls from
        its constructor (``Op`` takes its commonest shapes itself, without this call)."""
        self._seq = next(_sequence)
        self._func = hashable(func)
        self._label = label
        self._timeout = timeout
        self._capture_call(func, args, kwargs)

    def _capture_call(
        self, func: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any] | None
    ) -> None:
        """Set the call's arguments: as they are when no node can be among them; the
        nodes themselves when every argument is a distinct node; otherwise copied with a
        :class:`Ref` in place of each node found, at any depth."""
        if not kwargs and args:
            count = len(args)
            if count == 1:
                positional = isinstance(args[0], DispatchNode)
                if not positional and type(args[0]) in _SCALARS:
                    self._deps = ()
                    self._args = args
                    self._kwargs = None
                    self._shape = SHAPE_CALL
                    return
            elif count == 2:
                first, second = args
                positional = (
                    isinstance(first, DispatchNode)
                    and isinstance(second, DispatchNode)
                    and first is not second
                )
            else:
                positional = all(isinstance(a, DispatchNode) for a in args) and len(
                    set(args)
                ) == len(args)
            if positional:
                self._deps = args
                self._args = ()
                self._kwargs = None
                self._shape = SHAPE_POSITIONAL
                return
        if all(type(a) in _SCALARS for a in args) and (
            not kwargs or all(type(v) in _SCALARS for v in kwargs.values())
        ):
            self._deps = ()
            self._args = args
            self._kwargs = kwargs or None
            self._shape = SHAPE_CALL
            return
        found: dict[DispatchNode, int] = {}
        try:
            new_args = tuple([_capture(a, found) for a in args])
            new_kwargs = {k: _capture(v, found) for k, v in kwargs.items()} if kwargs else None
        except RecursionError:
            raise _too_deep(func) from None
        self._args = new_args
        self._kwargs = new_kwargs
        self._deps = tuple(found)
        self._shape = SHAPE_TEMPLATE if found else SHAPE_CALL

    # Read-only, like everything but the label (the scheduler reads ``_timeout`` itself,
    # on its hot path).
    timeout = property(
        operator.attrgetter("_timeout"),
        _refuse_timeout,
        doc="""The node's own limit in seconds (``math.inf``: none), or ``None`` for the
        executor's. Fixed when the node is made, as its function and arguments are.""",
    )

    @property
    def label(self) -> str:
        """A name for messages and pictures; need not be unique."""
        label = getattr(self, "_label", None)  # (an Op leaves it unset unless given)
        return label if label is not None else self._default_label()

    @label.setter
    def label(self, value: str) -> None:
        if not isinstance(value, str):
            raise TypeError(f"a label is a str, not {type(value).__name__}")
        self._label = value

    def _default_label(self) -> str:
        return type(self).__name__

    @property
    def kind(self) -> str:
        """The node's class name: ``Op``, ``DataNode``, ``IndexNode``, ``CollectNode``..."""
        return type(self).__name__

    def dependencies(self) -> tuple[DispatchNode, ...]:
        """The direct dependencies, in first-seen order, without duplicates."""
        return self._deps

    def __getitem__(self, index: Any) -> IndexNode:
        return IndexNode(self, index)

    def __iter__(self) -> Iterator[IndexNode]:
        raise TypeError(
            f"{self!r} is a single node and cannot be unpacked or iterated; "
            f"index it (node[0]) or build it with op(func, nout=N) to unpack N values"
        )

    def __bool__(self) -> bool:
        return True

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.label}>"

    def __str__(self) -> str:
        """The node as a user recognises it: label and arguments, short (:func:`describe`)."""
        return describe(self)


def _too_deep(func: Callable[..., Any]) -> ValueError:
    name = getattr(func, "__qualname__", None) or repr(func)
    return ValueError(
        f"the arguments of {name} are nested too deeply (lists, tuples, dicts or sets "
        f"inside each other, close to the interpreter's recursion limit), or one contains "
        f"itself, so they cannot be searched for nodes; pass such a value as "
        f"DataNode(value), whose value is used as it is and not searched, or build it "
        f"inside a task"
    )


_capture = capturer(DispatchNode)


class Op(DispatchNode):
    """A deferred call ``func(*args, **kwargs)``; nodes among the arguments are dependencies.

    Arguments are searched for nodes recursively; a value nested so deeply (hundreds of
    containers) that the search would exceed the interpreter's recursion limit is a
    ``ValueError`` naming the function: pass it as a :class:`DataNode`, which is not
    searched. ``Op(op(f, ...), x)`` is the same as ``op(f, ...)(x)``.
    """

    # ``_cache`` is set only by ``op(..., cache=False)``, ``_nout`` and ``_label`` only
    # when given: left unset (read with a default), they cost a node no store (and the
    # slots fit the object's allocation size class).
    __slots__ = ("_cache", "_nout")
    _reads_as = "call"

    _nout: int | None
    _cache: bool

    def __init__(self, func: Callable[..., Any], /, *args: Any, **kwargs: Any) -> None:
        self._seq = next(_sequence)
        if type(func) is OpFunction:
            # Op(op(f, ...), x) is op(f, ...)(x): calling the wrapper at run time would
            # return a node instead of a value.
            if func._op_label is not None:
                self._label = func._op_label
            self._timeout = func._op_timeout
            if func._op_nout is not None:
                self._nout = func._op_nout
            if not func._op_cache:
                self._cache = False
            func = func._op_call
        elif callable(func):
            # _label and _nout stay unset (read with a default): two stores less.
            self._timeout = None
            if type(func) is not FunctionType:  # (a plain function hashes; others may not)
                func = hashable(func)
        else:
            raise TypeError(f"Op needs a callable as its first argument, got {func!r}")
        self._func = func
        # The commonest shapes of a large graph, f(node), f(scalar) and f(node, other),
        # taken here as _capture_call would: a call less is a fifth of the cost of Op(...).
        if not kwargs:
            count = len(args)
            if count == 1:
                first = args[0]
                if isinstance(first, DispatchNode):
                    self._deps = args
                    self._args = ()
                    self._kwargs = None
                    self._shape = SHAPE_POSITIONAL
                    return
                if type(first) in _SCALARS:
                    self._deps = ()
                    self._args = args
                    self._kwargs = None
                    self._shape = SHAPE_CALL
                    return
            elif count == 2:
                first, second = args
                if (
                    isinstance(first, DispatchNode)
                    and isinstance(second, DispatchNode)
                    and first is not second
                ):
                    self._deps = args
                    self._args = ()
                    self._kwargs = None
                    self._shape = SHAPE_POSITIONAL
                    return
        self._capture_call(func, args, kwargs)

    @property
    def func(self) -> Callable[..., Any]:
        """The function this node calls."""
        return user_callable(self._func)

    @property
    def cache(self) -> bool:
        """False when the node is never served from or stored in a run's cache."""
        return getattr(self, "_cache", True)

    def _default_label(self) -> str:
        func = self._func
        return getattr(func, "__qualname__", None) or getattr(func, "__name__", None) or repr(func)

    def __iter__(self) -> Iterator[IndexNode]:
        nout = getattr(self, "_nout", None)
        if nout is None:
            return super().__iter__()
        return iter([IndexNode(self, i) for i in range(nout)])


class DataNode(DispatchNode):
    """A constant: its value is used as it is."""

    __slots__ = ()

    def __init__(self, value: Any) -> None:
        self._seq = next(_sequence)
        self._func = _identity
        self._args = (value,)
        self._kwargs = None
        self._deps = ()
        self._shape = SHAPE_CONSTANT
        self._label = None
        self._timeout = None

    @property
    def value(self) -> Any:
        """The constant."""
        return self._args[0]

    def _default_label(self) -> str:
        return f"DataNode({short_repr(self._args[0])})"


class IndexNode(DispatchNode):
    """``result(node)[index]``; also spelled ``node[index]``. The index is a constant."""

    __slots__ = ()
    _reads_as = "index"

    def __init__(self, node: DispatchNode, index: Any) -> None:
        if not isinstance(node, DispatchNode):
            raise TypeError(f"IndexNode needs a node to index, got {node!r}")
        self._seq = next(_sequence)
        self._func = operator.getitem
        self._args = (Ref(0), index)  # the index stays a constant, nodes in it included
        self._kwargs = None
        self._deps = (node,)
        self._shape = SHAPE_TEMPLATE
        self._label = None
        self._timeout = None

    @property
    def node(self) -> DispatchNode:
        """The node whose result is indexed."""
        return self._deps[0]

    @property
    def index(self) -> Any:
        """The index (a constant)."""
        return self._args[1]

    def _default_label(self) -> str:
        return f"{self._deps[0].label}[{short_repr(self._args[1])}]"


class CollectNode(DispatchNode):
    """``[result(n) for n in nodes]``; every item must be a node."""

    __slots__ = ()

    def __init__(self, nodes: Iterable[DispatchNode]) -> None:
        if isinstance(nodes, DispatchNode) or not isinstance(nodes, Iterable):
            raise TypeError(
                f"CollectNode needs an iterable of nodes, got {type(nodes).__name__}: {nodes!r}"
            )
        items = list(nodes)
        for position, item in enumerate(items):
            if not isinstance(item, DispatchNode):
                raise TypeError(
                    f"CollectNode needs nodes only; item {position} is "
                    f"{type(item).__name__}: {item!r} (wrap constants in DataNode)"
                )
        self._init_call(_identity, (items,), None, None)

    def _default_label(self) -> str:
        return f"CollectNode({len(self._deps)})"


def _identity(value: Any) -> Any:
    return value


class OpFunction(Generic[P, R]):
    """A function whose calls build :class:`Op` nodes instead of running (see :func:`op`).

    Its options (``func``, ``label``, ``timeout``, ``nout``, ``cache``) are fixed when it is made:
    attributes of the wrapped function with the same names neither replace them nor
    change what a call builds.
    """

    def __init__(
        self,
        func: Callable[P, R],
        label: str | None,
        timeout: float | None,
        nout: int | None,
        cache: bool = True,
    ) -> None:
        # Name, docstring, ``__wrapped__`` (for inspect.signature) and the function's own
        # attributes; the options below are properties, so none of those can shadow them.
        functools.update_wrapper(self, func)
        self._op_func = func
        self._op_call = hashable(func)  # what its nodes hold
        self._op_label = label
        self._op_timeout = timeout
        self._op_nout = nout
        self._op_cache = cache

    @property
    def func(self) -> Callable[P, R]:
        """The function each node calls."""
        return self._op_func

    @property
    def label(self) -> str | None:
        """The label given to each node, or ``None`` for the function's name."""
        return self._op_label

    @property
    def timeout(self) -> float | None:
        """Each node's timeout in seconds (``math.inf``: none), or ``None`` for the
        executor's."""
        return self._op_timeout

    @property
    def nout(self) -> int | None:
        """How many values each node unpacks into, or ``None``."""
        return self._op_nout

    @property
    def cache(self) -> bool:
        """False when its nodes are never served from or stored in a run's cache."""
        return self._op_cache

    def __call__(self, *args: Any, **kwargs: Any) -> Op:
        node = Op.__new__(Op)
        node._seq = next(_sequence)
        node._func = self._op_call
        if self._op_label is not None:
            node._label = self._op_label
        node._timeout = self._op_timeout
        if self._op_nout is not None:
            node._nout = self._op_nout
        if not self._op_cache:
            node._cache = False
        node._capture_call(self._op_func, args, kwargs)
        return node

    def __repr__(self) -> str:
        return f"<op {getattr(self._op_func, '__qualname__', self._op_func)!r}>"


@overload
def op(
    func: Callable[P, R],
    *,
    label: str | None = None,
    timeout: float | None = None,
    nout: int | None = None,
    cache: bool = True,
) -> OpFunction[P, R]: ...


@overload
def op(
    func: None = None,
    *,
    label: str | None = None,
    timeout: float | None = None,
    nout: int | None = None,
    cache: bool = True,
) -> Callable[[Callable[P, R]], OpFunction[P, R]]: ...


def op(
    func: Callable[..., Any] | None = None,
    *,
    label: str | None = None,
    timeout: float | None = None,
    nout: int | None = None,
    cache: bool = True,
) -> Any:
    """Wrap ``func`` so that calling it builds an :class:`Op` node.

    ``op(f)(1, 2)`` and ``@op def f(...)`` both work, as does ``@op(label=..., timeout=...)``.
    ``timeout`` (seconds; ``math.inf`` for none) replaces the executor's for these nodes;
    ``nout=N`` lets a node unpack into N :class:`IndexNode` (``a, b = f(x)``). Wrapping
    what ``op`` made again wraps the same function: the options given now replace the
    old ones, the others are kept. ``cache=False``: its nodes are never served from or
    stored in a run's cache (see ``run(cache=...)``), nor is anything downstream of them;
    use it for functions with side effects or randomness. Bad options are an error here,
    not when a node runs.
    """
    if not isinstance(cache, bool):
        raise TypeError(f"cache is True or False, not {type(cache).__name__}")
    timeout = check_timeout(timeout)
    if nout is not None and (isinstance(nout, bool) or not isinstance(nout, int) or nout < 0):
        raise ValueError(f"nout must be a non-negative int, got {nout!r}")
    if label is not None and not isinstance(label, str):
        raise TypeError(f"a label is a str, not {type(label).__name__}")

    def wrap(f: Callable[..., Any]) -> OpFunction[Any, Any]:
        if isinstance(f, OpFunction):
            return OpFunction(
                f.func,
                f.label if label is None else label,
                f.timeout if timeout is None else timeout,
                f.nout if nout is None else nout,
                f.cache and cache,
            )
        if not callable(f):
            raise TypeError(f"op needs a callable, got {f!r}")
        return OpFunction(f, label, timeout, nout, cache)

    return wrap if func is None else wrap(func)
