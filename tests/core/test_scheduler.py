"""The scheduler on the in-memory fake transport: placement, release, faults."""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import pytest

from dispatcher import CollectNode, DataNode, DependencyError, Op, WorkerLostError, hookimpl, op
from dispatcher.testing import FakeTransport, Recorder, _fake, fake_executor, tasks
from dispatcher.transport import Capabilities, TaskSpec


class MostHeld:
    """An observer: the most results the transport's workers held at once."""

    def __init__(self, transport: FakeTransport) -> None:
        self.transport = transport
        self.most = 0

    @hookimpl
    def dispatcher_task_finished(self) -> None:
        self.most = max(self.most, self.transport.held())


def blob(size: int) -> bytes:
    return b"x" * size


def size_of(data: bytes, extra: int = 0) -> int:
    return len(data) + extra


def both_sizes(first: bytes, second: bytes) -> int:
    return len(first) + len(second)


def test_consumer_runs_where_its_big_input_is() -> None:
    transport = FakeTransport(workers=3)
    big = op(blob, label="big")(1_000_000)
    small = op(blob, label="small")(10)
    consumer = op(size_of, label="consumer")(big, len(b"") + 0)
    with fake_executor(transport) as ex:
        assert ex.run([consumer, Op(size_of, small)]) == [1_000_000, 10]
    where = dict(transport.ran)
    assert where["consumer"] == where["big"]
    assert not [m for m in transport.moves if m[1] == where["big"]]


def test_inputs_move_when_they_must() -> None:
    transport = FakeTransport(workers=2)
    left = op(blob, label="left")(100)
    right = op(blob, label="right")(200)
    both = op(tasks.add, label="both")(left, right)
    with fake_executor(transport) as ex:
        assert len(ex.run(both)) == 300
    where = dict(transport.ran)
    assert where["left"] != where["right"]
    # The larger input stays put; the smaller one travels.
    assert where["both"] == where["right"]
    assert len(transport.moves) == 1


def test_results_are_released_as_soon_as_nothing_needs_them() -> None:
    transport = FakeTransport(workers=2)
    node = Op(tasks.inc, 0)
    watch = MostHeld(transport)
    for _ in range(50):
        node = Op(tasks.inc, node)
    with fake_executor(transport) as ex:
        assert ex.run(node, plugins=[watch]) == 51
        assert watch.most <= 2
        assert transport.held() == 0  # nothing stays behind after the run


def test_targets_are_freed_on_workers_after_delivery() -> None:
    transport = FakeTransport(workers=2)
    a = Op(tasks.inc, 1)
    b = Op(tasks.inc, a)
    with fake_executor(transport) as ex:
        assert ex.run([a, b]) == [2, 3]
    assert transport.held() == 0


def test_lost_worker_results_are_recomputed_from_lineage() -> None:
    transport = FakeTransport(workers=1)
    recorder = Recorder()
    first = op(tasks.inc, label="first")(1)
    second = op(tasks.inc, label="second")(first)
    third = op(tasks.inc, label="third")(second)
    transport.kill_on("third")  # the worker holding `second` (and `first`'s lineage) dies
    with fake_executor(transport) as ex:
        assert ex.run(third, plugins=[recorder]) == 4
    labels = [label for label, _ in transport.ran]
    assert labels == ["first", "second", "second", "third"] or labels.count("second") == 2
    retried = [e[1].label for e in recorder.of("retried")]
    assert "third" in retried
    assert "second" in retried


class LosesItsFirstBatch(FakeTransport):
    """Its one worker takes the first batch of tasks, queues them, and dies at once."""

    def __init__(self, running: int | None = None) -> None:
        super().__init__(workers=1, slots=4)
        self.running = running
        """Which task of the batch the transport says was running (``None``: unknown)."""
        self.lost_batch: list[str] = []

    def submit(self, tasks: Sequence[TaskSpec]) -> None:
        if self.lost_batch:
            super().submit(tasks)
            return
        self.lost_batch = [spec.label for spec in tasks]
        assert self._events is not None
        running = None if self.running is None else [tasks[self.running].key]
        self._events.worker_lost("fake-0", "killed from outside", running)
        self._events.worker_added("fake-0", self.slots)


