"""The move-cost model of placement: a move costs what its link costs, within a host or
across hosts, and a task goes to its data's host first."""

from __future__ import annotations

import time
from typing import Any

import pytest

from dispatcher import op
from dispatcher._links import ENOUGH, LinkCosts
from dispatcher._placement import ACROSS_HOSTS, WITHIN_HOST, Link, Placement
from dispatcher._states import DONE, READY, RUNNING, WAITING
from dispatcher.testing import FakeTransport, fake_executor, tasks
from dispatcher.transport import worker_host, worker_name

MB = 1_000_000


def _task(*inputs: Any) -> None:
    """The function of every task of a :class:`Table`, unless a test says otherwise."""


class _Node:
    """What placement reads of a node: its function."""

    def __init__(self, func: Any) -> None:
        self._func = func


class Table:
    """What placement reads of a task table: tasks 0 .. n-1, their inputs, where each
    result is held and how big it is."""

    def __init__(self, deps: list[tuple[int, ...]]) -> None:
        self.deps = deps
        self.dependents: list[list[int]] = [[] for _ in deps]
        for p, inputs in enumerate(deps):
            for d in inputs:
                self.dependents[d].append(p)
        self.holders: list[frozenset[str] | None] = [None] * len(deps)
        self.nbytes: list[int | None] = [None] * len(deps)
        self.inflight: dict[int, Any] = {}
        self.nodes = [_Node(_task) for _ in deps]
        # (What sending ahead reads and does: tasks' states, the ready stack.)
        self.state = [WAITING] * len(deps)
        self.waiting = [len(inputs) for inputs in deps]
        self.ready: list[int] = []

    def inputs_sent(self, p: int) -> bool:
        return all(self.state[d] in (RUNNING, DONE) for d in self.deps[p])

    def hold(self, p: int, worker: str, nbytes: int) -> None:
        self.holders[p] = frozenset((worker,))
        self.nbytes[p] = nbytes

    def held_on(self, worker: str) -> frozenset[str]:
        return frozenset((worker,))


class Spec:
    """A task sent to a worker, as placement reads it."""

    def __init__(self, worker: str) -> None:
        self.worker = worker


def placement(table: Table, *workers: str, capacity: int = 4) -> Placement:
    placed = Placement(table)  # type: ignore[arg-type]
    placed.links = LinkCosts()  # an executor's, as its router gives every run
    for worker in workers:
        placed.add_worker(worker, capacity)
    return placed


def test_a_worker_name_carries_its_host() -> None:
    assert worker_name("rank-3", "node2") == "rank-3@node2"
    assert worker_host("rank-3@node2") == "node2"
    assert worker_name("mp-1", None) == "mp-1"
    assert worker_host("mp-1") is None
    assert worker_host("tcp://10.0.0.1:4000") is None


def test_a_link_costs_its_latency_plus_the_bytes_at_its_bandwidth() -> None:
    link = Link(latency=1e-4, bandwidth=1e9)
    assert link.seconds(0) == pytest.approx(1e-4)
    assert link.seconds(2 * MB) == pytest.approx(1e-4 + 2e-3)
    # Across hosts, every move costs more than the same move within a host.
    for nbytes in (0, 1, MB, 1000 * MB):
        assert ACROSS_HOSTS.seconds(nbytes) > WITHIN_HOST.seconds(nbytes)


def test_on_one_host_every_move_costs_the_same() -> None:
    table = Table([(), (), (0, 1)])
    table.hold(0, "w1", MB)
    table.hold(1, "w2", 2 * MB)
    placed = placement(table, "w1", "w2", "w3")
    assert not placed.spread
    moving, near = placed._moves(2)
    assert moving == pytest.approx(WITHIN_HOST.seconds(MB) + WITHIN_HOST.seconds(2 * MB))
    assert near == pytest.approx({"w1": WITHIN_HOST.seconds(MB), "w2": WITHIN_HOST.seconds(2 * MB)})


