"""What a run report records: every attempt of every task, and the run around them.

A leaf shared by the observer that fills a record (:mod:`dispatcher._report`) and the page
that shows one (:mod:`dispatcher._report_html`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

__all__ = [
    "ABANDONED",
    "CACHED",
    "FAILED",
    "LOST",
    "OK",
    "RETRIED",
    "RUNNING",
    "SKIPPED",
    "Attempt",
    "RunRecord",
]

# What an attempt ended as.
RUNNING = "running"  # still running when the record was taken
OK = "ok"
FAILED = "failed"  # its own call raised (or it timed out, or its worker was lost for good)
RETRIED = "retried"  # failed, and was run again
LOST = "lost"  # finished, but its result was lost with its worker and recomputed
SKIPPED = "skipped"  # never ran: an ancestor failed
ABANDONED = "abandoned"  # still running when the run stopped (fail-fast or cancellation)
CACHED = "cached"  # not run: its value was read from the run's cache


@dataclass(slots=True)
class Attempt:
    """One try at running one node, times in seconds from the start of the run."""

    task: int
    """Index of the node in :attr:`RunRecord.labels`, :attr:`RunRecord.kinds` and
    :attr:`RunRecord.descriptions`."""
    worker: str
    start: float
    """When the node was handed to the worker."""
    number: int = 1
    end: float | None = None
    """When its end was reported to the caller."""
    duration: float | None = None
    """How long the call itself took, as measured on the worker, failed calls included;
    ``None`` where nobody knows (its worker was lost, it never ran, or it was abandoned).
    Where the page draws it is :func:`dispatcher._report_timeline.spans`' judgement."""
    status: str = RUNNING
    error: str | None = None
    """``Type: message`` of what ended it, for failures and retries."""
    details: str | None = None
    """The exception with its notes (remote traceback, failing node), for failures."""
    nbytes: int | None = None


@dataclass
class RunRecord:
    """Everything a report shows about one run."""

    executor: str
    total: int
    """Nodes in the graph that ran (inputs included), and in each graph the run was
    planned again with."""
    started_at: datetime
    labels: list[str] = field(default_factory=list)
    kinds: list[str] = field(default_factory=list)
    descriptions: list[str] = field(default_factory=list)
    """Each node as a user recognises it, label and arguments (``parse('b.txt')``): which
    of the nodes with one label it is."""
    attempts: list[Attempt] = field(default_factory=list)
    wall: float = 0.0
    error: str | None = None
    """``Type: message`` of what ended the run, or ``None`` if it completed."""
    replans: int = 0
    """Times the run was planned again: a cache entry planned as a hit could not be
    read, and what it had made unnecessary ran after all."""
    in_order: bool = False
    """Each worker ran one task at a time, in the order it was sent them (``mp``, ``mpi``)."""
    links: dict[str, tuple[float, float, int]] | None = None
    """What placement took a move between workers to cost at the run's end, per class of
    link (``"within a host"``, ``"across hosts"``): latency in seconds, bandwidth in bytes
    per second, and the fetches measured (0: assumed); ``None`` for an executor whose
    workers share the caller's memory."""

    def described(self, task: int) -> str:
        """Node ``task`` as a user recognises it (a record made before descriptions were
        kept has its label only)."""
        descriptions = self.descriptions
        return descriptions[task] if task < len(descriptions) else self.labels[task]

    @property
    def tasks(self) -> int:
        """Distinct nodes the run saw (started, finished, failed or skipped)."""
        return len(self.labels)
