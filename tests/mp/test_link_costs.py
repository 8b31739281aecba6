"""mp times the moves it makes between its workers, so placement learns what they cost."""

from __future__ import annotations

import pytest

from dispatcher import Op, get_executor
from dispatcher._links import ACROSS_HOSTS
from dispatcher.testing import tasks

pytestmark = pytest.mark.timeout(60)


def test_a_move_between_workers_is_timed_and_learned() -> None:
    with get_executor("mp", workers=2) as ex:
        assert ex.link_costs.within.samples == 0
        # Two slow producers run side by side, one on each worker: their consumer takes
        # one input from the other worker.
        a = Op(tasks.sleep_then, 0.3, b"a" * 1_000_000)
        b = Op(tasks.sleep_then, 0.3, b"b" * 1_000_000)
        assert len(ex.run(Op(tasks.add, a, b))) == 2_000_000
        within = ex.link_costs.within
        assert within.samples == 1
        nbytes, seconds = within.large[0]
        assert nbytes >= 1_000_000
        assert 0 < seconds < 10
        # One host: nothing crossed to another.
        assert ex.link_costs.across.samples == 0
        assert ex.link_costs.across.link is ACROSS_HOSTS
