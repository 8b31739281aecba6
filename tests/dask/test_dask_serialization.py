"""Values that cannot travel between dask workers fail the task that needed them.

dask moves a result the caller does not want in its own transfer; a value that did not
pickle there, or not unpickle where it arrived, failed inside it, which dask retried for
ever: the run hung.
"""

from __future__ import annotations

import pickle
from typing import Any

import dask_tasks
import pytest

from dispatcher import Op, SerializationError, run
from dispatcher_dask._held import Held, Moved, Unsendable

pytestmark = pytest.mark.timeout(120)

PRODUCERS = 4  # on two workers of one thread each, running at once: some must move


@pytest.mark.parametrize("kind", ["locked", "loads-only-where-made"])
def test_a_value_that_cannot_move_between_workers_fails_the_task_reading_it(
    dask_client: Any, kind: str
) -> None:
    address = dask_client.scheduler.address
    made = [Op(dask_tasks.make, kind, i, 0.5) for i in range(PRODUCERS)]
    reader = Op(dask_tasks.values_of, *made, label="reads_them")
    with pytest.raises(SerializationError) as info:
        run(reader, executor="dask", address=address)
    assert info.value.node is reader
    assert info.value.what == "input"
    expected = "_thread.lock" if kind == "locked" else "could not be unpickled where it arrived"
    assert expected in str(info.value)
    # The same values, read on the worker that made each, are fine.
    assert run(Op(dask_tasks.values_of, made[0]), executor="dask", address=address) == 0


def test_a_result_whose_pickling_raises_system_exit_fails_its_node(dask_client: Any) -> None:
    address = dask_client.scheduler.address
    node = Op(dask_tasks.exits_when_pickled)
    with pytest.raises(SerializationError, match="raised SystemExit") as info:
        run(node, executor="dask", address=address)
    assert info.value.node is node
    before = set(dask_client.scheduler_info()["workers"])
    assert run(Op(dask_tasks.total, 1, 2), executor="dask", address=address) == 3
    assert set(dask_client.scheduler_info()["workers"]) == before  # no worker died


def test_a_held_value_travels_as_its_bytes_with_buffers_out_of_band() -> None:
    numpy = pytest.importorskip("numpy")
    array = numpy.arange(1 << 16, dtype="u8")
    buffers: list[pickle.PickleBuffer] = []
    data = pickle.dumps(Held(1, array), protocol=5, buffer_callback=buffers.append)
    assert len(buffers) == 1  # the array's bytes were not copied into the pickle
    assert len(data) < 1024
    moved = pickle.loads(data, buffers=buffers)
    assert type(moved) is Moved
    assert (moved.load() == array).all()
    unsendable = pickle.loads(pickle.dumps(Held(2, dask_tasks.Locked(1))))
    assert type(unsendable) is Unsendable
