"""Ranks that go silent: a host cut off from the network, a frozen process.

A rank says :class:`~._messages.Alive` every half second, idle or not. When one has said
nothing for :func:`silence_limit` seconds since it was last sent work, while tasks are out
(on it, or on a rank that may be fetching what it holds), rank 0 cannot tell it from a rank
whose host dropped off the network (no connection closes then: TCP retries for many
minutes) or a frozen (``SIGSTOP``) process. Rank 0 takes it out of scheduling: the task it
runs is charged an attempt, the others sent there run elsewhere, what it held is
recomputed, and the other ranks stop waiting for what they fetch from it. If it speaks
again, it comes back.

A task that holds the GIL for longer than the limit silences its rank too, and fails once
its retries are spent. Raise the limit for such tasks.
"""

from __future__ import annotations

import math
import os
import sys
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING

from ._messages import Peer

if TYPE_CHECKING:
    from ._transport import MpiTransport, Root

__all__ = [
    "HEARTBEAT",
    "LIMIT_VARIABLE",
    "ROOT_HEARTBEAT",
    "ROOT_LIMIT_VARIABLE",
    "SILENT",
    "give_up_silent",
    "root_silence_limit",
    "silence_limit",
    "silent_ranks",
]

HEARTBEAT = 0.5
"""Seconds of silence after which a worker rank says :class:`~._messages.Alive`."""
ROOT_HEARTBEAT = 1.0
"""Seconds between the :class:`~._messages.Alive` rank 0 says to every worker rank, so that
the ranks can tell rank 0 gone (its host cut off) from rank 0 with nothing to send."""

LIMIT_VARIABLE = "DISPATCHER_MPI_SILENCE_LIMIT"
LEAST_LIMIT = 3 * HEARTBEAT  # shorter, healthy ranks would be given up on
DEFAULT_LIMIT = 300.0
"""Seconds: dask.distributed's default ``worker-ttl``, which users of clusters know."""

ROOT_LIMIT_VARIABLE = "DISPATCHER_MPI_ROOT_SILENCE_LIMIT"
LEAST_ROOT_LIMIT = 3 * ROOT_HEARTBEAT
DEFAULT_ROOT_LIMIT = 600.0
"""Seconds: longer than a rank's, since rank 0 runs the program, which may hold the GIL
(and so silence rank 0's hub) for long between runs."""

SILENT = -2
"""The task a rank taken out for its silence is said to run (task keys are never
negative): it comes back on the first word it says."""


def silence_limit(environ: Mapping[str, str] = os.environ) -> float:
    """Seconds of silence, while tasks are out, after which a rank is given up on; a
    ``ValueError`` that says why when ``DISPATCHER_MPI_SILENCE_LIMIT`` is not a number of
    seconds above 0, or one too short for a healthy rank to be heard within."""
    return _seconds(
        LIMIT_VARIABLE,
        DEFAULT_LIMIT,
        "a rank is given up on",
        (LEAST_LIMIT, f"a rank says it is alive every {HEARTBEAT:g} s"),
        environ,
    )


def root_silence_limit(environ: Mapping[str, str] = os.environ) -> float:
    """Seconds a worker rank goes without a word from rank 0 before it ends the job (see
    :mod:`._worker`); a ``ValueError`` that says why when
    ``DISPATCHER_MPI_ROOT_SILENCE_LIMIT`` is not a number of seconds above 0, or is too
    short for rank 0 to be heard within."""
    return _seconds(
        ROOT_LIMIT_VARIABLE,
        DEFAULT_ROOT_LIMIT,
        "the ranks end a job rank 0 left",
        (LEAST_ROOT_LIMIT, f"rank 0 says it is alive every {ROOT_HEARTBEAT:g} s"),
        environ,
    )


def _seconds(
    variable: str,
    default: float,
    meaning: str,
    least: tuple[float, str],
    environ: Mapping[str, str],
) -> float:
    """``variable``'s seconds, or ``default``; ``least``: the shortest allowed, and why."""
    raw = environ.get(variable)
    if raw is None or not raw.strip():
        return default
    try:
        limit = float(raw)
    except ValueError:
        limit = math.nan
    if not limit > 0:  # also NaN
        raise ValueError(
            f"{variable} must be the seconds of silence after which {meaning}, a number "
            f"above 0 (default {default:g}), not {raw!r}"
        )
    shortest, why = least
    if limit < shortest:
        raise ValueError(f"{variable} must be at least {shortest:g} s ({why}), not {raw!r}")
    return limit


def silent_ranks(
    ranks: Iterable[int],
    heard: Mapping[int, float],
    sent: Mapping[int, float],
    now: float,
    limit: float,
    since: float = 0.0,
) -> list[tuple[int, float]]:
    """``(rank, seconds quiet)`` for each of ``ranks`` that has said nothing for ``limit``
    seconds since it was last sent work, and since ``since`` (when rank 0 last came back
    from not running: it may not have heard what was said meanwhile). Whether it has tasks
    out is the caller's to check: an idle rank is quiet too."""
    silent = []
    for rank in ranks:
        last = sent.get(rank)
        if last is None:
            continue  # never sent anything
        quiet = now - max(last, heard.get(rank, 0.0), since)
        if quiet >= limit:
            silent.append((rank, quiet))
    return silent


def give_up_silent(root: Root, transport: MpiTransport, now: float) -> None:
    """On rank 0's hub thread, while tasks are out: give up on the ranks in scheduling
    that have been silent for the limit. Those with no task out too: a task elsewhere may
    be fetching what they hold."""
    idle = [rank for rank in transport.ranks if rank not in root.busy]
    for rank, quiet in silent_ranks(
        idle, root.heard, root.sent, now, root.silence_limit, root.resumed
    ):
        _give_up(root, rank, quiet, bool(transport._out_on(rank)))


def _give_up(root: Root, rank: int, quiet: float, tasks_out: bool) -> None:
    """Take ``rank``, silent for ``quiet`` seconds, out of scheduling; the other ranks
    give up what they fetch from it."""
    host = root.peers[rank][0] if rank < len(root.peers) else "?"
    reason = (
        f"silent for {quiet:.0f} s{' with tasks out' if tasks_out else ''}: its host {host} "
        f"may be cut off from the network, or the process frozen (the limit is "
        f"{root.silence_limit:g} s: {LIMIT_VARIABLE})"
    )
    then = "its tasks run elsewhere" if tasks_out else "what it holds is made again"
    print(f"dispatcher_mpi: {root.where(rank)} {reason}; {then}", file=sys.stderr)
    root.unreachable.add(rank)
    for other in root.ranks:
        if other != rank:
            root.hub.post(other, Peer(rank, False))
    # The task it runs is charged an attempt (the first sent there and still out: they
    # run in order), so that one that silences every rank it runs on (holding the GIL
    # past the limit, freezing its process) ends, as out of retries.
    root.retire(rank, SILENT, reason, running=None)
