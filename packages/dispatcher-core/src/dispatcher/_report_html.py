"""The HTML page of a run report: summary, per-worker timeline (inline SVG), tables.

Everything is inline — styles, the SVG, a few lines of script that sort the tables — so the
page works offline and from a mail attachment; without scripts it loses only the sorting.
"""

from __future__ import annotations

import math
import re
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from html import escape

from ._report_assets import CSS, SCRIPT
from ._report_model import (
    ABANDONED,
    FAILED,
    LOST,
    OK,
    RETRIED,
    RUNNING,
    SKIPPED,
    Attempt,
    RunRecord,
)

__all__ = ["render"]

MAX_DRAWN = 20_000  # bars in the timeline; beyond this the browser struggles
MAX_ROWS = 20_000  # rows in the attempts table
MAX_FAILURES = 100  # failures written out in full
MAX_LANES = 24  # rows per worker: more concurrent tasks than this overlap

# Label colours (no red or orange: those mean failed and retried).
PALETTE = (
    "#4e79a7",
    "#59a14f",
    "#76b7b2",
    "#b07aa1",
    "#9c755f",
    "#edc948",
    "#ff9da7",
    "#86bcb6",
    "#8cd17d",
    "#a0cbe8",
    "#d4a6c8",
    "#79706e",
)
STATUS_STYLE = {
    FAILED: 'fill="#e15759" stroke="#8f1d1f"',
    RETRIED: 'fill="#f28e2b" stroke="#9a4f05" stroke-dasharray="3 2"',
    ABANDONED: 'fill="url(#abandoned)" stroke="#888"',
    RUNNING: 'fill="url(#abandoned)" stroke="#888"',
}
STATUS_TEXT = {
    OK: "ok",
    FAILED: "failed",
    RETRIED: "failed, retried",
    LOST: "result lost, recomputed",
    SKIPPED: "skipped (an ancestor failed)",
    ABANDONED: "abandoned (the run stopped)",
    RUNNING: "running",
}

# Timeline geometry, in SVG user units (the picture scales to the page width).
WIDTH = 1060
GUTTER = 110  # worker names
RIGHT = 16
TOP = 26  # the time axis
ROW = 14
BAR = 11
LANE_GAP = 8


def render(record: RunRecord) -> str:
    """The whole page for ``record``."""
    colors = _label_colors(record)
    failed = record.error is not None
    title = f"dispatcher report: {record.executor}, {record.started_at:%Y-%m-%d %H:%M:%S}"
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{escape(title)}</title>",
        f"<style>{CSS}</style></head><body>",
        "<header>",
        f'<h1>dispatcher run report <span class="badge {"bad" if failed else "good"}">'
        f"{'failed' if failed else 'completed'}</span></h1>",
        f'<p class="sub">executor <b>{escape(record.executor)}</b> · started '
        f"{record.started_at:%Y-%m-%d %H:%M:%S %Z} · wall time {_seconds(record.wall)}</p>",
    ]
    if record.error is not None:
        parts.append(f'<p class="error">The run stopped: {escape(record.error)}</p>')
    parts.append("</header>")
    parts.append(_cards(record))
    parts.append(_timeline(record, colors))
    parts.append(_by_label(record, colors))
    parts.append(_by_worker(record))
    parts.append(_failures(record))
    parts.append(_attempts_table(record, colors))
    parts.append(f"<script>{SCRIPT}</script></body></html>")
    return "\n".join(parts) + "\n"


# -- summary ---------------------------------------------------------------------------------


def _final(record: RunRecord) -> dict[int, Attempt]:
    """Each task's last attempt: what it ended as."""
    final: dict[int, Attempt] = {}
    for attempt in record.attempts:
        final[attempt.task] = attempt
    return final


def _cards(record: RunRecord) -> str:
    final = _final(record)
    count: dict[str, int] = defaultdict(int)
    for attempt in final.values():
        count[attempt.status] += 1
    retries = sum(1 for a in record.attempts if a.status in (RETRIED, LOST))
    stopped = count[ABANDONED] + count[RUNNING]
    not_run = max(0, record.total - record.tasks)
    workers = {a.worker for a in record.attempts if a.status != SKIPPED}
    cards = [
        ("tasks", f"{record.total:,}", "nodes in the graph"),
        ("completed", f"{count[OK] + count[LOST]:,}", ""),
        ("failed", f"{count[FAILED]:,}", "bad" if count[FAILED] else ""),
        ("skipped", f"{count[SKIPPED]:,}", "warn" if count[SKIPPED] else ""),
        ("retries", f"{retries:,}", "warn" if retries else ""),
        ("abandoned", f"{stopped:,}", "warn" if stopped else ""),
        ("not run", f"{not_run:,}", "warn" if not_run else ""),
        ("workers", f"{len(workers):,}", ""),
        ("wall time", _seconds(record.wall), ""),
    ]
    items = []
    for name, value, mood in cards:
        cls = mood if mood in ("bad", "warn") else ""
        items.append(
            f'<div class="card {cls}"><div class="v">{escape(value)}</div>'
            f'<div class="k">{escape(name)}</div></div>'
        )
    return '<section class="cards">' + "".join(items) + "</section>"


