"""Ranks silent with tasks out (a host cut off from the network, a frozen process), without
an MPI job: the limit, which ranks count as silent, and a rank's fetches from a rank given
up on."""

from __future__ import annotations

import pickle
import threading
import time
from types import SimpleNamespace
from typing import Any

import pytest

from dispatcher.remote import Failed, from_wire
from dispatcher_mpi import _worker
from dispatcher_mpi._messages import IDLE, Alive, Busy, Data, Fetch, Peer, Reset
from dispatcher_mpi._silence import (
    DEFAULT_LIMIT,
    DEFAULT_ROOT_LIMIT,
    _give_up,
    root_silence_limit,
    silence_limit,
    silent_ranks,
)
from dispatcher_mpi._transport import Root
from dispatcher_mpi._worker import WorkerRank

pytestmark = pytest.mark.timeout(30)


def test_the_limit_defaults_and_reads_the_environment() -> None:
    assert silence_limit({}) == DEFAULT_LIMIT
    assert silence_limit({"DISPATCHER_MPI_SILENCE_LIMIT": " "}) == DEFAULT_LIMIT
    assert silence_limit({"DISPATCHER_MPI_SILENCE_LIMIT": "2.5"}) == 2.5
    assert root_silence_limit({}) == DEFAULT_ROOT_LIMIT > DEFAULT_LIMIT
    assert root_silence_limit({"DISPATCHER_MPI_ROOT_SILENCE_LIMIT": "7"}) == 7.0


@pytest.mark.parametrize("raw", ["abc", "0", "-1", "nan", "-inf"])
def test_a_limit_that_is_not_seconds_above_zero_says_so(raw: str) -> None:
    with pytest.raises(ValueError, match=f"DISPATCHER_MPI_SILENCE_LIMIT must be .*{raw!r}"):
        silence_limit({"DISPATCHER_MPI_SILENCE_LIMIT": raw})
    with pytest.raises(ValueError, match=f"_ROOT_SILENCE_LIMIT must be .*{raw!r}"):
        root_silence_limit({"DISPATCHER_MPI_ROOT_SILENCE_LIMIT": raw})


@pytest.mark.parametrize("raw", ["0.001", "1"])
def test_a_limit_shorter_than_a_few_heartbeats_says_so(raw: str) -> None:
    # A rank speaks every half second: under a limit of 1 ms healthy ranks were given up on.
    with pytest.raises(ValueError, match=rf"at least 1.5 s .* not {raw!r}"):
        silence_limit({"DISPATCHER_MPI_SILENCE_LIMIT": raw})


def test_a_root_limit_shorter_than_a_few_heartbeats_says_so() -> None:
    # Rank 0 speaks each second: a healthy idle job ended under a limit of 0.5 s.
    with pytest.raises(ValueError, match=r"at least 3 s .* not '0.5'"):
        root_silence_limit({"DISPATCHER_MPI_ROOT_SILENCE_LIMIT": "0.5"})
    assert root_silence_limit({"DISPATCHER_MPI_ROOT_SILENCE_LIMIT": "3"}) == 3.0


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


class _World:
    def Get_rank(self) -> int:
        return 0

    def Get_size(self) -> int:
        return 3


def _posted(root: Any) -> list[tuple[int, Any]]:
    sent = [(dest, from_wire(pickle.loads(data))) for dest, data, *_ in root.hub.outbox]
    root.hub.outbox.clear()
    return sent


@pytest.mark.parametrize("speaks", ["idle", "finishing its task"])
def test_a_rank_given_up_on_for_its_silence_is_given_back_to_the_others(speaks: str) -> None:
    root = Root(_World(), [("node1", 10), ("node2", 11), ("node3", 12)])
    _give_up(root, 2, 7.0, True)
    posted = _posted(root)
    assert (1, Peer(2, False)) in posted
    assert (2, Reset()) in posted
    if speaks == "idle":
        root.deliver(2, Busy(IDLE))
    else:
        root.deliver(2, Busy(41))  # still running the task it went silent in
        assert 2 in root.busy
        assert _posted(root) == []
        root.deliver(2, Failed(41, 0.0, None))  # type: ignore[arg-type]
    assert 2 not in root.busy
    assert _posted(root) == [(1, Peer(2, True))]


def test_silence_counts_from_when_rank_0_came_back_from_not_running() -> None:
    heard, sent = {1: 10.0}, {1: 10.0}
    assert silent_ranks([1], heard, sent, now=100.0, limit=30.0) == [(1, 90.0)]
    assert silent_ranks([1], heard, sent, now=100.0, limit=30.0, since=95.0) == []


def test_a_gap_between_rank_0s_ticks_restarts_every_ranks_silence() -> None:
    root = Root(_World(), [("node1", 10), ("node2", 11), ("node3", 12)])
    root.tick()
    assert root.resumed == 0.0  # ticking as usual
    root._last_tick -= 5  # the program held the GIL, or the job was stopped, for 5 s
    root.tick()
    assert root.resumed == pytest.approx(time.monotonic(), abs=1)


class _TimedTasksOut:
    """A transport, as far as rank 0's tick sees it: a timed task out, past its deadline."""

    def __init__(self) -> None:
        self.inflight = SimpleNamespace(
            tasks={}, deadlines={1: (0.0, None)}, next_deadline=lambda: 0.0
        )
        self.unstarted: dict[int, Any] = {}
        self.judged = 0

    def enforce_deadlines(self) -> None:
        self.judged += 1


def test_deadlines_wait_after_rank_0_comes_back_from_not_running() -> None:
    # Stopped (SIGSTOP, Ctrl-Z) while its ranks finished their tasks in time, rank 0 judged
    # the deadlines at its first tick back, before reading the completions waiting for it.
    root = Root(_World(), [("node1", 10), ("node2", 11), ("node3", 12)])
    read: list[float] = []
    root.hub.receive_all = lambda *_: bool(read.append(time.monotonic()))  # type: ignore[method-assign]
    transport = _TimedTasksOut()
    root.transport = transport  # type: ignore[assignment]
    root.tick()
    assert transport.judged == 1  # ticking as usual
    root._last_tick -= 5  # not running for 5 s
    root.tick()
    assert transport.judged == 1  # what the ranks reported meanwhile is read first
    root.tick()  # the next turn, once the hub has read again
    assert transport.judged == 2
    assert len(read) == 2  # and each time, what came in was read just before


def test_a_rank_that_stops_hearing_from_rank_0_ends_the_job(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Rank 0's host cut off closes no connection: the ranks waited for it for ever.
    ended: list[str] = []
    monkeypatch.setattr(_worker, "abort_job", lambda comm, message, status: ended.append(message))
    worker = WorkerRank(_Comm(), [("node1", 10), ("node2", 11), ("node3", 12)])
    worker.root_silence_limit = 5.0
    worker.root_heard -= 4
    worker._tick()
    assert ended == []  # within the limit
    worker.root_heard -= 2
    worker.deliver(0, Alive())  # rank 0 spoke
    worker._tick()
    assert ended == []
    worker.root_heard -= 6
    worker._last_tick -= 3  # this rank did not run meanwhile: its silence counts anew
    worker._tick()
    assert ended == []
    worker.root_heard -= 6
    worker._tick()
    assert len(ended) == 1
    assert "rank 2 (host node3) has not heard from rank 0 (host node1, pid 10) for 6 s" in ended[0]
    assert "DISPATCHER_MPI_ROOT_SILENCE_LIMIT" in ended[0]
