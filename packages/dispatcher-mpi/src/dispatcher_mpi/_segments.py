"""MPICH's shared-memory segments of this job, unlinked as soon as every rank has them.

MPICH keeps a file ``/dev/shm/mpich_shm_*`` per host for the ranks there and unlinks it in
``MPI_Finalize``; a job that ends any other way (``MPI_Abort``, a killed rank, Ctrl-C)
leaves it behind, and a small ``/dev/shm`` fills up after a few dozen failed jobs. Once
every rank has passed ``MPI_Init`` (and so mapped it), the name is no longer needed: each
rank unlinks the segments it maps itself, so the memory goes when the last rank of the job
exits, however it exits. Only segments this process maps are touched: never another job's.
"""

from __future__ import annotations

import os

__all__ = ["unlink_own_segments"]

PREFIX = "/dev/shm/mpich_shm_"


def own_segments(maps: str = "/proc/self/maps") -> list[str]:
    """The MPICH segments this process maps that still have a name (Linux; none elsewhere)."""
    try:
        with open(maps) as lines:
            fields = [line.split() for line in lines if PREFIX in line]
    except OSError:
        return []
    # A mapped file's path is the sixth field; one already unlinked has "(deleted)" after.
    return sorted({f[5] for f in fields if len(f) == 6 and f[5].startswith(PREFIX)})


def unlink_own_segments() -> list[str]:
    """Unlink this process's MPICH segments (another rank of the host may be first)."""
    removed = []
    for path in own_segments():
        try:
            os.unlink(path)
            removed.append(path)
        except OSError:
            pass
    return removed
