"""Link costs learned from timed moves: the fit, the reports that feed it, and placement
choosing by what it learned."""

from __future__ import annotations

import pickle
import random
import threading
from typing import Any

import pytest

from dispatcher._links import (
    ACROSS_HOSTS,
    ENOUGH,
    SMALL_MOVE,
    WITHIN_HOST,
    Link,
    LinkCosts,
    LinkEstimate,
)
from dispatcher._report import ReportWriter
from dispatcher._report_html import render
from dispatcher.remote import (
    Done,
    FunctionShipper,
    InFlight,
    Reports,
    Run,
    Stop,
    TaskRunner,
    dumps,
    from_wire,
    task_record,
    to_wire,
)
from dispatcher.transport import SHAPE_POSITIONAL, Capabilities, TaskSpec

pytestmark = pytest.mark.timeout(60)

MB = 1_000_000
TRUE = Link(latency=50e-6, bandwidth=0.2e9)


def sizes(n: int, rng: random.Random) -> list[int]:
    """Fetch sizes from a few bytes to a few MB, small and large alike."""
    return [int(10 ** rng.uniform(1, 6.7)) for _ in range(n)]


# -- the fit ----------------------------------------------------------------------------


def test_the_fit_converges_on_the_link_its_samples_came_from() -> None:
    rng = random.Random(1)
    estimate = LinkEstimate(ACROSS_HOSTS)
    for nbytes in sizes(200, rng):
        estimate.add(nbytes, TRUE.seconds(nbytes) * rng.uniform(0.9, 1.1))
    assert estimate.measured
    assert estimate.link.latency == pytest.approx(TRUE.latency, rel=0.15)
    assert estimate.link.bandwidth == pytest.approx(TRUE.bandwidth, rel=0.1)


def test_the_fit_ignores_stalls_among_its_samples() -> None:
    rng = random.Random(2)
    estimate = LinkEstimate(ACROSS_HOSTS)
    for i, nbytes in enumerate(sizes(300, rng)):
        seconds = TRUE.seconds(nbytes)
        if i % 5 == 0:  # one fetch in five held up a hundredfold (a collection, a busy core)
            seconds *= 100
        estimate.add(nbytes, seconds)
    assert estimate.link.latency == pytest.approx(TRUE.latency, rel=0.15)
    assert estimate.link.bandwidth == pytest.approx(TRUE.bandwidth, rel=0.15)


def test_the_fit_follows_a_link_that_changed() -> None:
    estimate = LinkEstimate(ACROSS_HOSTS)
    for _ in range(50):
        estimate.add(MB, TRUE.seconds(MB))
    slower = Link(latency=TRUE.latency, bandwidth=TRUE.bandwidth / 4)
    for _ in range(50):
        estimate.add(MB, slower.seconds(MB))
    assert estimate.link.bandwidth == pytest.approx(slower.bandwidth, rel=0.05)


def test_until_enough_samples_of_a_kind_that_half_stays_assumed() -> None:
    estimate = LinkEstimate(WITHIN_HOST)
    for _ in range(ENOUGH - 1):
        estimate.add(MB, TRUE.seconds(MB))
        estimate.add(100, TRUE.seconds(100))
    assert estimate.link is WITHIN_HOST
    assert not estimate.measured
    # Enough large ones: the bandwidth is measured, the latency still assumed.
    estimate.add(MB, TRUE.seconds(MB))
    assert estimate.link.latency == WITHIN_HOST.latency
    assert estimate.link.bandwidth == pytest.approx(MB / (TRUE.seconds(MB) - WITHIN_HOST.latency))
    # Enough small ones too: the latency is measured.
    estimate.add(SMALL_MOVE - 1, TRUE.seconds(100))
    assert estimate.link.latency == pytest.approx(TRUE.latency, rel=0.01)
    estimate.forget()
    assert estimate.link is WITHIN_HOST


def test_a_sample_from_a_broken_clock_is_dropped_and_no_fit_leaves_its_bounds() -> None:
    estimate = LinkEstimate(WITHIN_HOST)
    for seconds in (-1.0, float("nan")):
        estimate.add(MB, seconds)
    assert estimate.samples == 0
    for _ in range(ENOUGH):
        estimate.add(MB, 0.0)  # faster than the clock could tell
        estimate.add(0, 0.0)
    assert estimate.link.latency > 0
    assert 0 < estimate.link.bandwidth < float("inf")


