"""What rank 0 tells the watcher each rank does (``Root.doing``), from what is out."""

from __future__ import annotations

from types import SimpleNamespace

from dispatcher.remote import InFlight
from dispatcher.transport import TaskSpec
from dispatcher_mpi._transport import Root


def _spec(key: int, label: str, worker: str) -> TaskSpec:
    return TaskSpec(key, label, abs, (), {}, 0, (), None, None, worker, None, False, 1)


def test_each_rank_shows_its_first_started_task_else_its_first_sent_and_the_rest_queued() -> None:
    inflight = InFlight()
    for spec in (
        _spec(1, "a", "rank-1"),
        _spec(2, "b", "rank-1"),
        _spec(3, "c", "rank-2"),
        _spec(4, "d", "rank-1"),
        _spec(5, "e", "rank-2"),
    ):
        inflight.tasks[spec.key] = spec
    inflight.deadlines[5] = (99.0, inflight.tasks[5])  # rank 2 started its second task
    root = SimpleNamespace(
        ranks=[1, 2, 3],
        transport=SimpleNamespace(inflight=inflight),
        why_busy={3: "finishing a task that was abandoned"},
    )
    assert Root.doing(root) == {  # type: ignore[arg-type]
        1: "running 'a' (2 more queued there)",
        2: "running 'e' (1 more queued there)",
        3: "finishing a task that was abandoned",
    }


def test_ranks_with_nothing_out_are_idle() -> None:
    root = SimpleNamespace(
        ranks=[1, 2], transport=SimpleNamespace(inflight=InFlight()), why_busy={}
    )
    assert Root.doing(root) == {1: "idle", 2: "idle"}  # type: ignore[arg-type]
