"""How a rank answers another's fetch, without an MPI job: the results it holds travel as
one pickle, those it does not hold are named, and one that cannot be pickled is named
with why."""

from __future__ import annotations

import pickle
import threading
import time
from typing import Any

import pytest

from dispatcher.remote import InputError, from_wire
from dispatcher.testing.tasks import Unpicklable
from dispatcher_mpi._messages import Data, Fetch
from dispatcher_mpi._worker import WorkerRank

pytestmark = pytest.mark.timeout(30)


class _Comm:
    def __init__(self, rank: int) -> None:
        self.rank = rank

    def Get_rank(self) -> int:
        return self.rank


def _posted(worker: WorkerRank) -> tuple[int, Any]:
    """The one message ``worker`` posted, as the rank it went to receives it."""
    dest, header, buffers, _ = worker.hub.outbox.popleft()
    assert not worker.hub.outbox
    return dest, from_wire(pickle.loads(header, buffers=buffers))


def _fetch(held: dict[int, Any], keys: tuple[int, ...]) -> tuple[Data, dict[int, Any]]:
    """Rank 2 fetches ``keys`` from rank 3, which holds ``held``: rank 3's answer, and
    what rank 2's task got from it (or the error it raised)."""
    asking, holding = WorkerRank(_Comm(2)), WorkerRank(_Comm(3))
    holding.store.update(held)
    got: dict[int, Any] = {}

    def task() -> None:
        try:
            got.update(asking.remote_inputs(keys, (3,) * len(keys)))
        except InputError as exc:
            got[-1] = exc

    thread = threading.Thread(target=task)
    thread.start()
    deadline = time.monotonic() + 10
    while not asking.hub.outbox:
        assert time.monotonic() < deadline, "no fetch was sent"
        time.sleep(0.01)
    dest, fetch = _posted(asking)
    assert (dest, type(fetch), fetch.keys) == (3, Fetch, keys)
    holding.deliver(2, fetch)
    dest, answer = _posted(holding)
    assert (dest, type(answer)) == (2, Data)
    asking.deliver(3, answer)
    thread.join(10)
    assert not thread.is_alive()
    return answer, got


def test_the_results_a_rank_holds_travel_as_one_pickle_and_the_others_are_named() -> None:
    answer, got = _fetch({1: "one", 3: [3, "three"], 4: 4.0}, (1, 2, 3, 4))
    assert answer.keys == (1, 3, 4)
    assert answer.values is not None
    assert len(answer.values) == 1  # one stream, no buffers
    assert answer.entries == [(2, False, None)]
    assert got == {1: "one", 3: [3, "three"], 4: 4.0}  # 2 left out: its task reports it lost


def test_a_result_that_cannot_be_pickled_is_named_with_why() -> None:
    answer, got = _fetch({1: "one", 2: Unpicklable()}, (1, 2))
    assert answer.values is None
    assert [entry[:2] for entry in answer.entries] == [(1, True), (2, False)]
    assert "cannot be pickled" in answer.entries[1][2]
    assert isinstance(got[-1], InputError)
    assert "Unpicklable" in str(got[-1])