@pytest.mark.parametrize("running", [None, 1], ids=["in order", "named by the transport"])
def test_a_loss_charges_only_the_task_that_was_running(running: int | None) -> None:
    transport = LosesItsFirstBatch(running)
    nodes = [op(tasks.inc, label=f"t{i}")(i) for i in range(3)]
    with fake_executor(transport, retries=0) as ex:
        results = ex.run(nodes, throw=False)
    assert len(transport.lost_batch) >= 2  # queued together on the worker that died
    started = transport.lost_batch[running or 0]
    for node, result in zip(nodes, results, strict=True):
        if node.label == started:
            assert isinstance(result.error, WorkerLostError)
            assert "killed from outside" in str(result.error)
        else:  # queued behind it, never started: run again, not failed
            assert result.ok, result.error
            assert result.value == int(node.label[1:]) + 1


def test_released_ancestors_are_recomputed_too() -> None:
    transport = FakeTransport(workers=1)
    a = op(tasks.inc, label="a")(0)
    b = op(tasks.inc, label="b")(a)  # after b runs, a is released
    c = op(tasks.inc, label="c")(b)
    transport.kill_on("c")
    with fake_executor(transport) as ex:
        assert ex.run(c) == 3
    labels = [label for label, _ in transport.ran]
    # b was lost with the worker; a had been released, so it runs again for b.
    assert labels.count("b") == 2
    assert labels.count("a") == 2


def test_worker_loss_beyond_retries_names_the_node() -> None:
    transport = FakeTransport(workers=2)
    doomed = op(tasks.inc, label="doomed")(1)
    transport.kill_on("doomed", times=5)
    with fake_executor(transport, retries=2) as ex, pytest.raises(WorkerLostError) as info:
        ex.run(doomed)
    assert info.value.node is doomed
    assert "doomed" in str(info.value)
    assert [label for label, _ in transport.ran] == []


def test_retries_are_shared_between_loss_and_retry_on(tmp_path: object) -> None:
    transport = FakeTransport(workers=1)
    log = str(tmp_path)
    node = op(tasks.flaky, label="shaky")(log, "shaky", 1, "ok")
    transport.kill_on("shaky", times=1)
    recorder = Recorder()
    with fake_executor(transport, retries=1, retry_on=ValueError) as ex, pytest.raises(ValueError):
        ex.run(node, plugins=[recorder])
    assert [e[3] for e in recorder.of("retried")] == [2]


def test_fail_fast_cancels_and_frees() -> None:
    transport = FakeTransport(workers=2, slots=4)
    keep = Op(tasks.inc, 1)
    bad = Op(tasks.fail, "boom")
    with fake_executor(transport) as ex:
        with pytest.raises(ValueError):
            ex.run([keep, Op(tasks.inc, keep), bad, Op(tasks.inc, bad)])
        assert transport.held() == 0


def test_inputs_lost_is_not_an_attempt() -> None:
    transport = FakeTransport(workers=2)
    a = op(blob, label="a")(10)
    b = op(blob, label="b")(100)
    both = op(tasks.add, label="both")(a, b)

    original = transport._run
    dropped = False

    def drop_a_then_run(spec):  # type: ignore[no-untyped-def]
        nonlocal dropped
        if spec.label == "both" and not dropped:
            dropped = True
            for store in transport.stores.values():
                for key in list(store):
                    if len(store[key]) == 10:
                        del store[key]
        original(spec)

    transport._run = drop_a_then_run  # type: ignore[method-assign]
    with fake_executor(transport, retries=0) as ex:
        assert len(ex.run(both)) == 110
    assert [label for label, _ in transport.ran].count("a") == 2


def test_constants_live_with_the_caller() -> None:
    transport = FakeTransport(workers=2)
    data = DataNode(b"payload")
    with fake_executor(transport) as ex:
        assert ex.run(Op(len, data)) == 7
        assert ex.run(data) == b"payload"
    assert transport.moves == []


def test_executor_close_closes_transport() -> None:
    transport = FakeTransport()
    ex = fake_executor(transport)
    ex.close()
    assert transport.closed


