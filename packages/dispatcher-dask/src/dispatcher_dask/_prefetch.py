"""How many tasks each dask worker is given queued beyond its threads.

dask cannot move a task pinned to a worker, so what a worker is given beyond its threads
is committed there: deep queues of long tasks leave one worker busy while another idles.
Shallow queues of tiny tasks leave the workers waiting on the round trip from a
completion, through dispatcher's scheduler, to the next graph reaching them, and make
dispatcher send many small graphs, each of which costs dask's scheduler far more than a
task in it. With ``prefetch=None`` (the default) the depth follows the tasks' mean run
time: about :data:`QUEUED_SECONDS` of work queued per worker, between 1 and
:data:`MOST_PREFETCH` tasks.
"""

from __future__ import annotations

__all__ = ["FIRST_PREFETCH", "MOST_PREFETCH", "QUEUED_SECONDS", "QueueDepth", "depth_for"]

QUEUED_SECONDS = 0.1
"""Work (by the mean run time of the tasks reported lately) queued on a worker beyond its
threads: more than the round trip it covers (a graph waits up to 50 ms in the outbox),
little enough that a worker left with a queue of long tasks holds it briefly."""

MOST_PREFETCH = 64
"""The deepest queue, for tiny tasks: W4 (random edges over 100 layers of tiny tasks)
took 28 s with 16 and 19-22 s with 64 on a 2-worker local cluster, sent as 1,907 graphs
against 1,275; deeper queues were no faster."""

FIRST_PREFETCH = 16
"""The depth before any task has reported its run time."""


def depth_for(mean_run: float) -> int:
    """The queue depth for tasks that run ``mean_run`` seconds each."""
    if mean_run <= 0.0:
        return MOST_PREFETCH
    return max(1, min(MOST_PREFETCH, int(QUEUED_SECONDS / mean_run)))


class QueueDepth:
    """The depth in use: ``fixed`` if the user gave one, else following the mean run time,
    moved only when the wanted depth is half or twice the current one (each move is said
    to the scheduler for every worker)."""

    __slots__ = ("depth", "fixed")

    def __init__(self, fixed: int | None) -> None:
        self.fixed = fixed
        self.depth = FIRST_PREFETCH if fixed is None else fixed

    def retuned(self, mean_run: float) -> bool:
        """Fold in the mean run time: True when the depth moved."""
        if self.fixed is not None:
            return False
        wanted = depth_for(mean_run)
        depth = self.depth
        if wanted >= 2 * depth or 2 * wanted <= depth:
            self.depth = wanted
            return True
        return False
