"""The cache's part of one run: every node's key, the hits, and the calls that store.

Planned in the caller, before the run starts: the keys of every node (in topological
order, each from its inputs' keys), then, from the targets down, which nodes are stored
already. A hit is planned like a node given through ``inputs=``: its ancestors that only
it needed drop out of the graph. Unlike an input, its value is not in the caller: the hit
becomes a task (:func:`~dispatcher._cache.load_entry`) that reads the entry where it
runs, and every other cacheable node's function is wrapped (:class:`StoreResult`) so
that it stores its result where it runs, before the node is reported finished. Workers
thus read and write the store themselves, on every executor, and a run that fails leaves
everything that finished stored: running it again resumes.
"""

from __future__ import annotations

import inspect
import logging
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from contextvars import ContextVar
from time import perf_counter
from typing import Any

from ._cache import Cache, load_entry
from ._cache_key import Memo, Uncacheable, node_key, value_digest
from ._graph import DispatchGraph
from ._nodes import DispatchNode, Op
from ._template import (
    SHAPE_CALL,
    SHAPE_CONSTANT,
    SHAPE_POSITIONAL,
    SHAPE_TEMPLATE,
    Ref,
    call_task,
)

__all__ = [
    "STORE_RATE",
    "STORE_SECONDS",
    "CachePlan",
    "FunctionClock",
    "ReturnHook",
    "StoreResult",
    "as_cache",
    "function_returned",
    "store_seconds",
    "stores_result",
    "timed_call",
]

log = logging.getLogger("dispatcher.cache")

Call = tuple[Any, tuple[Any, ...], Mapping[str, Any] | None, int]
"""What a task calls instead of its node's own call: function, args, kwargs, shape."""


def as_cache(cache: Any) -> Cache | None:
    """``run``'s ``cache=`` argument as a :class:`Cache` (``None``: no cache)."""
    if cache is None or isinstance(cache, Cache):
        return cache
    if isinstance(cache, (str, os.PathLike)):
        return Cache(cache)
    raise TypeError(
        f"cache takes a directory path or a dispatcher.Cache, got {type(cache).__name__}: {cache!r}"
    )


function_returned: ContextVar[Callable[[Any], bool] | None] = ContextVar(
    "dispatcher_function_returned", default=None
)
"""Set by an executor around the call of a cache wrapper (:func:`stores_result`) with a
timeout: called with the value when the node's own function returns, before the value is
stored, so that the node's clock stops there (its timeout bounds the user's function, not
the store). It returns whether to store the value: False when the function ran past its
timeout (the node fails: a result it never reported is not stored)."""

STORE_SECONDS = 60.0
"""Seconds the store of a node with a timeout may take whatever its size, before the
bytes its result's buffers add (:data:`STORE_RATE`, :func:`store_seconds`)."""
STORE_RATE = 10e6
"""Bytes a second: a store of a node with a timeout may take :data:`STORE_SECONDS`, plus a
second per this many bytes of its result's buffers (:func:`store_seconds`), before the node
fails as timed out (a store that hangs, on a frozen network file system say, must not hang
the run). Generous: a disk writes 100 to 1000 times as fast."""


def store_seconds(value: Any) -> float:
    """How long storing ``value`` may take, once its function returned in time."""
    nbytes = getattr(value, "nbytes", None)
    if type(nbytes) is not int:
        if isinstance(value, (bytes, bytearray, memoryview)):
            nbytes = len(value)
        else:
            try:
                nbytes = sys.getsizeof(value)
            except Exception:  # a __sizeof__ that fails: the base bound
                nbytes = 0
    return STORE_SECONDS + nbytes / STORE_RATE


def stores_result(func: Any) -> bool:
    """Is ``func`` a cache wrapper that tells :data:`function_returned`? (Asked only of
    tasks with a timeout: the rest pay nothing.)"""
    return getattr(func, "_dispatcher_stores_result", False) is True


class ReturnHook:
    """A :data:`function_returned` that an executor sets around one task's call."""

    __slots__ = ()

    def __call__(self, value: Any) -> bool:
        raise NotImplementedError

    def call(
        self, func: Any, args: Any, kwargs: Mapping[str, Any] | None, shape: int, values: Any
    ) -> Any:
        """``call_task(func, args, kwargs, shape, values)`` with this hook set."""
        token = function_returned.set(self)
        try:
            return call_task(func, args, kwargs, shape, values)
        finally:
            function_returned.reset(token)