# -- timeline ------------------------------------------------------------------------------


def _timeline(record: RunRecord, colors: dict[str, str]) -> str:
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

    lanes = _lanes(drawn)
    body: list[str] = []
    y = TOP
    for i, (worker, rows) in enumerate(lanes):
        height = len(rows) * ROW + LANE_GAP
        if i % 2 == 0:
            body.append(
                f'<rect x="0" y="{y - LANE_GAP / 2:.1f}" width="{WIDTH}" height="{height}" '
                'fill="#f4f6f9"/>'
            )
        middle = y + len(rows) * ROW / 2
        body.append(
            f'<text x="{GUTTER - 8}" y="{middle + 4:.1f}" text-anchor="end" class="w">'
            f"{escape(_clip(worker, 16))}</text>"
        )
        for r, row in enumerate(rows):
            top = y + r * ROW
            for attempt in row:
                body.append(_bar(attempt, record, colors, x, top))
        y += height
    height = y + 4
    axis = _axis(span, x, height)
    legend = _legend(record, colors)
    return (
        "<section><h2>Timeline</h2>"
        '<p class="hint">One band per worker; tasks that overlap in time stack. A bar is as '
        "long as the call took on the worker and ends when the caller learned of its end; a "
        "thin line before it is the time since the task was handed to the worker (moving its "
        "inputs, waiting in the worker's queue). Hover over a bar for details.</p>"
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


def _lanes(attempts: Sequence[Attempt]) -> list[tuple[str, list[list[Attempt]]]]:
    """Per worker, rows of attempts that do not overlap (greedy interval partitioning)."""
    by_worker: dict[str, list[Attempt]] = defaultdict(list)
    for attempt in attempts:
        by_worker[attempt.worker].append(attempt)
    out = []
    for worker in sorted(by_worker, key=_worker_order):
        rows: list[list[Attempt]] = []
        ends: list[float] = []
        for attempt in sorted(by_worker[worker], key=lambda a: (a.start, a.task)):
            stop = attempt.end if attempt.end is not None else attempt.start
            free = next((r for r, row_end in enumerate(ends) if row_end <= attempt.start), None)
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


def _worker_order(name: str) -> tuple[int, list[object]]:
    # The caller first, then workers in natural order: mp-2 before mp-10.
    parts: list[object] = [int(p) if p.isdigit() else p for p in re.split(r"(\d+)", name)]
    return (0 if name == "main" else 1, parts)


def _bar(
    attempt: Attempt,
    record: RunRecord,
    colors: dict[str, str],
    x: Callable[[float], float],
    top: float,
) -> str:
    label = record.labels[attempt.task]
    end = attempt.end if attempt.end is not None else attempt.start
    begin = attempt.run_start
    x0, x1, xs = x(begin), x(end), x(attempt.start)
    width = max(x1 - x0, 1.2)
    style = STATUS_STYLE.get(attempt.status)
    if style is None:
        style = f'fill="{colors[label]}"'
        if attempt.status == LOST:
            style += ' fill-opacity="0.35" stroke="#555" stroke-dasharray="2 2"'
    tip = _tooltip(attempt, record)
    wait = ""
    if x0 - xs >= 1.0:
        mid = top + BAR / 2
        wait = f'<line x1="{xs:.1f}" y1="{mid:.1f}" x2="{x0:.1f}" y2="{mid:.1f}" class="wait"/>'
    return (
        f'<g>{wait}<rect x="{x0:.2f}" y="{top:.1f}" width="{width:.2f}" height="{BAR}" '
        f'rx="1.5" {style}><title>{escape(tip)}</title></rect></g>'
    )


def _described(record: RunRecord, task: int) -> str:
    # A record made before descriptions were kept has labels only.
    return record.descriptions[task] if task < len(record.descriptions) else record.labels[task]


def _tooltip(attempt: Attempt, record: RunRecord) -> str:
    lines = [
        f"{_described(record, attempt.task)} ({record.kinds[attempt.task]})",
        f"worker {attempt.worker}, attempt {attempt.number}",
        f"handed over at {_seconds(attempt.start)}",
    ]
    if attempt.end is not None:
        lines.append(f"ended at {_seconds(attempt.end)}")
    if attempt.duration is not None:
        lines.append(f"ran {_seconds(attempt.duration)}")
    if attempt.nbytes is not None:
        lines.append(f"result {_bytes(attempt.nbytes)}")
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
            f"{escape(_seconds(t, step))}</text>"
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
        items.append(f'<span><i style="background:{color}"></i>{escape(_clip(label, 40))}</span>')
    if len(colors) > 12:
        items.append(f"<span>… {len(colors) - 12} more labels</span>")
    items.append('<span><i style="background:#e15759"></i>failed</span>')
    items.append('<span><i style="background:#f28e2b"></i>failed, retried</span>')
    items.append('<span><i class="lost"></i>result lost, recomputed</span>')
    items.append('<span><i class="abandoned"></i>abandoned</span>')
    return '<div class="legend">' + "".join(items) + "</div>"


# -- tables ----------------------------------------------------------------------------------


def _by_label(record: RunRecord, colors: dict[str, str]) -> str:
    stats: dict[tuple[str, str], dict[str, float]] = {}
    final = _final(record)
    for attempt in record.attempts:
        key = (record.labels[attempt.task], record.kinds[attempt.task])
        s = stats.setdefault(key, defaultdict(float))
        if attempt.status in (RETRIED, LOST):
            s["retries"] += 1
        if attempt.duration is not None:
            s["time"] += attempt.duration
            s["max"] = max(s["max"], attempt.duration)
            s["timed"] += 1
    for task, attempt in final.items():
        s = stats[(record.labels[task], record.kinds[task])]
        s["tasks"] += 1
        s[attempt.status] += 1
    rows = []
    for (label, kind), s in sorted(stats.items(), key=lambda kv: -kv[1]["time"]):
        mean = s["time"] / s["timed"] if s["timed"] else None
        rows.append(
            [
                _td(f'<i class="sw" style="background:{colors[label]}"></i>{escape(label)}', "lab"),
                _td(escape(kind)),
                _num(s["tasks"]),
                _num(s[OK] + s[LOST]),
                _num(s[FAILED], "bad"),
                _num(s[SKIPPED], "warn"),
                _num(s["retries"], "warn"),
                _time_cell(s["time"] if s["timed"] else None),
                _time_cell(mean),
                _time_cell(s["max"] if s["timed"] else None),
            ]
        )
    head = [
        "label",
        "kind",
        "tasks",
        "ok",
        "failed",
        "skipped",
        "retries",
        "total time",
        "mean",
        "max",
    ]
    table = _table(head, rows, set(range(2, len(head))))
    return "<section><h2>By label</h2>" + table + "</section>"


def _by_worker(record: RunRecord) -> str:
    stats: dict[str, dict[str, float]] = {}
    wall = record.wall or 1e-9
    for attempt in record.attempts:
        if attempt.status == SKIPPED:
            continue
        s = stats.setdefault(attempt.worker, defaultdict(float))
        s["attempts"] += 1
        if attempt.status == FAILED:
            s["failed"] += 1
        if attempt.status == RETRIED:
            s["retried"] += 1
        if attempt.duration is not None:
            s["busy"] += attempt.duration
        if attempt.nbytes is not None:
            s["bytes"] += attempt.nbytes
    rows = []
    for worker in sorted(stats, key=_worker_order):
        s = stats[worker]
        rows.append(
            [
                _td(escape(worker)),
                _num(s["attempts"]),
                _num(s["failed"], "bad"),
                _num(s["retried"], "warn"),
                _time_cell(s["busy"]),
                _td(f"{100 * s['busy'] / wall:.0f}%", "n", s["busy"] / wall),
                _td(_bytes(int(s["bytes"])) if s["bytes"] else "", "n", s["bytes"]),
            ]
        )
    head = ["worker", "attempts", "failed", "retried", "busy", "busy / wall", "results"]
    hint = (
        '<p class="hint">Busy is the sum of call durations; above 100% means tasks ran '
        "concurrently on that worker (threads, coroutines, slots).</p>"
    )
    table = _table(head, rows, set(range(1, len(head))))
    return "<section><h2>By worker</h2>" + hint + table + "</section>"


def _failures(record: RunRecord) -> str:
    failed = [a for a in record.attempts if a.status in (FAILED, RETRIED)]
    skipped = sum(1 for a in record.attempts if a.status == SKIPPED)
    if not failed and not skipped:
        return ""
    items = []
    for attempt in failed[:MAX_FAILURES]:
        label = _described(record, attempt.task)
        what = "failed" if attempt.status == FAILED else "failed and was retried"
        text = attempt.details or attempt.error or ""
        items.append(
            f"<details {'open' if attempt.status == FAILED else ''}><summary>"
            f"<b>{escape(label)}</b> {what} on {escape(attempt.worker)} "
            f"(attempt {attempt.number}): {escape(attempt.error or '')}</summary>"
            f"<pre>{escape(text)}</pre></details>"
        )
    more = ""
    if len(failed) > MAX_FAILURES:
        more = f'<p class="note">… and {len(failed) - MAX_FAILURES:,} more.</p>'
    skip_note = ""
    if skipped:
        skip_note = (
            f"<p>{skipped:,} task{'s' if skipped != 1 else ''} did not run because an "
            "ancestor failed (status “skipped” below).</p>"
        )
    return "<section><h2>Failures</h2>" + "".join(items) + more + skip_note + "</section>"


def _attempts_table(record: RunRecord, colors: dict[str, str]) -> str:
    attempts = sorted(record.attempts, key=lambda a: (a.start, a.task))
    note = ""
    if len(attempts) > MAX_ROWS:
        note = f'<p class="note">The first {MAX_ROWS:,} of {len(attempts):,} attempts.</p>'
        attempts = attempts[:MAX_ROWS]
    rows = []
    for a in attempts:
        label = record.labels[a.task]
        waited = a.run_start - a.start if a.end is not None and a.duration is not None else None
        status_class = {FAILED: "bad", RETRIED: "warn", SKIPPED: "warn", LOST: "warn"}.get(
            a.status, ""
        )
        rows.append(
            [
                _td(str(a.task), "n", a.task),
                _td(
                    f'<i class="sw" style="background:{colors[label]}"></i>'
                    + escape(_described(record, a.task)),
                    "lab",
                ),
                _td(escape(record.kinds[a.task])),
                _td(escape(a.worker)),
                _num(a.number),
                _time_cell(a.start),
                _time_cell(a.end),
                _time_cell(a.duration),
                _time_cell(waited),
                _td(escape(STATUS_TEXT.get(a.status, a.status)), status_class),
                _td(_bytes(a.nbytes) if a.nbytes is not None else "", "n", a.nbytes or 0),
                _td(escape(a.error or ""), "err"),
            ]
        )
    head = [
        "#",
        "label",
        "kind",
        "worker",
        "attempt",
        "start",
        "end",
        "ran",
        "waited",
        "status",
        "result",
        "error",
    ]
    opened = " open" if len(attempts) <= 200 else ""
    return (
        f"<section><details{opened}><summary><h2>Every task attempt "
        f"({len(record.attempts):,})</h2></summary>"
        + note
        + _table(head, rows, {0, 4, 5, 6, 7, 8, 10})
        + "</details></section>"
    )


def _table(head: Sequence[str], rows: Iterable[Sequence[str]], numeric: set[int]) -> str:
    """A sortable table; ``rows`` hold finished ``<td>`` cells, ``numeric`` the right-aligned
    columns' indexes."""
    ths = "".join(
        f'<th class="n">{escape(h)}</th>' if i in numeric else f"<th>{escape(h)}</th>"
        for i, h in enumerate(head)
    )
    body = "".join("<tr>" + "".join(row) + "</tr>" for row in rows)
    return f'<table class="sortable"><thead><tr>{ths}</tr></thead><tbody>{body}</tbody></table>'


def _td(html: str, cls: str = "", value: float | None = None) -> str:
    """A cell: ``html`` is already escaped; ``value`` is what the column sorts by."""
    attrs = f' class="{cls}"' if cls else ""
    if value is not None:
        attrs += f' data-v="{value:.9g}"'
    return f"<td{attrs}>{html}</td>"


# -- formatting ----------------------------------------------------------------------------


def _label_colors(record: RunRecord) -> dict[str, str]:
    colors: dict[str, str] = {}
    for label in record.labels:
        if label not in colors:
            colors[label] = PALETTE[len(colors) % len(PALETTE)]
    return colors


def _seconds(t: float, step: float | None = None) -> str:
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


def _time_cell(t: float | None) -> str:
    if t is None:
        return _td("", "n", -1)
    return _td(escape(_seconds(t)), "n", t)


def _num(value: float, mood: str = "") -> str:
    return _td(f"{value:,.0f}", f"n {mood}" if value and mood else "n", value)


def _bytes(n: int) -> str:
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"


def _clip(text: str, n: int) -> str:
    return text if len(text) <= n else text[: n - 1] + "…"
