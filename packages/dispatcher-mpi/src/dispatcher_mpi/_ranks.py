"""How worker ranks are named as workers, and the rank a worker name stands for."""

from __future__ import annotations

import functools
from collections.abc import Sequence

from dispatcher.transport import worker_name

__all__ = ["rank_names", "rank_of"]


def rank_names(peers: Sequence[tuple[str, int]]) -> list[str]:
    """Every rank's worker name (``rank-N``), by rank: with its host (``rank-N@host``)
    once worker ranks run on several."""
    spread = len({host for host, _ in peers[1:]}) > 1
    return [worker_name(f"rank-{r}", host if spread else None) for r, (host, _) in enumerate(peers)]


@functools.cache
def rank_of(worker: str) -> int:
    """The rank a worker name of :func:`rank_names` stands for."""
    return int(worker.partition("@")[0].rsplit("-", 1)[1])
