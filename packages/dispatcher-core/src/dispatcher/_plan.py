"""What a call to ``run`` asks for: the graph to run, and the shape of the answer."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Generic, TypeVar

from ._cache_plan import CachePlan, as_cache
from ._errors import node_name
from ._graph import DispatchGraph
from ._nodes import DispatchNode

__all__ = ["Plan", "Result", "needs_more_than"]

T = TypeVar("T")


class Result(Generic[T]):
    """One target's outcome when running with ``throw=False``."""

    __slots__ = ("error", "value")

    def __init__(self, value: T | None, error: BaseException | None) -> None:
        self.value = value
        """The value, or ``None`` when the node failed."""
        self.error = error
        """The exception (a ``DependencyError`` if an ancestor failed), or ``None``."""

    @property
    def ok(self) -> bool:
        """True when the node produced a value."""
        return self.error is None

    def unwrap(self) -> T:
        """The value, or raise the error."""
        if self.error is not None:
            raise self.error
        return self.value  # type: ignore[return-value]

    def __repr__(self) -> str:
        if self.error is None:
            return f"Result(value={self.value!r})"
        return f"Result(error={self.error!r})"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Result):
            return NotImplemented
        return self.value == other.value and self.error is other.error

    __hash__ = None  # type: ignore[assignment]


def needs_more_than(targets: Any, limit: int) -> bool:
    """Do ``targets`` need more than ``limit`` nodes? Looks at no more than that many (and
    says no to what is not targets at all: planning them says what is wrong)."""
    if isinstance(targets, DispatchGraph):
        return len(targets) > limit
    roots: list[DispatchNode] = []
    try:
        _leaves(targets, roots)
    except (TypeError, RecursionError):
        return False
    seen = set(roots)
    stack = list(seen)
    while stack:
        for dep in stack.pop().dependencies():
            if dep not in seen:
                if len(seen) >= limit:
                    return True
                seen.add(dep)
                stack.append(dep)
    return len(seen) > limit


def _leaves(template: Any, found: list[DispatchNode]) -> None:
    """Append every node in ``template`` (lists, tuples, namedtuples and dicts of nodes,
    nested to any depth) to ``found``, in order."""
    if isinstance(template, DispatchNode):
        found.append(template)
    elif isinstance(template, (list, tuple, dict)):
        # Nodes taken here, without a call each: a flat list of thousands of targets is
        # the common case.
        append = found.append
        for item in template.values() if isinstance(template, dict) else template:
            if isinstance(item, DispatchNode):
                append(item)
            else:
                _leaves(item, found)
    else:
        raise TypeError(
            f"run() targets must be nodes; got {type(template).__name__}: {template!r} "
            "(nodes in lists, tuples and dicts, nested as deep as you like)"
        )


def _filled(template: Any, values: dict[DispatchNode, Any]) -> Any:
    """``template`` with each node replaced by its value, containers rebuilt alike."""
    if isinstance(template, DispatchNode):
        return values[template]
    if isinstance(template, dict):
        return {k: _filled(v, values) for k, v in template.items()}
    items = [_filled(item, values) for item in template]
    if type(template) is list:
        return items
    if type(template) is tuple:
        return tuple(items)
    if hasattr(template, "_fields"):
        return type(template)(*items)  # a namedtuple
    try:  # a subclass of list or tuple, made from its items as they are
        return type(template)(items)
    except Exception:  # made otherwise: the values must not be lost for its sake
        return items if isinstance(template, list) else tuple(items)


class Plan:
    """Targets normalised to a node list, inputs checked, and the graph that will run.

    With a ``cache``, nodes whose results are stored are planned like inputs (what only
    they needed does not run), and :attr:`cache` says how each node reads or stores it
    (see :mod:`._cache_plan`).
    """

    __slots__ = ("cache", "graph", "inputs", "shape_kind", "targets", "template", "unpruned")

    def __init__(self, targets: Any, inputs: Mapping[Any, Any] | None, cache: Any = None) -> None:
        self.template = targets
        nodes: list[DispatchNode]
        if isinstance(targets, DispatchNode):
            self.shape_kind = "node"
            nodes = [targets]
        elif isinstance(targets, DispatchGraph):
            self.shape_kind = "graph"
            nodes = targets.sinks()
        elif isinstance(targets, (list, tuple, dict)):
            self.shape_kind = "containers"
            nodes = []
            try:
                _leaves(targets, nodes)
            except RecursionError:
                raise ValueError("run() targets are nested too deeply") from None
        else:
            raise TypeError(
                "run() takes a node, a DispatchGraph, or lists, tuples and dicts of nodes; "
                f"got {type(targets).__name__}: {targets!r}"
            )
        unique = nodes if len(nodes) == 1 else list(dict.fromkeys(nodes))
        self.targets = unique
        graph = targets if isinstance(targets, DispatchGraph) else DispatchGraph._of(tuple(unique))
        if inputs:
            if not isinstance(inputs, Mapping):
                raise TypeError(f"inputs must be a mapping {{node: value}}, got {inputs!r}")
            for key in inputs:
                if not isinstance(key, DispatchNode):
                    raise ValueError(
                        f"inputs names {key!r}, a {type(key).__name__}: inputs are keyed by "
                        "nodes (those whose values are given)"
                    )
                if key not in graph:
                    raise ValueError(
                        f"inputs names {node_name(key)}, which is not among the targets' "
                        "ancestors (nor a target): nothing would use its value"
                    )
            graph = graph.subgraph(unique, inputs)
            self.inputs: Mapping[Any, Any] = {k: v for k, v in inputs.items() if k in graph}
        else:
            self.inputs = {}
        self.graph = graph
        self.unpruned = graph
        store = as_cache(cache)
        self.cache: CachePlan | None = None
        if store is not None:
            self.cache = CachePlan(store, graph, unique, self.inputs)
            self.graph = self.cache.graph

    def replanned(self, stale: list[str]) -> Plan:
        """This plan again, with the cache asked anew after the entries of ``stale``
        could not be read."""
        assert self.cache is not None
        plan = object.__new__(Plan)
        plan.template, plan.shape_kind, plan.targets = self.template, self.shape_kind, self.targets
        plan.inputs, plan.unpruned = self.inputs, self.unpruned
        # The reader deleted each unusable entry, and a run since may have stored it
        # anew: ask again. Only one found unusable twice (it could not be deleted) is
        # never asked for again, so planning again always ends.
        stale_before = self.cache.stale
        exclude = frozenset(key for key in stale if key in stale_before) | self.cache.exclude
        plan.cache = CachePlan(self.cache.cache, self.unpruned, self.targets, self.inputs, exclude)
        plan.cache.stale = stale_before | frozenset(stale)
        plan.graph = plan.cache.graph
        return plan

    def shape(self, values: dict[DispatchNode, Any]) -> Any:
        """The answer, in the shape the targets were given."""
        kind, template = self.shape_kind, self.template
        if kind == "node":
            return values[template]
        if kind == "graph":
            return [values[n] for n in self.targets]
        return _filled(template, values)
