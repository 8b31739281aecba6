"""Numbers and names as the report page shows them: times, sizes, worker order, statuses.

A leaf shared by the page (:mod:`dispatcher._report_html`) and its timeline
(:mod:`dispatcher._report_timeline`).
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from ._hosts import worker_host
from ._report_model import ABANDONED, CACHED, FAILED, LOST, OK, RETRIED, RUNNING, SKIPPED

__all__ = ["STATUS_TEXT", "clip", "hosts_of", "seconds", "size", "worker_order"]

STATUS_TEXT = {
    OK: "ok",
    FAILED: "failed",
    RETRIED: "failed, retried",
    LOST: "result lost, recomputed",
    SKIPPED: "skipped (an ancestor failed)",
    ABANDONED: "abandoned (the run stopped)",
    RUNNING: "running",
    CACHED: "read from the cache",
}
"""What each attempt status reads as."""


def seconds(t: float, step: float | None = None) -> str:
    """``t`` seconds, in units a person reads at a glance."""
    scale = step if step is not None else t
    if t == 0:
        return "0 s" if step is not None else "0"
    if scale < 1e-3:
        return f"{t * 1e6:.0f} µs"
    if scale < 1:
        return f"{t * 1e3:.3g} ms" if step is None else f"{t * 1e3:g} ms"
    if t < 120:
        return f"{t:.3g} s" if step is None else f"{t:g} s"
    minutes, seconds = divmod(t, 60)
    return f"{int(minutes)} min {seconds:02.0f} s"


def size(n: int) -> str:
    """``n`` bytes, in B, KiB, MiB or GiB."""
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"


def worker_order(name: str) -> tuple[int, list[object], list[object]]:
    """Sort key: the caller first, then workers by host, in natural order (mp-2 before
    mp-10)."""
    return (0 if name == "main" else 1, _natural(worker_host(name) or ""), _natural(name))


def _natural(name: str) -> list[object]:
    return [int(p) if p.isdigit() else p for p in re.split(r"(\d+)", name)]


def hosts_of(workers: Iterable[str]) -> list[str]:
    """The hosts that ``workers`` name, in order (see :func:`~.transport.worker_host`)."""
    return sorted({h for h in map(worker_host, workers) if h is not None}, key=_natural)


def clip(text: str, n: int) -> str:
    """``text`` cut to ``n`` characters, an ellipsis marking the cut."""
    return text if len(text) <= n else text[: n - 1] + "…"
