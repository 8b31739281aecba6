"""Tasks that fail their first call with each tag in each worker process, importable by
the workers."""

from __future__ import annotations

_failed: set[object] = set()


def fails_once_per_process(tag: object, *inputs: int) -> int:
    """Raise ``ValueError`` on this process's first call with ``tag``; then the sum."""
    if tag not in _failed:
        _failed.add(tag)
        raise ValueError(tag)
    return sum(inputs)