def test_across_hosts_a_move_costs_what_its_link_costs() -> None:
    table = Table([(), (), (0, 1)])
    table.hold(0, "a1@A", MB)
    table.hold(1, "b1@B", 2 * MB)
    placed = placement(table, "a1@A", "a2@A", "b1@B", "c1@C")
    assert placed.spread
    moving, near = placed._moves(2)
    # On host C, both inputs cross a link between hosts.
    assert moving == pytest.approx(ACROSS_HOSTS.seconds(MB) + ACROSS_HOSTS.seconds(2 * MB))
    assert "c1@C" not in near
    # On a holder, its input does not move; the other one crosses.
    assert near["a1@A"] == pytest.approx(ACROSS_HOSTS.seconds(MB))
    assert near["b1@B"] == pytest.approx(ACROSS_HOSTS.seconds(2 * MB))
    # Beside a holder, on its host, its input moves within the host.
    assert near["a2@A"] == pytest.approx(ACROSS_HOSTS.seconds(MB) - WITHIN_HOST.seconds(MB))


def test_a_task_whose_data_holder_is_full_goes_to_that_host_first() -> None:
    table = Table([(), (), (0, 1)])
    table.hold(0, "a1@A", MB)
    table.hold(1, "a1@A", MB)
    # The other hosts' workers come first in the order workers were added: a
    # placement blind to hosts would take one of them.
    placed = placement(table, "a1@A", "b1@B", "c1@C", "a2@A", capacity=1)
    placed.mean_duration = 0.05  # long enough not to wait for the holder
    placed.load["a1@A"] = 1
    assert placed.place(2) == "a2@A"
    placed.load["a2@A"] = 1
    assert placed.place(2) in ("b1@B", "c1@C")


def test_hosts_are_forgotten_with_their_workers() -> None:
    placed = placement(Table([()]), "a1@A", "b1@B")
    assert placed.spread
    placed.remove_worker("b1@B")
    assert not placed.spread
    assert placed.on_host == {"A": ["a1@A"]}
    placed.add_worker("b1@B", 1)  # back under the same name
    assert placed.spread
    assert placed.on_host == {"A": ["a1@A"], "B": ["b1@B"]}


def test_unplaced_inputs_of_consumers_lean_towards_where_the_work_is() -> None:
    # Task 2 reads 0 (on host A) and 1 (on host B); its consumer 4 also reads 3, which no
    # worker has yet: it will most likely be made where the work is now, on host B.
    table = Table([(), (), (0, 1), (), (2, 3)])
    table.hold(0, "a1@A", MB)
    table.hold(1, "b1@B", MB)
    placed = placement(table, "a1@A", "b1@B", "b2@B")
    placed.mean_nbytes = MB
    _, near = placed._moves(2)
    assert near["b1@B"] == pytest.approx(near["a1@A"])  # no work anywhere: no lean
    placed.load["b2@B"] = 3
    _, near = placed._moves(2)
    spared = ACROSS_HOSTS.seconds(MB) - WITHIN_HOST.seconds(MB)
    assert near["b1@B"] - near["a1@A"] == pytest.approx(spared)
    assert near["b2@B"] == pytest.approx(
        spared + ACROSS_HOSTS.seconds(MB) - WITHIN_HOST.seconds(MB)
    )


class HostedFake(FakeTransport):
    """The fake transport with its workers on hosts: ``w1@A``, ``w2@A``, ``w3@B``."""

    def __init__(self, **options: Any) -> None:
        super().__init__(workers=3, **options)
        self.names = ["w1@A", "w3@B", "w2@A"]
        self.stores = {name: {} for name in self.names}


def slow_blob(size: int) -> bytes:
    time.sleep(0.02)  # long enough that waiting for its worker costs more than a move
    return b"x" * size