def test_task_keys_are_unique_across_executors() -> None:
    # Workers can outlive an executor (MPI ranks serve every executor of a job): a late
    # report from an old executor's task must never match a key of a new one.
    keys: list[int] = []

    class Spy(FakeTransport):
        def submit(self, tasks):  # type: ignore[no-untyped-def]
            keys.extend(spec.key for spec in tasks)
            super().submit(tasks)

    for _ in range(2):
        with fake_executor(Spy()) as ex:
            assert ex.run(Op(tasks.inc, 1)) == 2
    assert len(keys) == len(set(keys)) == 2


def _only_inc(func: object) -> bool:
    return func is tasks.inc


def test_tasks_run_in_the_caller_mix_with_submitted_ones() -> None:
    # inc runs in the caller; add goes to the workers, so values cross both ways.
    transport = FakeTransport(workers=2, in_caller=_only_inc)
    recorder = Recorder()
    a = op(tasks.inc, label="a")(1)  # caller: 2
    b = op(tasks.add, label="b")(a, 10)  # worker, with a shipped inline: 12
    c = op(tasks.inc, label="c")(b)  # its input is on a worker: submitted, 13
    d = op(tasks.inc, label="d")(a)  # caller again: 3
    with fake_executor(transport) as ex:
        assert ex.run([c, d], plugins=[recorder]) == [13, 3]
    assert sorted(label for label, _ in transport.ran) == ["b", "c"]
    assert sorted(e[1].label for e in recorder.of("finished")) == ["a", "b", "c", "d"]
    assert {e[2] for e in recorder.of("finished") if e[1].label in ("a", "d")} == {"main"}
    assert transport.held() == 0


def test_results_made_in_the_caller_are_released_and_recomputed_when_lost() -> None:
    transport = FakeTransport(workers=1, in_caller=_only_inc)
    a = op(tasks.inc, label="a")(0)  # in the caller
    b = op(tasks.add, label="b")(a, 1)  # on the worker; a is released after it
    c = op(tasks.add, label="c")(b, 1)  # the worker dies as c starts: b is lost
    transport.kill_on("c")
    recorder = Recorder()
    with fake_executor(transport) as ex:
        assert ex.run(c, plugins=[recorder]) == 3
    ran_a = [e for e in recorder.of("finished") if e[1] is a]
    assert len(ran_a) == 2  # b's lineage reaches back to a, released in the caller
    assert [label for label, _ in transport.ran].count("b") == 2


def test_a_failure_in_the_caller_is_retried_then_fails_fast(tmp_path: object) -> None:
    log = str(tmp_path)
    transport = FakeTransport(workers=1, in_caller=lambda func: func is tasks.flaky)
    flaky = op(tasks.flaky, label="flaky")(log, "flaky", 1, "ok")
    with fake_executor(transport, retry_on=ValueError, retries=1) as ex:
        assert ex.run(flaky) == "ok"
    hopeless = op(tasks.flaky, label="hopeless")(log, "hopeless", 5, "never")
    later = op(tasks.add, label="later")(hopeless, 1)
    with (
        fake_executor(transport, retry_on=ValueError, retries=1) as ex,
        pytest.raises(ValueError),
    ):
        ex.run(later)
    assert tasks.calls(log, "hopeless") == 2
    assert "later" not in [label for label, _ in transport.ran]


def _chain(length: int, first: object = None) -> list[Op]:
    nodes = [op(tasks.inc, label="link0")(0) if first is None else first]
    for i in range(1, length):
        nodes.append(op(tasks.inc, label=f"link{i}")(nodes[-1]))
    return nodes  # type: ignore[return-value]


def test_a_chain_is_sent_ahead_to_the_worker_computing_its_input() -> None:
    transport = FakeTransport(workers=2, slots=8)
    links = _chain(5)
    with fake_executor(transport) as ex:
        assert ex.run(links[-1]) == 5
    # Each link queued behind the one it needs, on the same worker: two messages (the
    # queue is short until tasks have shown how long they take).
    assert transport.batches == [["link0", "link1"], ["link2", "link3", "link4"]]
    assert len({worker for _, worker in transport.ran}) == 1


