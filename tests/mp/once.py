"""Tasks that fail their first call across all worker processes (a file marks it made),
importable by the workers."""

from __future__ import annotations

import os


def fails_once(marker_dir: str, tag: int) -> int:
    """Raise ``ValueError`` on the first call with ``tag`` in any process; then ``tag``."""
    try:
        fd = os.open(os.path.join(marker_dir, str(tag)), os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        return tag
    os.close(fd)
    raise ValueError(tag)


def after(x: int) -> int:
    return x + 1
