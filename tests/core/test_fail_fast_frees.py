"""A run that fails fast frees every result its workers made, whenever they report it."""

from __future__ import annotations

import pytest

from dispatcher import Op, op
from dispatcher.testing import FakeTransport, fake_executor, tasks


def test_results_reported_after_the_failure_that_stopped_the_run_are_freed() -> None:
    # The fake runs each batch as it is sent: the failure is reported in the middle of
    # the second batch, and the results after it wait in the queue with it.
    transport = FakeTransport(workers=2, slots=8)
    with fake_executor(transport, retries=0) as ex:
        nodes = [Op(tasks.inc, i) for i in range(6)]
        nodes += [op(tasks.fail)("on purpose"), *[Op(tasks.inc, 10 + i) for i in range(6)]]
        with pytest.raises(ValueError, match="on purpose"):
            ex.run(nodes)
        assert {worker: list(held) for worker, held in transport.stores.items()} == {
            worker: [] for worker in transport.stores
        }
