"""The node model: construction, dependencies, labels, bad input."""

from __future__ import annotations

import collections
import operator
import threading

import pytest

from dispatcher import CollectNode, DataNode, DispatchNode, IndexNode, Op, OpFunction, op, run


def f(*args: object, **kwargs: object) -> None:
    return None


def test_dependencies_are_found_at_any_depth_in_order_without_duplicates() -> None:
    a, b, c, d = (DataNode(i) for i in range(4))
    point = collections.namedtuple("point", "x y")
    node = Op(f, a, [b, (c, {"k": {d}})], point(a, b), key=frozenset([c]))
    assert node.dependencies() == (a, b, c, d)


def test_constants_are_not_dependencies() -> None:
    a = DataNode(1)

    class MyList(list):  # type: ignore[type-arg]
        pass

    node = Op(f, {a_key: 1 for a_key in ["x"]}, MyList([a]), IndexNode(a, (a,)))
    # dict keys and instances of container subclasses are constants; an IndexNode's
    # index is a constant even when it holds a node.
    assert node.dependencies()[0].dependencies() == (a,)
    assert len(node.dependencies()) == 1


def test_containers_are_copied_at_construction() -> None:
    from dispatcher import run

    items = [DataNode(1), 2]
    node = Op(list, items)
    items.append(3)
    items[0] = 99
    assert run(node, executor="sync") == [1, 2]


def test_labels() -> None:
    def compute(x: int) -> int:
        return x

    node = Op(compute, 1)
    assert node.label == "test_labels.<locals>.compute"
    assert "compute" in repr(node)
    node.label = "renamed"
    assert node.label == "renamed"
    with pytest.raises(TypeError):
        node.label = 3  # type: ignore[assignment]
    assert op(compute, label="given")(1).label == "given"
    assert DataNode([1, 2]).label == "DataNode([1, 2])"
    assert IndexNode(node, 0).label == "renamed[0]"
    assert CollectNode([node]).label == "CollectNode(1)"


def test_nodes_hash_by_identity() -> None:
    a, b = Op(f, 1), Op(f, 1)
    assert a != b
    assert len({a, b, a}) == 2


@pytest.mark.parametrize("bad", [3, "text", None])
def test_op_needs_a_callable(bad: object) -> None:
    with pytest.raises(TypeError, match="callable"):
        Op(bad)  # type: ignore[arg-type]


def test_collect_node_needs_nodes() -> None:
    with pytest.raises(TypeError, match="iterable of nodes"):
        CollectNode(5)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="item 1 is int"):
        CollectNode([DataNode(1), 5])  # type: ignore[list-item]


def test_index_node_needs_a_node() -> None:
    with pytest.raises(TypeError, match="node to index"):
        IndexNode(5, 0)  # type: ignore[arg-type]


def test_nodes_are_not_iterable_but_can_be_indexed() -> None:
    node = Op(f, 1)
    with pytest.raises(TypeError, match=r"node\[0\]"):
        a, b = node  # type: ignore[misc]
    with pytest.raises(TypeError):
        list(node)
    item = node[2]
    assert isinstance(item, IndexNode)
    assert item.node is node
    assert item.index == 2


def test_nout_unpacks() -> None:
    first, second = op(f, nout=2)(1)
    assert isinstance(first, IndexNode)
    assert first.index == 0
    assert second.index == 1
    assert first.node is second.node


def test_op_decorator_forms() -> None:
    @op
    def plain(x: int) -> int:
        return x

    @op(label="named", timeout=5)
    def configured(x: int) -> int:
        return x

    assert isinstance(plain, OpFunction)
    assert plain.__name__ == "plain"
    node = configured(1)
    assert isinstance(node, Op)
    assert node.label == "named"
    assert node.timeout == 5
    assert op(f)(1).timeout is None
    with pytest.raises(ValueError, match="timeout"):
        op(f, timeout=-1)
    with pytest.raises(TypeError, match="callable"):
        op(3)  # type: ignore[call-overload]


def test_every_node_is_a_dispatch_node() -> None:
    a = DataNode(1)
    for node in (a, Op(f, a), a[0], CollectNode([a])):
        assert isinstance(node, DispatchNode)
        assert node.kind == type(node).__name__


def g(x: int) -> int:
    return x + 1


def test_wrapping_an_op_again_applies_the_new_options() -> None:
    first = op(g, label="A", timeout=5, nout=2)
    again = op(first, timeout=1, label="L")
    node = again(1)
    assert node.label == "L"
    assert node.timeout == 1
    assert node._func is g  # the function itself, not a wrapper that builds nodes
    assert again.func is g
    assert again.nout == 2  # not given again: kept
    assert op(first)(1).label == "A"
    assert op(first)(1).timeout == 5
    assert op(label="outer")(first)(1).label == "outer"


