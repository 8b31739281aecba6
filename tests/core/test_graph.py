"""DispatchGraph: queries, subgraphs, cycles, DOT."""

from __future__ import annotations

import gc

import pytest

from dispatcher import CycleError, DataNode, DispatchGraph, DispatchNode, Op
from dispatcher._plan import needs_more_than
from dispatcher.testing import tasks


def f(*args: object) -> None:
    return None


@pytest.fixture
def diamond() -> tuple[DispatchNode, ...]:
    a = DataNode(1)
    b = Op(f, a)
    c = Op(f, a)
    d = Op(f, b, c)
    return a, b, c, d


def test_queries(diamond: tuple[DispatchNode, ...]) -> None:
    a, b, c, d = diamond
    g = DispatchGraph(d)
    assert len(g) == 4
    assert list(g) == [a, b, c, d]
    assert a in g
    assert Op(f) not in g
    assert g.dependencies(d) == (b, c)
    assert set(g.dependents(a)) == {b, c}
    assert g.sources() == [a]
    assert g.sinks() == [d]
    assert g.ancestors(d) == {a, b, c}
    assert g.descendants(a) == {b, c, d}
    assert g == DispatchGraph([d, b])
    assert g != DispatchGraph(b)
    with pytest.raises(KeyError):
        g.dependencies(Op(f))


def test_iteration_is_topological_and_stable() -> None:
    leaves = [DataNode(i) for i in range(5)]
    tops = [Op(f, *reversed(leaves)), Op(f, leaves[0])]
    g1 = DispatchGraph(tops)
    g2 = DispatchGraph(list(reversed(tops)))
    assert list(g1) == list(g2)
    seen: set[DispatchNode] = set()
    for node in g1:
        assert set(g1.dependencies(node)) <= seen
        seen.add(node)


def test_subgraph_cuts_given_nodes(diamond: tuple[DispatchNode, ...]) -> None:
    a, b, c, d = diamond
    g = DispatchGraph(d)
    sub = g.subgraph(d, inputs={b: 0, c: 0})
    assert set(sub) == {b, c, d}
    assert sub.dependencies(b) == ()
    assert sub.sources() == [b, c]
    only_b = g.subgraph(b)
    assert set(only_b) == {a, b}
    with pytest.raises(KeyError):
        g.subgraph(Op(f))


def test_a_million_node_chain_builds() -> None:
    node: DispatchNode = DataNode(0)
    for _ in range(20_000):
        node = Op(f, node)
    g = DispatchGraph(node)
    assert len(g) == 20_001
    assert g.sources()[0].kind == "DataNode"


class Loop(DispatchNode):
    """A node whose dependencies() misbehaves and makes a cycle."""

    __slots__ = ("partner",)

    def __init__(self, name: str) -> None:
        super().__init__(f)
        self.label = name
        self.partner: DispatchNode | None = None

    def dependencies(self) -> tuple[DispatchNode, ...]:
        return (self.partner,) if self.partner is not None else ()


def test_cycle_names_the_nodes() -> None:
    x, y, z = Loop("x"), Loop("y"), Loop("z")
    x.partner, y.partner, z.partner = y, z, x
    with pytest.raises(CycleError) as info:
        DispatchGraph(x)
    assert {n.label for n in info.value.nodes} == {"x", "y", "z"}
    assert "x" in str(info.value)
    assert "->" in str(info.value)


def test_out_of_order_dependencies_without_cycle() -> None:
    late = Loop("late")
    early = Loop("early")
    late.partner = early  # created before, depends on one created after
    g = DispatchGraph(late)
    assert list(g) == [early, late]


def test_to_dot_shows_labels_and_kinds(diamond: tuple[DispatchNode, ...]) -> None:
    a, b, c, d = diamond
    d.label = 'say "hi"'
    dot = DispatchGraph(d).to_dot()
    assert dot.startswith("digraph")
    assert "DataNode" in dot
    assert 'say \\"hi\\"' in dot
    assert dot.count("->") == 4


def test_building_a_graph_leaves_the_garbage_collector_as_it_was() -> None:

    chain = Op(f, 0)
    for _ in range(100):
        chain = Op(f, chain)
    assert gc.isenabled()
    assert len(DispatchGraph(chain)) == 101
    assert gc.isenabled()
    gc.disable()
    try:
        DispatchGraph(chain)
        assert not gc.isenabled()
    finally:
        gc.enable()


def test_needs_more_than_looks_no_further_than_its_limit() -> None:
    chain = Op(tasks.inc, 0)
    for _ in range(9):
        chain = Op(tasks.inc, chain)  # 10 nodes
    assert not needs_more_than(chain, 10)
    assert needs_more_than(chain, 9)
    assert needs_more_than([[chain], {"x": Op(tasks.inc, 5)}], 10)  # 11, nested
    assert not needs_more_than(DispatchGraph(chain), 10)
    assert needs_more_than(DispatchGraph(chain), 5)
    assert not needs_more_than("not a node", 0)  # planning it says what is wrong
