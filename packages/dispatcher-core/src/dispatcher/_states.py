"""A node's state within one run, and the name of the caller as a worker."""

from __future__ import annotations

__all__ = [
    "CALLER",
    "DONE",
    "FAILED",
    "READY",
    "RELEASED",
    "RUNNING",
    "SKIPPED",
    "TERMINAL",
    "WAITING",
]

WAITING = 0  # some input is not available yet
READY = 1  # in the ready stack
RUNNING = 2  # handed to a worker
DONE = 3  # result held by a worker (or by the caller)
RELEASED = 4  # result no longer held: nobody needed it, or it was lost and is not needed
FAILED = 5  # its own call raised
SKIPPED = 6  # an ancestor failed
TERMINAL = (DONE, RELEASED, FAILED, SKIPPED)

CALLER = "main"  # where constants and inputs live, and the worker named in their hooks
