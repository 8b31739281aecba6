"""What a move between two workers costs, per class of link: assumed, then measured.

Placement weighs a move by its link (:class:`Link`): within a host, or across hosts.
Before anything has moved it assumes the rough figures :data:`WITHIN_HOST` and
:data:`ACROSS_HOSTS`; a transport whose workers time their fetches reports each one
(:meth:`~dispatcher.transport.EventSink.inputs_moved`), and :class:`LinkCosts` fits each
class's latency and bandwidth to what it saw, so placement across a real cluster (10 GbE,
InfiniBand, a loaded machine's TCP) weighs what its moves really cost.

What a sample is: one task's wait for the inputs it fetched over one class of link, from
asking to having them unpickled, with their bytes added up. Fetches a task makes at once
overlap, so each alone would overstate its cost per byte; together they are what the task
waited, which is what placement weighs. A wait over both classes at once says nothing
clean about either, and is left out (see :meth:`LinkCosts.observe`).

The fit is robust and cheap: latency is the median wait of small fetches (below
:data:`SMALL_MOVE` bytes, where the bytes cost next to nothing), seconds per byte the
median over large ones of what they took beyond that latency, each over the last
:data:`WINDOW` samples of its kind; so a stall (a garbage collection, a busy core) moves
neither. Until :data:`ENOUGH` samples of a kind exist, that half of the link stays what was
assumed. No I/O; :meth:`LinkCosts.observe` may be called from any thread.
"""

from __future__ import annotations

import threading
from collections import deque
from dataclasses import dataclass
from statistics import median

from ._hosts import worker_host

__all__ = [
    "ACROSS_HOSTS",
    "ENOUGH",
    "REFIT_EVERY",
    "SMALL_MOVE",
    "WINDOW",
    "WITHIN_HOST",
    "Link",
    "LinkCosts",
    "LinkEstimate",
]


@dataclass(frozen=True)
class Link:
    """What moving one result between two workers costs over one class of link."""

    latency: float
    """Seconds per move, whatever its size: asking for it, the messages, the wake-ups."""
    bandwidth: float
    """Bytes per second, once it flows: pickling, copying, the wire."""

    def seconds(self, nbytes: float) -> float:
        """How long moving ``nbytes`` takes."""
        return self.latency + nbytes / self.bandwidth


# Rough figures for a move between two workers as a task sees it, from the request to its
# inputs being there; what matters is the order of magnitude and the ratio between them.
# Within a host: pipes and shared memory (MPI is faster on both counts).
WITHIN_HOST = Link(latency=100e-6, bandwidth=1e9)
# Across hosts: the same, scaled by what MPI measured between emulated hosts (TCP over a
# bridge, see docs/clusters.md) beside the same messages within a host: round trips of a
# byte 10-27 us within, 30-110 us across (about 3x); 16 MiB at 1.9-2.4 GB/s within,
# 0.64-1.1 GB/s across (about 2.5x fewer bytes per second). Ethernet between machines is
# mostly slower than a bridge inside one (10 GbE moves 1.2 GB/s); InfiniBand can match
# shared memory, and then this only overstates a difference that ranks the data's host
# first all the same. Both are replaced by what is measured (see LinkCosts).
ACROSS_HOSTS = Link(latency=300e-6, bandwidth=0.4e9)

SMALL_MOVE = 64 * 1024
"""Bytes: a fetch below this measures the link's latency, one at or above its bandwidth."""
WINDOW = 32
"""Samples of each kind (small, large) the fit reads: the most recent ones."""
ENOUGH = 5
"""Samples of a kind needed before they replace what was assumed."""
REFIT_EVERY = 32
"""Once past twice :data:`ENOUGH`, the fit is redone every this many samples (a window's
worth), not at each: a run of tiny tasks may report a move per task, a fit takes tens of
microseconds, and the caller has a few for each task."""
# Bounds a fit never leaves, whatever the samples say: a clock that stepped, a fetch
# timed at zero. A picosecond per byte is 1 TB/s.
_MIN_LATENCY = 1e-7
_MIN_SECONDS_PER_BYTE = 1e-12


def _latency(small: deque[tuple[int, float]], per_byte: float) -> float:
    """The median time of small fetches, less their bytes at ``per_byte``."""
    return max(_MIN_LATENCY, median(seconds - nbytes * per_byte for nbytes, seconds in small))