class FunctionClock(ReturnHook):
    """A :data:`function_returned` for an executor that times a call where it runs (in
    its own thread or task): when the function returned, and whether that was within
    its ``timeout`` from ``start``. Set around a call (:meth:`call`), or for the rest of
    an awaiting task (:meth:`set`)."""

    __slots__ = ("limit", "returned", "start")

    def __init__(self, start: float, timeout: float) -> None:
        self.start = start
        self.limit = start + timeout
        self.returned: float | None = None

    def __call__(self, value: Any) -> bool:
        self.returned = now = perf_counter()
        return now <= self.limit

    def ran(self, duration: float) -> float:
        """Seconds the function ran, of a task that took ``duration`` (the store after
        it not counted)."""
        return duration if self.returned is None else self.returned - self.start

    def set(self) -> Any:
        """Set it (in the current context): the token that resets it."""
        return function_returned.set(self)


def timed_call(spec: Any, start: float, in_task: bool = False) -> FunctionClock | None:
    """For a task with a timeout (``spec``, a :class:`~dispatcher.transport.TaskSpec`)
    starting at ``start``: a :class:`FunctionClock` if it is a cache's call, else
    ``None``. ``in_task``: set it for the rest of the current task of a loop (which
    awaits the call; its store then blocks the loop, so no deadline can stop it)."""
    if not stores_result(spec.func):
        return None
    clock = FunctionClock(start, spec.timeout)
    if in_task:
        clock.set()
    return clock


def _worth_storing(cache: Cache, start: float, value: Any) -> bool:
    """The function called at ``start`` returned ``value``: store it? Not if it ran for
    less than the cache's ``min_seconds``; else as the executor timing it says, if one
    does (told only then: it stops the node's clock)."""
    if cache.min_seconds and perf_counter() - start < cache.min_seconds:
        return False
    returned = function_returned.get()
    return returned is None or returned(value)


class StoreResult:
    """A node's function, called as ``wrapper(key, *args, **kwargs)``: calls it and
    stores what it returns under ``key`` before returning it (after awaiting it, for a
    coroutine). A store that fails is a warning, never the task's failure."""

    __slots__ = ("cache", "func")
    _dispatcher_stores_result = True

    def __init__(self, func: Any, cache: Cache) -> None:
        self.func = func
        self.cache = cache

    def __call__(self, key: str, /, *args: Any, **kwargs: Any) -> Any:
        cache = self.cache
        start = perf_counter()
        value = self.func(*args, **kwargs)
        if inspect.isawaitable(value):
            return _store_when_done(cache, key, value, start)
        if _worth_storing(cache, start, value):
            cache.save(key, value)
        return value

    def __reduce__(self) -> tuple[Any, ...]:
        return (StoreResult, (self.func, self.cache))

    def __repr__(self) -> str:
        return f"<cached {getattr(self.func, '__qualname__', self.func)!r}>"


def _store_coroutine(func: Any, cache: Cache) -> Any:
    """:class:`StoreResult` for a coroutine function, itself a coroutine function (so an
    executor awaits it on its loop like the function it wraps)."""

    async def cached(key: str, /, *args: Any, **kwargs: Any) -> Any:
        start = perf_counter()
        value = await func(*args, **kwargs)
        if _worth_storing(cache, start, value):
            cache.save(key, value)
        return value

    cached.__qualname__ = f"cached {getattr(func, '__qualname__', func)!r}"
    cached._dispatcher_stores_result = True  # type: ignore[attr-defined]
    return cached


async def _store_when_done(cache: Cache, key: str, awaitable: Any, start: float) -> Any:
    value = await awaitable
    if _worth_storing(cache, start, value):
        cache.save(key, value)
    return value


def _cacheable(node: DispatchNode) -> bool:
    """Worth storing: a call of the user's (data, index and collect nodes are cheap)."""
    return isinstance(node, Op) and getattr(node, "_cache", True)


