"""DispatchGraph: the nodes needed for some targets, in topological order."""

from __future__ import annotations

import gc
from collections.abc import Callable, Iterable, Iterator, Sequence
from operator import attrgetter, methodcaller
from typing import Any

from ._errors import CycleError
from ._nodes import DispatchNode

__all__ = ["DispatchGraph"]

_by_sequence = attrgetter("_seq")
_captured = attrgetter("_deps")


def _captures(kind: type[DispatchNode]) -> bool:
    """Whether nodes of this class depend on exactly what they captured when made."""
    return kind.dependencies is DispatchNode.dependencies


def _call_deps(node: DispatchNode) -> tuple[DispatchNode, ...]:
    """The dependencies ``node`` captured, or a ``TypeError`` naming its class if it never
    said what it computes (its constructor did not call ``DispatchNode.__init__``)."""
    deps: tuple[DispatchNode, ...] | None = getattr(node, "_deps", None)
    if deps is None or not hasattr(node, "_func"):
        kind = type(node).__name__
        raise TypeError(
            f"a {kind} node has nothing to compute: {kind}.__init__ must say what, "
            f"with super().__init__(func, *args, **kwargs) (nodes among the arguments "
            "are its dependencies), or subclass Op"
        )
    return deps


def _reachable(
    roots: Sequence[DispatchNode],
    dependencies: Callable[[DispatchNode], Iterable[DispatchNode]] | None = None,
) -> set[DispatchNode]:
    """The nodes ``roots`` need, themselves included: through the dependencies each node
    captured when it was made, or through ``dependencies`` when given."""
    seen: set[DispatchNode] = set(roots)
    stack = list(seen)
    pop, push, add = stack.pop, stack.append, seen.add
    if dependencies is None:
        # The attribute read inline: a call per node was a third of the walk.
        while stack:
            for dep in pop()._deps:
                if dep not in seen:
                    add(dep)
                    push(dep)
        return seen
    while stack:
        for dep in dependencies(pop()):
            if dep not in seen:
                add(dep)
                push(dep)
    return seen


class gc_paused:  # lower case, like contextlib.suppress: used as ``with gc_paused():``
    """No cyclic garbage collection inside: for building the large structures of a graph
    or a run, all of which stay alive, so that a collection in the middle would scan
    every node only to free nothing (a third of the set-up time of a 30,000-node tree).
    Only dispatcher's own code runs inside; the collector is restored as it was. A class,
    not a generator: every run enters it twice, and a one-node run is all fixed cost."""

    __slots__ = ("_paused",)

    def __enter__(self) -> None:
        self._paused = gc.isenabled()
        if self._paused:
            gc.disable()

    def __exit__(self, *exc_info: object) -> None:
        if self._paused:
            gc.enable()


