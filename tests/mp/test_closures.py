"""A function per node (a closure over a loop variable, a lambda with a default): the
first of a code ships in full, the others as that template with their own values, each
still a function of its own on the worker."""

from __future__ import annotations

import pickle
from typing import Any

import pytest

from dispatcher import get_executor, op
from dispatcher.remote import Define, Run, dumps
from dispatcher.remote import _closures as closures
from dispatcher.remote import _pickle as kit_pickle
from dispatcher_mp import _process

pytestmark = pytest.mark.timeout(60)

OFFSET = 10


def adder(k: int) -> Any:
    def add(x: int) -> int:
        """Adds k."""
        return x + k + OFFSET

    return add


def no_cloudpickle(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("cloudpickle was used")

    monkeypatch.setattr(kit_pickle, "_Pickler", refuse)


def ship(func: Any) -> Any:
    """``func`` through the shipper's pickling and back, as a worker loads it."""
    return pickle.loads(closures.dumps_function(func, dumps))


def test_closures_of_one_code_ship_as_its_template_and_their_values(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    first = ship(adder(1))
    no_cloudpickle(monkeypatch)
    second, third = ship(adder(2)), ship(adder(3))
    assert (first(1), second(1), third(1)) == (12, 13, 14)
    assert second is not third
    assert second.__code__ is third.__code__  # the template loaded once
    assert (second.__name__, second.__qualname__) == ("add", "adder.<locals>.add")
    assert second.__doc__ == "Adds k."
    assert second.__annotations__ == {"x": "int", "return": "int"}


def test_lambdas_with_defaults_keep_their_own(monkeypatch: pytest.MonkeyPatch) -> None:
    made = [lambda x, k=k, *, m=2: (x + k) * m for k in range(4)]
    ship(made[0])
    no_cloudpickle(monkeypatch)
    shipped = [ship(f) for f in made[1:]]
    assert [f(1) for f in shipped] == [4, 6, 8]
    assert [f(1, m=3) for f in shipped] == [6, 9, 12]


def test_a_global_rebound_since_the_template_ships_in_full() -> None:
    global OFFSET
    ship(adder(1))
    OFFSET = 100
    try:
        assert ship(adder(2))(1) == 103  # not the value the template was made with
    finally:
        OFFSET = 10
    assert ship(adder(2))(1) == 13


class Box:
    def __init__(self, value: int) -> None:
        self.value = value


def boxed(box: Box) -> Any:
    def read() -> int:
        return box.value

    return read


def test_what_the_plain_pickler_cannot_take_ships_in_full(monkeypatch: pytest.MonkeyPatch) -> None:
    ship(boxed(Box(1)))
    assert ship(boxed(Box(2)))() == 2  # a cell holding an instance: cloudpickle's
    tagged = adder(5)
    tagged.tag = "mine"  # type: ignore[attr-defined]
    shipped = ship(tagged)
    assert (shipped(0), shipped.tag) == (15, "mine")
    no_cloudpickle(monkeypatch)
    with pytest.raises(AssertionError, match="cloudpickle"):
        ship(boxed(Box(3)))


def test_a_function_per_node_runs_as_its_own_on_workers(monkeypatch: pytest.MonkeyPatch) -> None:
    sent: list[str] = []
    real = _process.WorkerProcess.send

    def send(self: Any, message: Any) -> None:
        sent.append(type(message).__name__)
        if type(message) is Run and message.defines:
            sent.extend("in-run" for _ in message.defines)
        real(self, message)

    monkeypatch.setattr(_process.WorkerProcess, "send", send)
    with get_executor("mp", workers=2) as ex:
        nodes = [op(adder(k))(k) for k in range(60)] + [
            op(lambda x, k=k: x * k)(k) for k in range(60)
        ]
        assert ex.run(nodes) == [2 * k + 10 for k in range(60)] + [k * k for k in range(60)]
    assert Define.__name__ not in sent  # each went with the batch of its first task
    assert sent.count("in-run") >= 120