def test_in_order_a_task_goes_ahead_only_behind_its_inputs_on_one_worker() -> None:
    transport = FakeTransport(workers=2, slots=8)
    left = op(blob, label="left")(100)
    right = op(blob, label="right")(200)
    both = op(tasks.add, label="both")(left, right)  # its inputs go to two workers
    twice = op(tasks.double, label="twice")(right)
    with fake_executor(transport) as ex:
        assert ex.run([both, twice]) == [b"x" * 300, b"x" * 400]
    where = dict(transport.ran)
    assert where["left"] != where["right"]
    # Queued behind "right" on its worker, "twice" went without waiting for a report;
    # "both" could not queue behind inputs on two workers: it waited for them.
    assert transport.batches[0] == ["left", "right", "twice"]
    assert where["twice"] == where["right"]


def test_what_was_sent_ahead_of_a_failure_is_skipped_not_stalled() -> None:
    transport = FakeTransport(workers=1, slots=8)
    links = _chain(4, first=op(tasks.fail, label="broken")("no"))
    with fake_executor(transport) as ex:
        results = ex.run(links, throw=False)
    assert isinstance(results[0].error, ValueError)
    for result in results[1:]:
        assert isinstance(result.error, DependencyError)
        assert result.error.node is links[0]
    assert transport.batches == [["broken", "link1"]]
    assert len(transport.cancelled) == 1  # link1, sent ahead; the others never left
    assert [label for label, _ in transport.ran] == ["broken"]


def test_inputs_used_last_are_dropped_on_the_worker_at_once() -> None:
    transport = FakeTransport(workers=1, slots=16)
    watch = MostHeld(transport)
    links = _chain(12)
    with fake_executor(transport) as ex:
        assert ex.run(links[-1], plugins=[watch]) == 12
    assert transport.batches[1] == [f"link{i}" for i in range(2, 12)]
    # Ten ran before their first report: only dropping inputs as they went kept it small.
    assert watch.most <= 2


def test_inputs_a_worker_dropped_itself_are_not_freed_there_again() -> None:
    # Each link read its input last: its worker dropped it on reading it, so telling the
    # worker to free it too would be a message per batch for nothing.
    transport = FakeTransport(workers=1)
    links = _chain(20)
    with fake_executor(transport) as ex:
        assert ex.run(links[-1]) == 20
    assert transport.held() == 0
    assert len(transport.freed) == 1  # only the target, once delivered


def test_long_tasks_get_short_queues_and_tiny_ones_long_queues() -> None:
    sleepy = [op(tasks.sleep_then, label=f"nap{i}")(0.004, i) for i in range(6)]
    transport = FakeTransport(workers=1, slots=17)
    with fake_executor(transport) as ex:
        assert ex.run(sleepy) == list(range(6))
    assert max(len(batch) for batch in transport.batches) == 2  # the running one + 1

    tiny = [op(tasks.inc, label=f"tiny{i}")(i) for i in range(60)]
    transport = FakeTransport(workers=1, slots=17)
    with fake_executor(transport) as ex:
        assert ex.run(tiny) == list(range(1, 61))
    assert len(transport.batches[0]) == 2  # nothing known yet
    assert max(len(batch) for batch in transport.batches) == 17


def test_tiny_tasks_stay_with_their_data_and_long_ones_spread() -> None:
    transport = FakeTransport(workers=2, slots=8)
    source = op(tasks.inc, label="source")(0)
    tiny = [op(tasks.add, label=f"tiny{i}")(source, i) for i in range(4)]
    with fake_executor(transport) as ex:
        ex.run(tiny)
    where = dict(transport.ran)
    assert {where[f"tiny{i}"] for i in range(4)} == {where["source"]}

    transport = FakeTransport(workers=2, slots=8)
    source = op(tasks.sleep_then, label="source")(0.005, 0)
    long = [op(tasks.sleep_then, label=f"long{i}")(0.005, source) for i in range(4)]
    with fake_executor(transport) as ex:
        ex.run(long)
    where = dict(transport.ran)
    assert len({where[f"long{i}"] for i in range(4)}) == 2