class DispatchGraph:
    """Every node needed to compute ``targets`` (a node or an iterable of nodes).

    Iteration is topological (dependencies first) and stable for the same construction.
    Internally each node has a position; ``_deps[i]`` holds the positions of node ``i``'s
    dependencies, which is all the scheduler needs.
    """

    __slots__ = ("_dependents", "_deps", "_index", "_nodes", "_targets")

    _nodes: list[DispatchNode]
    _index: dict[DispatchNode, int]
    _deps: list[tuple[int, ...]]
    _dependents: list[list[int]] | None
    _targets: tuple[DispatchNode, ...]

    def __init__(self, targets: DispatchNode | Iterable[DispatchNode]) -> None:
        roots = _as_node_list(targets)
        self._of_targets(tuple(dict.fromkeys(roots)))

    @classmethod
    def _of(cls, targets: tuple[DispatchNode, ...]) -> DispatchGraph:
        """The graph of ``targets``: nodes already, each once (as a plan has them)."""
        graph = cls.__new__(cls)
        graph._of_targets(targets)
        return graph

    def _of_targets(self, targets: tuple[DispatchNode, ...]) -> None:
        self._targets = targets
        with gc_paused():
            # The dependencies captured at construction are what dependencies() returns,
            # unless a custom node class says otherwise: then walk again, asking each node.
            try:
                seen = _reachable(targets)
            except AttributeError:  # a node without a call: walk again, to name it
                _reachable(targets, _call_deps)
                raise
            captured = all(map(_captures, set(map(type, seen))))
            if not captured:
                seen = _reachable(targets, methodcaller("dependencies"))
            nodes = sorted(seen, key=_by_sequence) if len(seen) > 1 else list(seen)
            self._set_nodes(nodes, captured=captured)

    @classmethod
    def _from_parts(
        cls,
        nodes: list[DispatchNode],
        targets: tuple[DispatchNode, ...],
        cut: set[DispatchNode] | frozenset[DispatchNode] = frozenset(),
    ) -> DispatchGraph:
        graph = cls.__new__(cls)
        graph._targets = targets
        graph._set_nodes(nodes, cut)
        return graph

    def _set_nodes(
        self,
        nodes: list[DispatchNode],
        cut: set[DispatchNode] | frozenset[DispatchNode] = frozenset(),
        captured: bool | None = None,
    ) -> None:
        """Take ``nodes`` (in creation order) as this graph's, cutting the dependencies of
        those in ``cut``; ``captured`` says, when the caller knows already, whether every
        node's class depends on exactly what its nodes captured when made."""
        index = dict(zip(nodes, range(len(nodes))))
        if captured is None:
            captured = all(map(_captures, set(map(type, nodes))))
        if not cut and captured:
            # Every node's dependencies were captured when it was made, from nodes made
            # before it: in creation order they are topological, nothing to check. Both
            # directions of every edge in one pass: no inputs, one and two inputs, the
            # commonest cases, spelled out (a call or a second pass per node was a third
            # of a long chain's or a tree's set-up).
            n = len(nodes)
            deps: list[tuple[int, ...]] = [()] * n
            dependents: list[list[int]] = [[] for _ in range(n)]
            for i, node in enumerate(nodes):
                captured_deps = node._deps
                if captured_deps:
                    if len(captured_deps) == 1:
                        p = index[captured_deps[0]]
                        deps[i] = (p,)
                        dependents[p].append(i)
                    elif len(captured_deps) == 2:
                        p, q = index[captured_deps[0]], index[captured_deps[1]]
                        deps[i] = (p, q)
                        dependents[p].append(i)
                        dependents[q].append(i)
                    else:
                        positions = deps[i] = tuple([index[d] for d in captured_deps])
                        for p in positions:
                            dependents[p].append(i)
            self._nodes = nodes
            self._index = index
            self._deps = deps
            self._dependents = dependents
            return
        lookup = index.__getitem__
        deps = []
        append = deps.append
        for i, node in enumerate(nodes):
            if cut and node in cut:
                append(())
                continue
            positions = tuple(map(lookup, node.dependencies()))
            if positions and max(positions) >= i:
                # Creation order is not topological: a custom node misbehaves.
                return self._set_nodes(_topological(nodes), cut)
            append(positions)
        self._nodes = nodes
        self._index = index
        self._deps = deps
        self._dependents = None

    def _dependent_positions(self) -> list[list[int]]:
        if self._dependents is None:
            dependents: list[list[int]] = [[] for _ in self._nodes]
            for i, positions in enumerate(self._deps):
                for p in positions:
                    dependents[p].append(i)
            self._dependents = dependents
        return self._dependents

    # -- queries -------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self._nodes)

    def __contains__(self, node: object) -> bool:
        return node in self._index

    def __iter__(self) -> Iterator[DispatchNode]:
        return iter(self._nodes)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, DispatchGraph):
            return NotImplemented
        if self._index.keys() != other._index.keys():
            return False
        return all(set(self.dependencies(n)) == set(other.dependencies(n)) for n in self._nodes)

    __hash__ = None  # type: ignore[assignment]

    def _position(self, node: DispatchNode) -> int:
        try:
            return self._index[node]
        except (KeyError, TypeError):
            raise KeyError(f"{node!r} is not in this graph") from None

    def dependencies(self, node: DispatchNode) -> tuple[DispatchNode, ...]:
        """The direct dependencies of ``node`` within this graph."""
        nodes = self._nodes
        return tuple([nodes[p] for p in self._deps[self._position(node)]])

    def dependents(self, node: DispatchNode) -> tuple[DispatchNode, ...]:
        """The nodes of this graph that depend directly on ``node``."""
        nodes = self._nodes
        return tuple([nodes[p] for p in self._dependent_positions()[self._position(node)]])

    def sources(self) -> list[DispatchNode]:
        """Nodes without dependencies, in iteration order."""
        return [n for n, d in zip(self._nodes, self._deps, strict=True) if not d]

    def sinks(self) -> list[DispatchNode]:
        """Nodes nothing depends on, in iteration order."""
        dependents = self._dependent_positions()
        return [n for n, d in zip(self._nodes, dependents, strict=True) if not d]

    def ancestors(self, node: DispatchNode) -> set[DispatchNode]:
        """Every node ``node`` depends on, directly or not."""
        return self._closure(self._position(node), self._deps)

    def descendants(self, node: DispatchNode) -> set[DispatchNode]:
        """Every node that depends on ``node``, directly or not."""
        return self._closure(self._position(node), self._dependent_positions())

    def _closure(self, start: int, edges: list[Any]) -> set[DispatchNode]:
        seen: set[int] = set()
        stack = list(edges[start])
        while stack:
            p = stack.pop()
            if p not in seen:
                seen.add(p)
                stack.extend(edges[p])
        nodes = self._nodes
        return {nodes[p] for p in seen}

    def subgraph(
        self,
        targets: DispatchNode | Iterable[DispatchNode],
        inputs: Iterable[DispatchNode] = (),
    ) -> DispatchGraph:
        """Just what is needed to compute ``targets`` when the nodes in ``inputs`` are given.

        Given nodes that are needed stay as sources, their incoming edges cut.
        """
        roots = _as_node_list(targets)
        for node in roots:
            self._position(node)
        given = {n for n in inputs if n in self._index}
        deps, index = self._deps, self._index
        needed: set[int] = set()
        stack = [index[n] for n in roots]
        while stack:
            p = stack.pop()
            if p in needed:
                continue
            needed.add(p)
            if self._nodes[p] not in given:
                stack.extend(deps[p])
        nodes = [self._nodes[p] for p in sorted(needed)]
        return DispatchGraph._from_parts(nodes, tuple(dict.fromkeys(roots)), given)

    def to_dot(self) -> str:
        """Graphviz DOT text: one vertex per node with its label and arguments (as
        ``str(node)`` gives them: ``load('b.txt')``) and kind."""
        lines = ["digraph dispatcher {", "  rankdir=LR;", "  node [fontname=Helvetica];"]
        shapes = {
            "Op": "box",
            "DataNode": "ellipse",
            "IndexNode": "diamond",
            "CollectNode": "trapezium",
        }
        for i, node in enumerate(self._nodes):
            kind = node.kind
            name = str(node)
            text = f"{name}\\n({kind})" if kind != "Op" else name
            shape = shapes.get(kind, "box")
            lines.append(f'  n{i} [label="{_dot_escape(text)}", shape={shape}];')
        for i, positions in enumerate(self._deps):
            for p in positions:
                lines.append(f"  n{p} -> n{i};")
        lines.append("}")
        return "\n".join(lines) + "\n"

    def __repr__(self) -> str:
        return f"<DispatchGraph of {len(self._nodes)} nodes>"