class LinkEstimate:
    """One class of link: the assumed :class:`Link` until samples say otherwise."""

    def __init__(self, assumed: Link) -> None:
        self.assumed = assumed
        self.link = assumed
        """What placement uses now: refitted at each sample."""
        self.small: deque[tuple[int, float]] = deque(maxlen=WINDOW)
        """(bytes, seconds) of recent small fetches."""
        self.large: deque[tuple[int, float]] = deque(maxlen=WINDOW)
        """(bytes, seconds) of recent large fetches."""
        self.samples = 0
        """Every sample ever taken (the report shows it)."""

    @property
    def measured(self) -> bool:
        """Some of :attr:`link` is measured rather than assumed."""
        return self.link is not self.assumed

    def add(self, nbytes: int, seconds: float) -> None:
        """One fetch of ``nbytes`` that took ``seconds``; refit."""
        if not seconds >= 0.0:  # NaN from a broken clock, or negative: nothing learned
            return
        self.samples += 1
        if nbytes < SMALL_MOVE:
            self.small.append((nbytes, seconds))
        else:
            self.large.append((nbytes, seconds))
        if self.samples <= 2 * ENOUGH or self.samples % REFIT_EVERY == 0:
            self.link = self.fit()

    def fit(self) -> Link:
        """The link the samples describe, each half falling back to what was assumed.

        Each half is read net of the other: the latency from the small fetches' time
        less their bytes at the bandwidth, the bandwidth from the large ones' time less
        the latency; the latency once more with the bandwidth found."""
        assumed = self.assumed
        small, large = self.small, self.large
        latency, per_byte = assumed.latency, 1.0 / assumed.bandwidth
        enough_small, enough_large = len(small) >= ENOUGH, len(large) >= ENOUGH
        if not (enough_small or enough_large):
            return assumed
        if enough_small:
            latency = _latency(small, per_byte)
        if enough_large:
            per_byte = max(
                _MIN_SECONDS_PER_BYTE,
                median((seconds - latency) / nbytes for nbytes, seconds in large),
            )
            if enough_small:
                latency = _latency(small, per_byte)
        return Link(latency=latency, bandwidth=1.0 / per_byte)

    def forget(self) -> None:
        """Back to what was assumed."""
        self.small.clear()
        self.large.clear()
        self.samples = 0
        self.link = self.assumed


class LinkCosts:
    """An executor's links, within a host and across hosts, as its moves measured them.

    One per executor (its router's), shared by every run: the links outlive runs. Placement
    reads :attr:`within` and :attr:`across`; transports' reports feed :meth:`observe`.
    """

    def __init__(self, within: Link = WITHIN_HOST, across: Link = ACROSS_HOSTS) -> None:
        self.within = LinkEstimate(within)
        self.across = LinkEstimate(across)
        self.learning = True
        """False: samples are ignored and the assumed links stay (to compare with)."""
        self._lock = threading.Lock()
        self._hosts: dict[str, str | None] = {}  # worker -> host, read once per name

    def observe(self, worker: str, sources: tuple[str, ...], nbytes: int, seconds: float) -> None:
        """``worker`` waited ``seconds`` for ``nbytes`` of inputs from the workers
        ``sources``. Counted for one class of link when every source is on the worker's
        host, or every one on another host; a wait over both is left out."""
        if not self.learning or not sources:
            return
        host = self._host(worker)
        away = False
        for i, source in enumerate(sources):
            there = self._host(source)
            if i == 0:
                away = there != host
            elif (there != host) != away:
                return  # over both classes of link
        estimate = self.across if away else self.within
        with self._lock:
            estimate.add(nbytes, seconds)

    def _host(self, worker: str) -> str | None:
        hosts = self._hosts
        if worker in hosts:
            return hosts[worker]
        host = hosts[worker] = worker_host(worker)
        return host

    def forget(self) -> None:
        """Back to the assumed links (the samples so far are dropped)."""
        with self._lock:
            self.within.forget()
            self.across.forget()

    def summary(self) -> dict[str, tuple[float, float, int]]:
        """Per class of link (``"within a host"``, ``"across hosts"``): the latency in
        seconds and the bandwidth in bytes per second placement uses now, and how many
        fetches were measured (0: too few yet, both are assumed)."""
        return {
            label: (
                estimate.link.latency,
                estimate.link.bandwidth,
                estimate.samples if estimate.measured else 0,
            )
            for label, estimate in (("within a host", self.within), ("across hosts", self.across))
        }
