"""Large values held by the caller travel through shared memory, once per run, not once
per task that reads them."""

from __future__ import annotations

import os

import mp_tasks
import pytest

from dispatcher import DataNode, Op, get_executor

pytestmark = pytest.mark.timeout(120)
counted = pytest.importorskip("counted")  # needs NumPy


def segments() -> set[str]:
    return {n for n in os.listdir("/dev/shm") if n.startswith("dispatcher-")}


def test_a_large_data_node_is_pickled_once_for_all_the_tasks_that_read_it() -> None:
    value = counted.counted(8)
    data = DataNode(value)
    before = segments()
    with get_executor("mp", workers=2) as ex:
        counted.PICKLED[0] = 0
        sums = ex.run([Op(mp_tasks.array_sum, data) for _ in range(40)])
        assert sums == [float(value.sum())] * 40
        assert counted.PICKLED[0] == 1
        # Another run writes it again (it may have changed), and only once.
        value[0] = 2.0
        assert ex.run([Op(mp_tasks.array_sum, data) for _ in range(10)]) == [value.sum()] * 10
        assert counted.PICKLED[0] == 2
    assert segments() == before


def test_a_large_input_value_is_pickled_once_for_all_the_tasks_that_read_it() -> None:
    value = counted.counted(8)
    placeholder = DataNode(None)
    with get_executor("mp", workers=2) as ex:
        counted.PICKLED[0] = 0
        sums = ex.run(
            [Op(mp_tasks.array_sum, placeholder) for _ in range(40)], inputs={placeholder: value}
        )
        assert sums == [float(value.sum())] * 40
        assert counted.PICKLED[0] == 1


def test_a_large_value_given_to_every_run_keeps_one_finalizer() -> None:
    """Each run put another finalizer on a long-lived caller value (released only when
    the value went), and a closed executor stayed alive through them."""
    import weakref

    numpy = pytest.importorskip("numpy")
    big = numpy.ones(1 << 18)
    registry = weakref.finalize._registry  # type: ignore[attr-defined]
    before = len(registry)
    with get_executor("mp", workers=1) as ex:
        for _ in range(5):
            assert ex.run(Op(mp_tasks.array_sum, DataNode(big))) == float(1 << 18)
        assert len(registry) - before <= 1
    assert len(registry) == before