def test_tasks_go_to_their_data_host_through_an_executor() -> None:
    transport = HostedFake(slots=1)
    source = op(slow_blob, label="source")(MB)
    readers = [op(tasks.identity, label=f"reader{i}")(source) for i in range(2)]
    with fake_executor(transport) as ex:
        ex.run(readers)
    where = dict(transport.ran)
    assert where["source"] == "w1@A"
    # One reader runs where the data is; the other beside it, on its host, rather than on
    # host B, which comes first in the transport's order of workers.
    assert {where["reader0"], where["reader1"]} == {"w1@A", "w2@A"}
    assert [(src, dst) for _, src, dst in transport.moves] == [("w1@A", "w2@A")]


# -- placement by what was learned ------------------------------------------------------------


def test_a_task_stays_on_its_data_host_once_moves_across_are_learned_to_be_dear() -> None:
    table = Table([(), (0,)])
    table.hold(0, "a1@A", MB)
    placed = placement(table, "a1@A", "b1@B")
    placed.mean_duration = 0.001
    placed.load["a1@A"] = 3  # 3 ms of work queued there; a move across assumed < 3 ms
    assert ACROSS_HOSTS.seconds(MB) < 0.003
    assert placed.place(1) == "b1@B"
    # Measured: 1 MB across takes 10 ms here (a loaded machine's TCP, a slow network).
    for _ in range(ENOUGH):
        placed.links.observe("a1@A", ("b1@B",), MB, 0.010)
    assert placed.place(1) == "a1@A"


def test_within_a_host_a_learned_cheap_move_spreads_the_work() -> None:
    table = Table([(), (0,)])
    table.hold(0, "w1", MB)
    placed = placement(table, "w1", "w2")
    placed.mean_duration = 0.0005
    placed.load["w1"] = 3  # 1.5 ms queued; 1 MB assumed to take 1.1 ms to move
    assert placed.place(1) == "w2"
    for _ in range(ENOUGH):
        placed.links.observe("w2", ("w1",), MB, 0.005)  # measured: 5 ms
    assert placed.place(1) == "w1"


# -- learned link costs, from a transport to placement -------------------------------------


def dear_across(source: str, worker: str, nbytes: int) -> float:
    """Pretend moves: cheap within a host, 100 MB/s across."""
    same = source.partition("@")[2] == worker.partition("@")[2]
    return (WITHIN_HOST if same else Link(1e-3, 1e8)).seconds(nbytes)


def test_a_transport_that_never_reports_moves_keeps_the_assumed_links() -> None:
    transport = HostedFake(slots=1)
    source = op(slow_blob, label="source")(MB)
    readers = [op(tasks.identity, label=f"reader{i}")(source) for i in range(3)]
    with fake_executor(transport) as ex:
        ex.run(readers)
        assert transport.moves  # inputs moved, and nobody said what it cost
        assert ex.link_costs.within.link is WITHIN_HOST
        assert ex.link_costs.across.link is ACROSS_HOSTS


def joined(a: bytes, b: bytes) -> bytes:
    return a + b


def test_moves_a_transport_reports_are_learned_and_outlive_the_run() -> None:
    transport = FakeTransport(workers=2, slots=1, move_seconds=dear_across)
    transport.names = ["a@A", "b@B"]  # one worker per host: every move crosses
    transport.stores = {name: {} for name in transport.names}
    with fake_executor(transport) as ex:
        for run in range(ENOUGH):
            assert ex.link_costs.across.samples == run  # learned over runs, kept between
            ex.run(op(joined)(op(slow_blob)(MB), op(slow_blob)(MB)))
        assert len(transport.moves) == ENOUGH
        learned = ex.link_costs.across.link
        # 1 MB reported at 1 ms + 10 ms; the latency is still the assumed one (no small
        # move was reported), so the bandwidth takes the rest.
        assert learned.latency == ACROSS_HOSTS.latency
        assert learned.bandwidth == pytest.approx(MB / (0.011 - ACROSS_HOSTS.latency))
        assert ex.link_costs.within.link is WITHIN_HOST