def test_tiny_tasks_wait_for_room_where_their_data_is_rather_than_move(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The worker holding the input has room for two tasks at a time; a move costs far
    # more than waiting behind two tiny tasks, so the other worker gets none. (Each call
    # takes 1 µs by the transport's clock: on a loaded machine, one preempted call
    # measured by the real clock is no longer tiny.)
    clock = itertools.count()
    monkeypatch.setattr(_fake, "perf_counter", lambda: next(clock) * 1e-6)
    transport = FakeTransport(workers=2, slots=2)
    source = op(tasks.inc, label="source")(0)
    tiny = [op(tasks.add, label=f"tiny{i}")(source, i) for i in range(8)]
    with fake_executor(transport) as ex:
        assert ex.run(tiny) == [1 + i for i in range(8)]
    where = dict(transport.ran)
    assert {where[f"tiny{i}"] for i in range(8)} == {where["source"]}
    assert transport.moves == []


class BusyAfterSource(FakeTransport):
    """The worker that runs ``source`` then reports no capacity: it is still running
    abandoned work, yet keeps serving the results it holds. (Not in order: nothing is
    sent ahead to it with ``source``.)"""

    capabilities = Capabilities(survives_worker_loss=True)

    def _run(self, spec: TaskSpec) -> None:
        super()._run(spec)
        if spec.label == "source":
            assert self._events is not None
            self._events.worker_added(spec.worker, 0)


def test_a_worker_without_capacity_gets_no_task_but_serves_its_results() -> None:
    transport = BusyAfterSource(workers=2, slots=2)
    source = op(tasks.inc, label="source")(0)
    tiny = [op(tasks.add, label=f"tiny{i}")(source, i) for i in range(8)]
    with fake_executor(transport) as ex:
        assert ex.run(tiny) == [1 + i for i in range(8)]
    where = dict(transport.ran)
    assert where["source"] not in {where[f"tiny{i}"] for i in range(8)}
    assert transport.moves  # its result was read from there


def test_the_producers_of_one_consumers_inputs_gather_on_one_worker() -> None:
    transport = FakeTransport(workers=2, slots=4)
    blobs = [op(blob, label=f"blob{i}")(100_000) for i in range(16)]
    pairs = [op(both_sizes, label=f"pair{i}")(blobs[2 * i], blobs[2 * i + 1]) for i in range(8)]
    with fake_executor(transport) as ex:
        assert ex.run(pairs) == [200_000] * 8
    where = dict(transport.ran)
    split = [i for i in range(8) if where[f"blob{2 * i}"] != where[f"blob{2 * i + 1}"]]
    # Spread alternately, all eight would be split; only pairs placed before any size
    # was known, or when a worker's queue was full, may be.
    assert len(split) <= 3, split
    assert len(transport.moves) == len(split)
    assert len(set(where.values())) == 2  # both workers were used


def test_long_tasks_do_not_pile_up_to_meet_their_siblings() -> None:
    # Twelve 4 ms tasks feed one consumer; gathering them saves a tiny move, not worth
    # queueing behind each other while the other worker idles.
    transport = FakeTransport(workers=2, slots=17)
    naps = [op(tasks.sleep_then, label=f"nap{i}")(0.004, i) for i in range(12)]
    with fake_executor(transport) as ex:
        assert ex.run(CollectNode(naps)) == list(range(12))
    assert max(len(batch) for batch in transport.batches) <= 4  # 1 running + 1 queued, x2
    where = [worker for label, worker in transport.ran if label.startswith("nap")]
    assert abs(where.count("fake-0") - where.count("fake-1")) <= 2


def test_a_retried_task_gets_back_the_input_it_let_its_worker_drop(tmp_path: object) -> None:
    log = str(tmp_path)
    transport = FakeTransport(workers=1, slots=4)
    source = op(tasks.inc, label="source")(1)
    flaky = op(tasks.flaky, label="flaky")(log, "flaky", 1, source)  # fails once
    recorder = Recorder()
    with fake_executor(transport, retry_on=ValueError, retries=2) as ex:
        assert ex.run(flaky, plugins=[recorder]) == 2
    # The first attempt let the worker drop `source`; the second needed it: recomputed.
    assert [label for label, _ in transport.ran].count("source") == 2
    assert transport.held() == 0


class PendingInputs(FakeTransport):
    """A transport that takes tasks whose inputs are still being computed anywhere (the
    fake runs a batch in order, so they are made by the time their reader runs)."""

    capabilities = Capabilities(survives_worker_loss=True, accepts_pending_inputs=True)


def test_tasks_whose_inputs_are_being_computed_are_sent_with_them() -> None:
    transport = PendingInputs(workers=2, slots=8)
    links = _chain(5)
    left = op(blob, label="left")(100)
    right = op(blob, label="right")(200)
    both = op(tasks.add, label="both")(left, right)
    with fake_executor(transport) as ex:
        assert ex.run([links[-1], both]) == [5, b"x" * 300]
    # The chain waited for no report: each link went with the one before it. "both",
    # missing two inputs when they were sent, waited for them.
    first = transport.batches[0]
    assert first[: len(links)] == [link.label for link in links]
    assert "both" not in first
    assert transport.batches[1:] == [["both"]]


def test_what_was_sent_with_a_failed_input_is_skipped() -> None:
    transport = PendingInputs(workers=2, slots=8)
    links = _chain(4, first=op(tasks.fail, label="broken")("no"))
    recorder = Recorder()
    with fake_executor(transport) as ex:
        results = ex.run(links, throw=False, plugins=[recorder])
    assert isinstance(results[0].error, ValueError)
    for result in results[1:]:
        assert isinstance(result.error, DependencyError)
    assert transport.batches == [["broken", "link1", "link2", "link3"]]
    assert len(transport.cancelled) == 3  # all sent with it; none reported done
    # They never started, so they were never told started.
    assert [e[1].label for e in recorder.of("started")] == ["broken"]


def _hooks(recorder: Recorder) -> list[tuple[str, str]]:
    return [(e[0], e[1].label) for e in recorder.events if e[0] in ("started", "finished")]


def test_a_task_sent_ahead_is_told_started_once_its_inputs_are_made() -> None:
    transport = PendingInputs(workers=2, slots=8)
    links = _chain(5)
    recorder = Recorder()
    with fake_executor(transport) as ex:
        assert ex.run(links[-1], plugins=[recorder]) == 5
    assert len(transport.batches) == 1  # all sent at once, each ahead of its input
    assert _hooks(recorder) == [(k, f"link{i}") for i in range(5) for k in ("started", "finished")]


def test_what_was_sent_with_a_failed_input_waits_for_its_retry(tmp_path: object) -> None:
    transport = PendingInputs(workers=2, slots=8)
    first = op(tasks.flaky, label="flaky")(str(tmp_path), "flaky", 1, 0)  # fails once
    links = _chain(4, first=first)
    recorder = Recorder()
    with fake_executor(transport, retry_on=ValueError, retries=1) as ex:
        assert ex.run(links[-1], plugins=[recorder]) == 3
    # Sent with the first attempt, the links lost their input, went back to wait for it,
    # and were sent again with the retry: each ran once, after it.
    assert transport.batches == [["flaky", "link1", "link2", "link3"]] * 2
    assert [label for label, _ in transport.ran] == ["flaky", "flaky", "link1", "link2", "link3"]
    assert [e[1].label for e in recorder.of("started")] == [
        "flaky",
        "flaky",
        "link1",
        "link2",
        "link3",
    ]
    assert [e[3] for e in recorder.of("retried")] == [2]


class ReportsInReverse(PendingInputs):
    """Reports each batch's outcomes in reverse order, as a cluster may: a task's report
    can overtake its input's."""

    def submit(self, tasks: Sequence[TaskSpec]) -> None:
        events = self._events
        assert events is not None
        held: list[tuple[str, tuple[object, ...]]] = []

        class Holds:
            def __getattr__(self, name: str) -> object:
                return lambda *args: held.append((name, args))

        self._events = Holds()  # type: ignore[assignment]
        try:
            super().submit(tasks)
        finally:
            self._events = events
        for name, args in reversed(held):
            getattr(events, name)(*args)


def test_a_task_reported_before_its_inputs_is_told_started_at_its_own_report() -> None:
    transport = ReportsInReverse(workers=2, slots=8)
    links = _chain(4)
    recorder = Recorder()
    with fake_executor(transport) as ex:
        assert ex.run(links[-1], plugins=[recorder]) == 4
    assert len(transport.batches) == 1
    told = [("started", "link0")]
    for i in (3, 2, 1):
        told += [("started", f"link{i}"), ("finished", f"link{i}")]
    assert _hooks(recorder) == [*told, ("finished", "link0")]
