"""Ranks silent with tasks out (a host cut off from the network, a frozen process), without
an MPI job: the limit, which ranks count as silent, and a rank's fetches from a rank given
up on."""

from __future__ import annotations

import pickle
import threading
import time
from typing import Any

import pytest

from dispatcher_mpi._messages import Data, Fetch, Peer
from dispatcher_mpi._silence import DEFAULT_LIMIT, silence_limit, silent_ranks
from dispatcher_mpi._worker import WorkerRank

pytestmark = pytest.mark.timeout(30)


def test_the_limit_defaults_and_reads_the_environment() -> None:
    assert silence_limit({}) == DEFAULT_LIMIT
    assert silence_limit({"DISPATCHER_MPI_SILENCE_LIMIT": " "}) == DEFAULT_LIMIT
    assert silence_limit({"DISPATCHER_MPI_SILENCE_LIMIT": "2.5"}) == 2.5


@pytest.mark.parametrize("raw", ["abc", "0", "-1", "nan", "-inf"])
def test_a_limit_that_is_not_seconds_above_zero_says_so(raw: str) -> None:
    with pytest.raises(ValueError, match=f"DISPATCHER_MPI_SILENCE_LIMIT must be .*{raw!r}"):
        silence_limit({"DISPATCHER_MPI_SILENCE_LIMIT": raw})


def test_silence_counts_from_the_later_of_the_last_word_and_the_last_work_sent() -> None:
    heard = {1: 100.0, 2: 50.0, 3: 10.0}
    sent = {1: 10.0, 2: 95.0, 3: 20.0}  # rank 4: never sent anything
    assert silent_ranks([1, 2, 3, 4], heard, sent, now=104.0, limit=10.0) == [(3, 84.0)]
    assert silent_ranks([1, 2, 3, 4], heard, sent, now=105.0, limit=10.0) == [
        (2, 10.0),
        (3, 85.0),
    ]


class _Comm:
    def Get_rank(self) -> int:
        return 2


def _sent(worker: WorkerRank) -> list[tuple[int, Any]]:
    return [(dest, pickle.loads(data)) for dest, data, *_ in worker.hub.outbox]


def _wait_for(condition: Any) -> None:
    deadline = time.monotonic() + 10
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def test_a_fetch_from_a_rank_given_up_on_ends_with_what_it_held_left_out() -> None:
    worker = WorkerRank(_Comm())
    fetched: dict[int, Any] = {}
    # Input 7 is held by rank 1, input 8 by rank 3.
    thread = threading.Thread(target=lambda: fetched.update(worker.remote_inputs((7, 8), (1, 3))))
    thread.start()
    _wait_for(lambda: len(worker.replies) == 2)
    by_rank = {waiter[2]: request for request, waiter in worker.replies.items()}
    worker.deliver(0, Peer(1, False))  # rank 1 never answers: given up on
    worker.deliver(3, Data(by_rank[3], [(8, True, [pickle.dumps("eight")])]))
    thread.join(5)
    assert not thread.is_alive(), "the fetch from the rank given up on still waits"
    assert fetched == {8: "eight"}  # 7 left out: the task reports it lost
    assert not worker.replies
    # Nothing more is asked of rank 1 until rank 0 has it back.
    worker.hub.outbox.clear()
    assert worker.remote_inputs((7,), (1,)) == {}
    assert worker.hub.outbox == type(worker.hub.outbox)()
    worker.deliver(0, Peer(1, True))
    assert 1 not in worker.unreachable


def test_a_rank_given_up_on_while_a_fetch_is_being_sent_does_not_leave_it_waiting() -> None:
    worker = WorkerRank(_Comm())
    worker.unreachable.add(1)
    post = worker.hub.post

    def post_then_give_up(dest: int, message: Any, *rest: Any) -> None:
        post(dest, message, *rest)
        if isinstance(message, Fetch):  # given up on before the fetch was recorded
            worker.unreachable.add(3)

    worker.hub.post = post_then_give_up  # type: ignore[method-assign]
    assert worker.remote_inputs((8,), (3,)) == {}