def test_attributes_of_the_function_do_not_hijack_the_op() -> None:
    def h(x: int) -> int:
        return x

    h.func = print  # type: ignore[attr-defined]
    h.timeout = "soon"  # type: ignore[attr-defined]
    h.label = 42  # type: ignore[attr-defined]
    h.nout = 3  # type: ignore[attr-defined]
    h.other = "kept"  # type: ignore[attr-defined]
    wrapped = op(h, timeout=2)
    node = wrapped(1)
    assert node._func is h
    assert node.timeout == 2
    assert node.label.endswith("h")
    with pytest.raises(TypeError, match="single node"):
        iter(node)
    assert wrapped.other == "kept"  # type: ignore[attr-defined]
    assert op(h)(1).timeout is None


def test_op_of_an_op_function_calls_the_function() -> None:
    from dispatcher import run

    wrapped = op(g, label="plus-one", timeout=3)
    node = Op(wrapped, 1)
    assert node._func is g
    assert node.label == "plus-one"
    assert node.timeout == 3
    assert run(node, executor="sync") == 2


@pytest.mark.parametrize(
    "bad",
    [0, -1, -0.5, float("nan"), True, False, "1", b"1", [1], object()],
    ids=repr,
)
def test_op_rejects_bad_timeouts_naming_them(bad: object) -> None:
    with pytest.raises(ValueError, match="timeout") as info:
        op(f, timeout=bad)  # type: ignore[arg-type]
    assert repr(bad) in str(info.value)


def test_op_accepts_positive_and_infinite_timeouts() -> None:
    import fractions
    import math

    assert op(f, timeout=0.25)(1).timeout == 0.25
    assert op(f, timeout=2)(1).timeout == 2.0
    assert op(f, timeout=fractions.Fraction(1, 2))(1).timeout == 0.5
    assert op(f, timeout=math.inf)(1).timeout == math.inf


@pytest.mark.parametrize("bad", [True, -1, 1.5, "2"], ids=repr)
def test_op_rejects_bad_nout(bad: object) -> None:
    with pytest.raises(ValueError, match="nout"):
        op(f, nout=bad)  # type: ignore[arg-type]


def nested(depth: int, leaf: object) -> object:
    value = leaf
    for _ in range(depth):
        value = [value]
    return value


@pytest.mark.parametrize("leaf", [1, DataNode(1)], ids=["constant", "node"])
def test_arguments_nested_too_deep_are_a_clear_error(leaf: object) -> None:
    with pytest.raises(ValueError, match="nested too deeply") as info:
        Op(g, nested(5000, leaf))
    assert "g" in str(info.value)
    assert "DataNode" in str(info.value)
    with pytest.raises(ValueError, match="nested too deeply"):
        op(g)(x=nested(5000, leaf))


def test_an_argument_that_contains_itself_is_named_as_such() -> None:
    looped: list[object] = []
    looped.append(looped)
    with pytest.raises(ValueError, match="contains itself") as info:
        Op(g, looped)
    assert "DataNode" in str(info.value)


def test_a_deep_value_passes_as_a_data_node() -> None:
    from dispatcher import run

    deep = nested(5000, 7)
    shallow = Op(f, nested(100, DataNode(1)))  # well within reach: searched as usual
    assert len(shallow.dependencies()) == 1
    assert run(Op(id, DataNode(deep)), executor="sync") == id(deep)


def test_labels_of_deep_huge_or_unprintable_constants_are_short_and_safe() -> None:
    class Unprintable:
        def __repr__(self) -> str:
            raise ValueError("no repr")

    deep = nested(5000, 1)
    for value in (deep, list(range(1_000_000)), "x" * 10_000, Unprintable()):
        label = DataNode(value).label
        assert label.startswith("DataNode(")
        assert len(label) <= 60
    assert len(IndexNode(DataNode(1), deep).label) <= 80


def test_only_the_label_can_be_reassigned() -> None:
    node = op(f, timeout=2)(1)
    with pytest.raises(AttributeError, match=r"op\(func, timeout=\.\.\.\)"):
        node.timeout = 5  # type: ignore[misc]
    assert node.timeout == 2
    with pytest.raises(AttributeError):
        node.func = print  # type: ignore[misc]


@op
def load(path: str) -> str:
    return path


@op
def count(text: str) -> int:
    return len(text)


@op
def total(counts: list[int], *, scale: int = 1) -> int:
    return sum(counts)


