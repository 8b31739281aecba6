"""The ``mpi`` messages beyond those of :mod:`dispatcher.remote`: results fetched rank to
rank, large arguments sent to a rank once per run, taking a rank out of scheduling while
it finishes abandoned work, and the signs of life by which rank 0 tells a busy rank from a
stuck one."""

from __future__ import annotations

from typing import Any, NamedTuple

from dispatcher.remote import message

__all__ = [
    "IDLE",
    "Alive",
    "Busy",
    "Bye",
    "Data",
    "DropArguments",
    "Fetch",
    "HoldArgument",
    "Peer",
    "Reset",
]

IDLE = -1
"""The key in a :class:`Busy` from a rank that runs nothing (task keys are never
negative)."""


@message("mpi.fetch")
class Fetch(NamedTuple):
    """Rank to rank: send me the results ``keys`` (all a task needs from you, at once);
    ``request`` numbers the answer."""

    request: int
    keys: tuple[int, ...]


@message("mpi.data")
class Data(NamedTuple):
    """Rank to rank: the answer to :class:`Fetch` ``request``. The results held there,
    ``keys``, travel as one pickle of the tuple of their values (``values``: its stream
    followed by its out-of-band buffers), which costs one pickling, not one per result.
    ``entries`` has one ``(key, found, value)`` for each other key asked for, or for every
    key when one of them could not be pickled: ``found`` True with ``value`` the result's
    pickle stream followed by its out-of-band buffers; ``found`` False with ``value`` a
    str: it could not be serialised (why); with ``value`` ``None``: it is not here."""

    request: int
    entries: list[tuple[int, bool, Any]]
    keys: tuple[int, ...] = ()
    values: list[Any] | None = None


@message("mpi.hold")
class HoldArgument(NamedTuple):
    """Rank 0 to a rank: a large argument of a run, which tasks that follow name
    (``name``); ``value``: its pickle stream followed by its out-of-band buffers."""

    name: str
    value: list[Any]


@message("mpi.drop")
class DropArguments(NamedTuple):
    """Rank 0 to a rank: the run that gave these large arguments is over; drop them."""

    names: list[str]


@message("mpi.reset")
class Reset(NamedTuple):
    """Rank 0 to a rank: drop every queued task and held result; they are nobody's now."""


@message("mpi.busy")
class Busy(NamedTuple):
    """A rank to rank 0, answering :class:`Reset`: I am still running task ``key``, which
    was given up on (:data:`IDLE`: I run nothing)."""

    key: int


@message("mpi.peer")
class Peer(NamedTuple):
    """Rank 0 to every other rank: rank ``rank`` cannot be reached (``reachable`` false:
    give up fetches from it, and report those inputs lost), or can again."""

    rank: int
    reachable: bool


@message("mpi.alive")
class Alive(NamedTuple):
    """A rank to rank 0, while it runs a task and has said nothing else for a while: its
    communication thread still runs (a task holding the GIL stops it)."""


@message("mpi.bye")
class Bye(NamedTuple):
    """A rank to rank 0: stopping, as asked by :class:`~dispatcher.remote.Stop`."""