def test_before_any_size_is_known_the_inputs_of_one_consumer_gather() -> None:
    # Four sources, two consumers of two each (W5's shape): once every worker has work,
    # the second input of a consumer joins the first instead of alternating.
    table = Table([(), (), (), (), (0, 1), (2, 3)])
    placed = placement(table, "w1", "w2", capacity=8)

    def send(p: int) -> str:
        worker = placed.place(p)
        assert worker is not None
        table.inflight[p] = Spec(worker)
        placed.load[worker] += 1
        return worker

    first, second = send(0), send(1)
    assert first != second  # a worker idled: the work spreads
    assert send(2) == first  # the shorter queue (equal: the first)
    assert send(3) == first  # with its consumer's other input, one task deeper
    assert placed.load == {"w1": 3, "w2": 1}


def test_a_worker_never_gets_two_tasks_deeper_for_inputs_of_unknown_size() -> None:
    # A source whose consumers' other inputs are all on one busy worker: the pull lasts
    # only while that worker's queue is at most one task longer than the shortest.
    table = Table([(), (), (), (), (0, 3), (1, 3), (2, 3)])
    placed = placement(table, "w1", "w2", capacity=8)
    for p in (0, 1, 2):
        table.inflight[p] = Spec("w1")
    placed.load.update(w1=2, w2=1)
    assert placed.place(3) == "w1"
    placed.load.update(w1=3, w2=1)
    assert placed.place(3) == "w2"


def test_once_a_size_is_known_it_decides_and_an_idle_worker_takes_nothing_extra() -> None:
    table = Table([(), (), (0, 1)])
    table.inflight[0] = Spec("w1")
    placed = placement(table, "w1", "w2", capacity=8)
    placed.load.update(w1=1, w2=0)
    assert placed.place(1) == "w2"  # w2 idles: parallelism first
    placed.load.update(w1=2, w2=1)
    placed.mean_nbytes = 10  # tiny results: a move costs less than a task's wait
    placed.mean_duration = 0.01
    assert placed.place(1) == "w2"


def _tiny_task(*inputs: Any) -> None:
    """A function learned to take microseconds."""


def test_tasks_of_a_function_not_yet_seen_to_finish_are_not_queued_like_tiny_ones() -> None:
    # Thousands of tiny tasks taught the run that tasks take 2 µs: in-order workers may
    # queue a thousand. Then 50 tasks of another function read a result held by w1: were
    # they assumed as quick, all 50 would queue there, behind each other, while w2 idles.
    table = Table([(), *[(0,)] * 50])
    table.nodes[0] = _Node(_tiny_task)
    table.hold(0, "w1", 8)
    placed = Placement(table)  # type: ignore[arg-type]
    placed.in_order = True
    for worker in ("w1", "w2"):
        placed.add_worker(worker, 1025)
    for _ in range(200):
        placed.learn(_tiny_task, 2e-6, 8)
    assert placed.room["w1"] > 500  # tiny tasks still queue deep
    for p in range(1, 51):
        worker = placed.place(p)
        if worker is None:  # no room for it anywhere now: it waits for a report
            break
        placed.load[worker] += 1
    # As at the start of a run: a few queued on each worker, the rest kept back.
    assert 2 <= placed.load["w2"] <= placed.load["w1"] <= 3
    # Once one has finished, its function's own durations decide.
    placed.learn(_task, 2e-6, 8)
    assert placed.expected(1) == (pytest.approx(2e-6), {"w1": 1001, "w2": 1001})


def _refuses(x: int) -> int:
    raise ValueError(x)