def test_a_node_is_described_by_its_label_and_arguments() -> None:
    counts = [count(load(name)) for name in ["a.txt", "b.txt"]]
    # The three loads of the Quick start told apart; dependencies two levels deep.
    assert str(load("b.txt")) == "load('b.txt')"
    assert str(counts[1]) == "count(load('b.txt'))"
    assert str(total(counts, scale=2)) == "total([count(load(...)), count(load(...))], scale=2)"
    assert str(op(f, label="given")(3, None, 1.5)) == "given(3, None, 1.5)"
    assert str(op(f)()) == "f()"
    assert str(op(f, nout=2)("x")[1]) == "f('x')[1]"
    assert str(DataNode([1, 2])) == "DataNode([1, 2])"
    assert str(CollectNode(counts)) == "CollectNode(2)"
    assert repr(load("b.txt")) == "<Op load>"


def test_descriptions_of_deep_huge_or_unprintable_arguments_are_short_and_safe() -> None:
    class Unprintable:
        def __repr__(self) -> str:
            raise ValueError("no repr")

    class Huge:
        def __repr__(self) -> str:
            return "h" * 10_000_000

    values = [
        nested(50, 1),
        list(range(1_000_000)),
        "x" * 10_000,
        b"y" * 100_000_000,
        Unprintable(),
        Huge(),
        {i: str(i) for i in range(1000)},
    ]
    for value in values:
        text = str(Op(f, value, key=value))
        assert text.startswith("f("), text
        assert len(text) <= 80, text
    assert str(Op(f, Unprintable())) == "f(<Unprintable>)"
    # An object's default repr says where it lives in memory: its type is what tells.
    assert str(Op(f, object(), threading.Lock())) == "f(<object>, <_thread.lock>)"
    # A chain a thousand long reads as its last links.
    chain: DispatchNode = DataNode(0)
    for _ in range(1000):
        chain = Op(f, chain)
    assert str(chain) == "f(f(f(...)))"


class _Custom(DispatchNode):
    """A node class of a user's, made through the general construction."""

    __slots__ = ()

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(f, *args, **kwargs)


class _Twice(DispatchNode):
    """A node class of a user's: twice its input."""

    def __init__(self, node: DispatchNode) -> None:
        super().__init__(operator.mul, 2, node)


class _Forgetful(DispatchNode):
    """A node class of a user's that never says what its nodes compute."""

    def __init__(self, node: DispatchNode) -> None:
        self.node = node

    def dependencies(self) -> tuple[DispatchNode, ...]:
        return (self.node,)


def test_a_node_class_of_ones_own_says_what_it_computes_through_the_base_class() -> None:
    node = _Twice(_Twice(DataNode(3)))
    assert node.label == "_Twice"
    assert node.dependencies()[0].kind == "_Twice"
    assert run(node) == 12
    assert run(node, executor="sync") == 12


def test_a_node_class_that_never_says_what_it_computes_is_named() -> None:
    # It failed deep in the graph's walk with "'_Forgetful' object has no attribute
    # '_deps'".
    with pytest.raises(TypeError, match=r"_Forgetful node has nothing to compute.*__init__"):
        run(Op(str, _Forgetful(DataNode(1))))
    with pytest.raises(TypeError, match="needs a callable"):
        _Custom.__base__.__init__(_Custom(), 3)  # type: ignore[misc]


@pytest.mark.parametrize(
    "shape_of",
    [
        "one node",
        "one scalar",
        "two nodes",
        "the same node twice",
        "three nodes",
        "a node and a scalar",
        "a list",
        "a keyword",
        "nothing",
    ],
)
def test_every_way_of_making_a_call_keeps_the_same_call(shape_of: str) -> None:
    # Op takes the commonest shapes itself, op() and other node classes through the
    # general capture: each must keep what the other would.
    a, b, c = DataNode(1), DataNode(2), DataNode(3)
    args, kwargs = {
        "one node": ((a,), {}),
        "one scalar": ((4,), {}),
        "two nodes": ((a, b), {}),
        "the same node twice": ((a, a), {}),
        "three nodes": ((a, b, c), {}),
        "a node and a scalar": ((a, 5), {}),
        "a list": (([a, b],), {}),
        "a keyword": ((a,), {"k": b}),
        "nothing": ((), {}),
    }[shape_of]
    made = [Op(f, *args, **kwargs), op(f)(*args, **kwargs), _Custom(*args, **kwargs)]
    kept = {(n._shape, n._deps, repr(n._args), repr(n._kwargs)) for n in made}
    assert len(kept) == 1, kept
    from dispatcher import run

    assert run(made, executor="sync") == [None, None, None]