def _dot_escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace('"', '\\"').replace("\\\\n", "\\n")


def _as_node_list(targets: Any) -> list[DispatchNode]:
    if isinstance(targets, DispatchNode):
        return [targets]
    if isinstance(targets, (str, bytes)) or not isinstance(targets, Iterable):
        raise TypeError(
            f"targets must be a node or an iterable of nodes, got {type(targets).__name__}"
        )
    nodes = list(targets)
    for item in nodes:
        if not isinstance(item, DispatchNode):
            raise TypeError(f"targets must be nodes; got {type(item).__name__}: {item!r}")
    return nodes


def _topological(nodes: list[DispatchNode]) -> list[DispatchNode]:
    """Depth-first order for nodes whose creation order is not topological; finds cycles."""
    members = set(nodes)
    done: set[DispatchNode] = set()
    on_path: dict[DispatchNode, int] = {}
    order: list[DispatchNode] = []
    for root in nodes:
        if root in done:
            continue
        path: list[DispatchNode] = [root]
        iters = [iter(root.dependencies())]
        on_path[root] = 0
        while iters:
            for dep in iters[-1]:
                if dep not in members or dep in done:
                    continue
                if dep in on_path:
                    raise CycleError(path[on_path[dep] :])
                on_path[dep] = len(path)
                path.append(dep)
                iters.append(iter(dep.dependencies()))
                break
            else:
                iters.pop()
                node = path.pop()
                del on_path[node]
                done.add(node)
                order.append(node)
    return order
