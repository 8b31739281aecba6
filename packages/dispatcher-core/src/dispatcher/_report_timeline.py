"""The report's timeline: one band per worker, a bar per task attempt, in inline SVG.

Where each bar goes is the one judgement here: a call's run time is measured on its
worker, its end is when the caller heard of it, and a worker that runs one task at a
time cannot have run two at once (:func:`spans`, :func:`lanes`).
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Callable, Sequence
from html import escape

from ._hosts import worker_host
from ._report_format import STATUS_TEXT, clip, hosts_of, seconds, size, worker_order
from ._report_model import (
    ABANDONED,
    CACHED,
    FAILED,
    LOST,
    RETRIED,
    RUNNING,
    SKIPPED,
    Attempt,
    RunRecord,
)

__all__ = ["MARK", "MAX_DRAWN", "Span", "lanes", "spans", "timeline"]

MAX_DRAWN = 20_000  # bars in the timeline; beyond this the browser struggles
MAX_LANES = 24  # rows per worker: more concurrent tasks than this overlap

CACHED_COLOR = "#17becf"  # in no label's palette: a hit never looks like a task that ran
STATUS_STYLE = {
    CACHED: f'fill="{CACHED_COLOR}" stroke="#0b6e75"',
    FAILED: 'fill="#e15759" stroke="#8f1d1f"',
    RETRIED: 'fill="#f28e2b" stroke="#9a4f05" stroke-dasharray="3 2"',
    ABANDONED: 'fill="url(#abandoned)" stroke="#888"',
    RUNNING: 'fill="url(#abandoned)" stroke="#888"',
}

# Timeline geometry, in SVG user units (the picture scales to the page width).
WIDTH = 1060
GUTTER = 110  # worker names
RIGHT = 16
TOP = 26  # the time axis
ROW = 14
BAR = 11
LANE_GAP = 8
OVERLAP_PIXELS = 3.0  # bars overlapping by less than this share a row

HINT = (
    '<p class="hint">One band per worker; calls that ran at the same time stack. A bar '
    "spans a call's run time as measured on the worker, failed calls included, and ends "
    "when the caller learned of its end (on a worker that runs one task at a time, when "
    "its next task started, if that was earlier); the thin line before it is the wait "
    "since the task was handed over (inputs moving, the worker's queue). A narrow mark "
    "is a failure that took next to no time, or whose run time is unknown (its worker was "
    "lost). Hover over a bar for details.</p>"
)


def timeline(record: RunRecord, colors: dict[str, str]) -> str:
    """The timeline section of the page."""
    drawn = [a for a in record.attempts if a.status != SKIPPED]
    note = ""
    if len(drawn) > MAX_DRAWN:
        note = (
            f'<p class="note">The timeline shows the first {MAX_DRAWN:,} of '
            f"{len(drawn):,} task attempts.</p>"
        )
        drawn = sorted(drawn, key=lambda a: a.start)[:MAX_DRAWN]
    if not drawn:
        return "<section><h2>Timeline</h2><p>No task ran.</p></section>"
    end = max([record.wall, *(a.end for a in drawn if a.end is not None)])
    span = end if end > 0 else 1e-9
    plot = WIDTH - GUTTER - RIGHT

    def x(t: float) -> float:
        return GUTTER + plot * min(max(t, 0.0), span) / span

    where = spans(drawn, record.in_order)
    # A call's end reaches the caller a little after the worker started its next one:
    # bars that overlap by less than a few pixels share a row rather than look concurrent.
    rows_of = lanes(drawn, where, slack=span * OVERLAP_PIXELS / plot)
    body: list[str] = []
    y = TOP
    # Across hosts, the bands alternate by host: a host's workers share one shade.
    hosts = hosts_of(worker for worker, _ in rows_of)
    for i, (worker, rows) in enumerate(rows_of):
        height = len(rows) * ROW + LANE_GAP
        host = worker_host(worker)
        if (1 + hosts.index(host) if len(hosts) > 1 and host else i) % 2 == 0:
            body.append(
                f'<rect x="0" y="{y - LANE_GAP / 2:.1f}" width="{WIDTH}" height="{height}" '
                'fill="#f4f6f9"/>'
            )
        middle = y + len(rows) * ROW / 2
        body.append(
            f'<text x="{GUTTER - 8}" y="{middle + 4:.1f}" text-anchor="end" class="w">'
            f"{escape(clip(worker, 16))}</text>"
        )
        # Wait lines first, bars over them: on a worker that runs its queue in order, the
        # wait of a queued task runs behind the bars of the tasks ahead of it.
        for r, row in enumerate(rows):
            body.extend(_wait(a, where[id(a)], x, y + r * ROW) for a in row)
        for r, row in enumerate(rows):
            body.extend(_bar(a, where[id(a)], record, colors, x, y + r * ROW) for a in row)
        y += height
    height = y + 4
    axis = _axis(span, x, height)
    legend = _legend(record, colors)
    return (
        "<section><h2>Timeline</h2>"
        + HINT
        + note
        + f'<svg class="timeline" viewBox="0 0 {WIDTH} {height:.0f}" '
        f'width="100%" role="img" aria-label="task timeline per worker">'
        "<defs>"
        '<pattern id="abandoned" width="6" height="6" patternUnits="userSpaceOnUse" '
        'patternTransform="rotate(45)"><rect width="6" height="6" fill="#ddd"/>'
        '<rect width="3" height="6" fill="#aaa"/></pattern></defs>'
        + "".join(axis)
        + "".join(body)
        + "</svg>"
        + legend
        + "</section>"
    )


Span = tuple[float, float, bool]
"""When a call ran, as drawn: (start, end, whether its run time is known)."""


def spans(attempts: Sequence[Attempt], in_order: bool) -> dict[int, Span]:
    """For each attempt (by ``id``), the span its bar covers.

    A call ran for its ``duration`` and ended at the latest when its end reached the
    caller. Where the worker runs one task at a time, in the order sent (``in_order``),
    it also ended before the next task on that worker started: ends that arrived together
    in one batch are laid end to end instead of on top of each other, which would draw a
    one-task-at-a-time worker as running several at once. Without a duration (a lost
    worker's task, one abandoned when the run stopped) the span is the end alone for a
    failure, or the whole time since it was handed over for an abandoned task.
    """
    out: dict[int, Span] = {}
    by_worker: dict[str, list[Attempt]] = defaultdict(list)
    for attempt in attempts:
        by_worker[attempt.worker].append(attempt)
    for queue in by_worker.values():
        if in_order:
            queue.sort(key=lambda a: (a.start, a.task))
        limit = math.inf
        for attempt in reversed(queue) if in_order else queue:
            end = attempt.end if attempt.end is not None else attempt.start
            if attempt.duration is None:
                if attempt.status in (FAILED, RETRIED):
                    out[id(attempt)] = (end, end, False)
                else:
                    out[id(attempt)] = (attempt.start, end, False)
                continue
            end = min(end, limit)
            begin = max(attempt.start, end - attempt.duration)
            out[id(attempt)] = (begin, max(end, begin), True)
            if in_order:
                limit = begin
    return out


def lanes(
    attempts: Sequence[Attempt], where: dict[int, Span], slack: float = 0.0
) -> list[tuple[str, list[list[Attempt]]]]:
    """Per worker, rows of attempts whose bars do not overlap by more than ``slack``
    seconds (greedy interval partitioning, by the spans the bars cover)."""
    by_worker: dict[str, list[Attempt]] = defaultdict(list)
    for attempt in attempts:
        by_worker[attempt.worker].append(attempt)
    out = []
    for worker in sorted(by_worker, key=worker_order):
        rows: list[list[Attempt]] = []
        ends: list[float] = []
        for attempt in sorted(by_worker[worker], key=lambda a: (where[id(a)][0], a.task)):
            begin, stop, _ = where[id(attempt)]
            free = next((r for r, row_end in enumerate(ends) if row_end <= begin + slack), None)
            if free is not None:
                r = free
            elif len(rows) < MAX_LANES:
                r = len(rows)
                rows.append([])
                ends.append(stop)
            else:
                r = min(range(len(ends)), key=ends.__getitem__)  # overlap the freest row
            rows[r].append(attempt)
            ends[r] = max(ends[r], stop)
        out.append((worker, rows))
    return out


MARK = 2.5  # width of a failure whose run time is unknown


def _wait(attempt: Attempt, span: Span, x: Callable[[float], float], top: float) -> str:
    """The thin line from the hand-over to the start of the call, where there is room."""
    begin, _, known = span
    if not known and attempt.status not in (FAILED, RETRIED):
        return ""  # abandoned: its bar starts at the hand-over
    xs, x0 = x(attempt.start), x(begin) - (0 if known else MARK)
    if x0 - xs < 1.0:
        return ""
    mid = top + BAR / 2
    return f'<line x1="{xs:.1f}" y1="{mid:.1f}" x2="{x0:.1f}" y2="{mid:.1f}" class="wait"/>'


def _bar(
    attempt: Attempt,
    span: Span,
    record: RunRecord,
    colors: dict[str, str],
    x: Callable[[float], float],
    top: float,
) -> str:
    label = record.labels[attempt.task]
    begin, end, known = span
    x0, x1 = x(begin), x(end)
    if not known and attempt.status in (FAILED, RETRIED):
        x0, x1 = x1 - MARK, x1
    # A failure stays visible however short the call: as wide as the unknown-time mark.
    width = max(x1 - x0, MARK if attempt.status in (FAILED, RETRIED) else 1.2)
    style = STATUS_STYLE.get(attempt.status)
    if style is None:
        if attempt.status == LOST:
            style = (
                f'fill="{colors[label]}" fill-opacity="0.35" stroke="#555" stroke-dasharray="2 2"'
            )
        else:
            # A hairline of white between bars of one label that follow each other closely.
            style = f'fill="{colors[label]}" stroke="#fff" stroke-width="0.6"'
    tip = _tooltip(attempt, span, record)
    return (
        f'<rect x="{x0:.2f}" y="{top:.1f}" width="{width:.2f}" height="{BAR}" '
        f'rx="1.5" {style}><title>{escape(tip)}</title></rect>'
    )


def _tooltip(attempt: Attempt, span: Span, record: RunRecord) -> str:
    lines = [
        f"{record.described(attempt.task)} ({record.kinds[attempt.task]})",
        f"worker {attempt.worker}, attempt {attempt.number}",
        f"handed over at {seconds(attempt.start)}",
    ]
    if attempt.end is not None:
        lines.append(f"reported at {seconds(attempt.end)}")
    if attempt.duration is not None:
        lines.append(f"ran {seconds(attempt.duration)}, from {seconds(span[0])}")
    elif attempt.status in (FAILED, RETRIED):
        lines.append("ran for a time nobody knows (its worker was lost)")
    if attempt.nbytes is not None:
        lines.append(f"result {size(attempt.nbytes)}")
    lines.append(STATUS_TEXT.get(attempt.status, attempt.status))
    if attempt.error:
        lines.append(attempt.error)
    return "\n".join(lines)


def _axis(span: float, x: Callable[[float], float], height: float) -> list[str]:
    step = _nice_step(span / 8)
    out = []
    t = 0.0
    while t <= span * 1.0001:
        px = x(t)
        out.append(
            f'<line x1="{px:.1f}" y1="{TOP - 8}" x2="{px:.1f}" y2="{height:.0f}" class="grid"/>'
            f'<text x="{px:.1f}" y="{TOP - 12}" text-anchor="middle" class="t">'
            f"{escape(seconds(t, step))}</text>"
        )
        t += step
    return out


def _nice_step(raw: float) -> float:
    if raw <= 0:
        return 1.0
    exponent = math.floor(math.log10(raw))
    base = 10.0**exponent
    for m in (1, 2, 5, 10):
        if raw <= m * base:
            return m * base
    return 10 * base


def _legend(record: RunRecord, colors: dict[str, str]) -> str:
    items = []
    for label, color in list(colors.items())[:12]:
        items.append(f'<span><i style="background:{color}"></i>{escape(clip(label, 40))}</span>')
    if len(colors) > 12:
        items.append(f"<span>… {len(colors) - 12} more labels</span>")
    items.append('<span><i style="background:#e15759"></i>failed</span>')
    items.append('<span><i style="background:#f28e2b"></i>failed, retried</span>')
    items.append('<span><i class="lost"></i>result lost, recomputed</span>')
    items.append(f'<span><i style="background:{CACHED_COLOR}"></i>read from the cache</span>')
    items.append('<span><i class="abandoned"></i>abandoned</span>')
    return '<div class="legend">' + "".join(items) + "</div>"
