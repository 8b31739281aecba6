"""What a run report records: every attempt of every task, and the run around them.

A leaf shared by the observer that fills a record (:mod:`dispatcher._report`) and the page
that shows one (:mod:`dispatcher._report_html`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

__all__ = [
    "ABANDONED",
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
    """How long the call itself took, as measured on the worker."""
    status: str = RUNNING
    error: str | None = None
    """``Type: message`` of what ended it, for failures and retries."""
    details: str | None = None
    """The exception with its notes (remote traceback, failing node), for failures."""
    nbytes: int | None = None

    @property
    def run_start(self) -> float:
        """When the call itself started: the reported duration back from its end, if known."""
        if self.end is not None and self.duration is not None:
            return max(self.start, self.end - self.duration)
        return self.start


@dataclass
class RunRecord:
    """Everything a report shows about one run."""

    executor: str
    total: int
    """Nodes in the graph that ran (inputs included)."""
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

    @property
    def tasks(self) -> int:
        """Distinct nodes the run saw (started, finished, failed or skipped)."""
        return len(self.labels)