class CachePlan:
    """Keys, hits and the wrapped calls of one run over ``graph``."""

    def __init__(
        self,
        cache: Cache,
        graph: DispatchGraph,
        targets: Sequence[DispatchNode],
        inputs: Mapping[DispatchNode, Any],
        exclude: frozenset[str] = frozenset(),
    ) -> None:
        self.cache = cache
        self.exclude = exclude
        """Keys never to be served from the cache in this run."""
        self.stale: frozenset[str] = frozenset()
        """Keys found unusable in an earlier attempt of this run."""
        keys = _keys(graph, inputs)
        nodes, deps, index = graph._nodes, graph._deps, graph._index
        # From the targets down: a stored node is a hit, and what only it needed is not
        # visited (nor asked about).
        hits: list[DispatchNode] = []
        seen: set[int] = set()
        stack = [index[t] for t in targets]
        while stack:
            p = stack.pop()
            if p in seen:
                continue
            seen.add(p)
            node = nodes[p]
            key = keys[p]
            if (
                key is not None
                and node not in inputs
                and _cacheable(node)
                and key not in exclude
                and cache.contains(key)
            ):
                hits.append(node)
                continue
            stack.extend(deps[p])
        if hits:
            graph = graph.subgraph(targets, [*inputs, *hits])
        self.graph = graph
        hit_set = set(hits)
        old_index = index
        wrappers: dict[int, Any] = {}
        self.calls: dict[int, Call] = {}
        """Per position in :attr:`graph`, what its task calls instead of the node."""
        self.hits: set[int] = set()
        """Positions (in :attr:`graph`) served from the cache."""
        self.keys: dict[int, str] = {}
        uncacheable = 0
        for p, node in enumerate(graph._nodes):
            key = keys[old_index[node]]
            if node in inputs or not _cacheable(node):
                continue
            if key is None:
                uncacheable += 1
                continue
            self.keys[p] = key
            if node in hit_set:
                self.hits.add(p)
                self.calls[p] = (load_entry, (cache, key), None, SHAPE_CALL)
                continue
            func = node._func
            wrapper = wrappers.get(id(func))
            if wrapper is None:
                if inspect.iscoroutinefunction(func):
                    wrapper = _store_coroutine(func, cache)
                else:
                    wrapper = StoreResult(func, cache)
                wrappers[id(func)] = wrapper
            self.calls[p] = _store_call(wrapper, key, node)
        self.misses = len(self.calls) - len(self.hits)
        self.uncacheable = uncacheable

    def finish(self) -> None:
        """After the run: keep its numbers, and evict past ``max_bytes``."""
        cache = self.cache
        cache._record_run(len(self.hits), self.misses, self.uncacheable)
        try:
            cache.evict()
        except OSError as exc:  # another run evicting at once, a read-only store...
            log.warning("dispatcher cache: eviction in %s failed: %s", cache.path, exc)


def _store_call(wrapper: Any, key: str, node: DispatchNode) -> Call:
    """The node's call with ``wrapper`` for its function and its key as first argument."""
    shape = node._shape
    if shape == SHAPE_POSITIONAL:
        refs = tuple(Ref(i) for i in range(len(node._deps)))
        return (wrapper, (key, *refs), None, SHAPE_TEMPLATE)
    return (wrapper, (key, *node._args), node._kwargs, shape)


def _keys(graph: DispatchGraph, inputs: Mapping[DispatchNode, Any]) -> list[str | None]:
    """Every node's key, in graph order; ``None`` where it cannot be hashed (logged)."""
    nodes, deps = graph._nodes, graph._deps
    keys: list[str | None] = [None] * len(nodes)
    memo: Memo = {}
    debug = log.isEnabledFor(logging.DEBUG)
    for p, node in enumerate(nodes):
        try:
            if node in inputs:
                keys[p] = value_digest(inputs[node])
                continue
            if node._shape == SHAPE_CONSTANT:
                keys[p] = value_digest(node._args[0])
                continue
            if isinstance(node, Op) and not getattr(node, "_cache", True):
                if debug:
                    log.debug("node %r is not cached: op(..., cache=False)", node.label)
                continue
            input_keys = [keys[d] for d in deps[p]]
            if None in input_keys:
                if debug:
                    missing = nodes[deps[p][input_keys.index(None)]]
                    log.debug(
                        "node %r is not cached: its input %r is not", node.label, missing.label
                    )
                continue
            keys[p] = node_key(
                node.kind,
                node._func,
                node._shape,
                node._args,
                node._kwargs,
                input_keys,  # type: ignore[arg-type]
                memo,
            )
        except Uncacheable as exc:
            log.debug("node %r is not cached: %s", node.label, exc)
    return keys