@pytest.mark.timeout(30)
def test_tasks_that_fail_teach_placement_how_long_their_function_takes() -> None:
    """Failures take time too: until a task of a function is learned, in-order workers
    queue few of its tasks (it may be long), so a function that only ever fails quickly
    would cost a round trip every few tasks."""
    transport = FakeTransport(workers=2, slots=1025)
    with fake_executor(transport) as ex:
        results = ex.run([op(_refuses)(i) for i in range(200)], throw=False)
    assert all(isinstance(r.error, ValueError) for r in results)
    # Unknown, a task is assumed to take 1 ms: 3 per worker at most in one hand-out.
    assert max(len(batch) for batch in transport.batches) > 6


def _link_ahead(placed: Placement, table: Table) -> str | None:
    """Offer task 1 (its input, task 0, being made on w1) as dispatch does, ahead of it."""
    table.state[1] = READY
    worker = placed.place_ahead(1)
    if worker is None:
        table.state[1] = WAITING
    return worker


@pytest.mark.parametrize("anywhere", [False, True])
def test_a_link_refused_room_ahead_of_its_input_is_offered_again_once_half_is_free(
    anywhere: bool,
) -> None:
    # A chain longer than its worker's room: the next link waits for room there, not for
    # the report of its input, the last link sent (which comes once all before it ran).
    table = Table([(), (0,)])
    table.state[0] = RUNNING
    table.inflight[0] = Spec("w1")
    placed = placement(table, "w1", "w2", capacity=8)
    placed.in_order = not anywhere
    placed.anywhere = anywhere
    placed.durations[_task.__code__] = placed.mean_duration = 0.001
    placed.mean_nbytes = 10 * MB  # (on a transport that accepts pending inputs: stay)
    placed.room.update(w1=8, w2=8)
    placed.load.update(w1=8, w2=0)
    assert _link_ahead(placed, table) is None
    for load in (8, 7, 5):  # an idle w2 is no room for it: its input is on w1
        placed.load["w1"] = load
        placed.unpark()
        assert not table.ready
    placed.load["w1"] = 4
    placed.unpark()
    assert table.ready == [1]
    assert table.state[1] == READY
    assert _link_ahead(placed, table) == "w1"
    # Readied by its input's report meanwhile, a parked link is not offered twice.
    placed.load["w1"] = 8
    table.ready.clear()
    assert _link_ahead(placed, table) is None
    table.waiting[1] = 0
    table.state[1] = READY
    placed.load["w1"] = 0
    placed.unpark()
    assert not table.ready
    assert not placed.parked


def test_a_link_sent_ahead_stays_with_the_worker_making_its_input() -> None:
    # W7's shape on a transport that accepts pending inputs: a link sent ahead of its
    # input starts nowhere before that input is made, so a shorter queue elsewhere is no
    # reason to move the input there (each link of a chain moved 10 MiB).
    table = Table([(), (0,)])
    table.inflight[0] = Spec("w1")
    placed = placement(table, "w1", "w2", capacity=8)
    placed.anywhere = True
    placed.mean_nbytes = 10 * MB
    placed.mean_duration = 0.005
    placed.load.update(w1=3, w2=0)
    assert placed.place(1) == "w1"
    # Its worker full, the link waits for room there rather than move its input.
    placed.load.update(w1=8, w2=0)
    assert placed.place(1) is None
    # An input already made and held weighs as before: an idle worker takes the task
    # when the wait behind a long queue outweighs the move.
    table.hold(0, "w1", 10 * MB)
    del table.inflight[0]
    placed.load.update(w1=7, w2=0)
    assert placed.place(1) == "w2"


def test_a_run_not_yet_attached_reads_assumed_links_that_learn_nothing() -> None:
    # Every run shares them until its router gives it the executor's: a sample taken
    # into them would change every later run's placement.
    placed = Placement(Table([()]))  # type: ignore[arg-type]
    placed.links.observe("a1@A", ("b1@B",), MB, 0.010)
    assert placed.links.across.samples == 0
    assert placed.links.across.link is placed.links.across.assumed