def test_moves_count_for_the_class_of_link_they_took() -> None:
    links = LinkCosts()
    for _ in range(ENOUGH):
        links.observe("a1@A", ("a2@A",), MB, 0.001)  # within host A
        links.observe("a1@A", ("b1@B", "c1@C"), MB, 0.1)  # across, from two hosts
        links.observe("a1@A", ("a2@A", "b1@B"), MB, 1.0)  # both classes: left out
    assert links.within.samples == ENOUGH
    assert links.across.samples == ENOUGH
    assert links.within.link.bandwidth > 10 * links.across.link.bandwidth
    summary = links.summary()
    assert summary["within a host"][2] == ENOUGH
    assert summary["across hosts"][1] == pytest.approx(links.across.link.bandwidth)
    # Switched off, it learns nothing more.
    links.forget()
    links.learning = False
    links.observe("a1@A", ("b1@B",), MB, 0.1)
    assert links.across.samples == 0
    assert links.summary()["across hosts"] == (
        ACROSS_HOSTS.latency,
        ACROSS_HOSTS.bandwidth,
        0,
    )


def test_the_report_shows_the_links_placement_used(tmp_path: Any) -> None:
    links = LinkCosts()
    for _ in range(ENOUGH):
        links.observe("a1@A", ("b1@B",), MB, 0.01)
    writer = ReportWriter(tmp_path / "run.html")

    class Executor:
        name = "pretend"
        capabilities = Capabilities(separate_processes=True)
        link_costs = links

    graph: Any = []
    writer.dispatcher_run_started(graph, Executor())  # type: ignore[arg-type]
    writer.dispatcher_run_finished(None)
    assert writer.record is not None
    assert writer.record.links == links.summary()
    page = render(writer.record)
    assert "<h2>Links</h2>" in page
    assert f"measured, {ENOUGH} fetches" in page
    assert "assumed" in page  # within a host: nothing measured


# -- the kit: a worker's timed fetches reach the sink -----------------------------------------


class Fetching(TaskRunner):
    """A worker whose inputs come from 'rank 7', timed at 2 ms."""

    def __init__(self) -> None:
        super().__init__()
        self.sent: list[Any] = []

    def send(self, message: Any) -> None:
        self.sent.append(from_wire(pickle.loads(pickle.dumps(to_wire(message), protocol=5))))

    def remote_inputs(self, deps: tuple[int, ...], remote: Any) -> dict[int, Any]:
        values = {key: b"x" * 1000 for key in deps}
        self.moved((7,), 1000 * len(deps), 0.002)
        return values


class Sink:
    def __init__(self) -> None:
        self.moves: list[tuple[str, Any]] = []
        self.finished: list[int] = []

    def task_finished(self, key: int, worker: str, *args: Any) -> None:
        self.finished.append(key)

    def inputs_moved(self, worker: str, moves: Any) -> None:
        self.moves.append((worker, moves))


def serve(runner: TaskRunner, specs: list[tuple[TaskSpec, Any]]) -> None:
    shipper = FunctionShipper(dumps)
    records = []
    for s, remote in specs:
        token, define = shipper.ship("w", s)
        if define is not None:
            runner.receive(define)
        records.append(task_record(s, token, None, remote))
    runner.receive(Run(records))
    runner.receive(Stop())
    thread = threading.Thread(target=runner.serve)
    thread.start()
    thread.join(10)
    assert not thread.is_alive()


def count(*values: Any) -> int:
    return len(values)


def a_spec(key: int, deps: tuple[int, ...]) -> TaskSpec:
    return TaskSpec(
        key, f"t{key}", count, (), None, SHAPE_POSITIONAL, deps, None, None, "w", None, False, 1
    )


def test_a_worker_reports_its_timed_fetches_with_its_completions() -> None:
    runner = Fetching()
    serve(runner, [(a_spec(1, ()), None), (a_spec(2, (10, 11)), "fetch"), (a_spec(3, ()), None)])
    done = [m for m in runner.sent if type(m) is Done]
    assert [m.moves for m in done if m.moves] == [[((7,), 2000, 0.002)]]
    sink = Sink()
    inflight = InFlight()
    for key in (1, 2, 3):
        inflight.add(a_spec(key, ()))
    reports = Reports(inflight, sink, None, lambda w, k: None, lambda rank: f"rank-{rank}@B")  # type: ignore[arg-type]
    for message in done:
        reports.handle("w", message)
    assert sink.finished == [1, 2, 3]
    assert sink.moves == [("w", [(("rank-7@B",), 2000, 0.002)])]


def test_a_worker_that_fetches_nothing_reports_no_moves() -> None:
    runner = Fetching()
    serve(runner, [(a_spec(k, ()), None) for k in range(1, 10)])
    assert all(type(m) is Done and m.moves is None for m in runner.sent)
