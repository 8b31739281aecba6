"""The HTML page of a run report: summary, per-worker timeline (inline SVG), tables.

Everything is inline — styles, the SVG, a few lines of script that sort the tables — so the
page works offline and from a mail attachment; without scripts it loses only the sorting.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from html import escape

from ._hosts import worker_host
from ._report_assets import CSS, SCRIPT
from ._report_format import STATUS_TEXT, hosts_of, seconds, size, worker_order
from ._report_model import (
    ABANDONED,
    CACHED,
    FAILED,
    LOST,
    OK,
    RETRIED,
    RUNNING,
    SKIPPED,
    Attempt,
    RunRecord,
)
from ._report_timeline import spans, timeline

__all__ = ["render"]

MAX_ROWS = 20_000  # rows in the attempts table
MAX_FAILURES = 100  # failures written out in full

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


def render(record: RunRecord) -> str:
    """The whole page for ``record``."""
    colors = _label_colors(record)
    title = f"dispatcher report: {record.executor}, {record.started_at:%Y-%m-%d %H:%M:%S}"
    mood, outcome = _outcome(record)
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{escape(title)}</title>",
        f"<style>{CSS}</style></head><body>",
        "<header>",
        f'<h1>dispatcher run report <span class="badge {mood}">{escape(outcome)}</span></h1>',
        f'<p class="sub">executor <b>{escape(record.executor)}</b> · started '
        f"{record.started_at:%Y-%m-%d %H:%M:%S %Z} · wall time {seconds(record.wall)}</p>",
    ]
    if record.error is not None:
        parts.append(f'<p class="error">The run stopped: {escape(record.error)}</p>')
    parts.append("</header>")
    parts.append(_cards(record))
    parts.append(timeline(record, colors))
    parts.append(_by_label(record, colors))
    parts.append(_by_worker(record))
    parts.append(_links(record))
    parts.append(_failures(record))
    parts.append(_attempts_table(record, colors))
    parts.append(f"<script>{SCRIPT}</script></body></html>")
    return "\n".join(parts) + "\n"


# -- summary ---------------------------------------------------------------------------------


def _outcome(record: RunRecord) -> tuple[str, str]:
    """The badge: its colour class and its words."""
    if record.error is not None:
        return "bad", "failed"
    failures = sum(1 for a in _final(record).values() if a.status == FAILED)
    if failures:
        # throw=False: the run went to its end, but not every node produced a value.
        return "warn", f"completed with {failures:,} failure{'s' if failures != 1 else ''}"
    return "good", "completed"


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
    hosts = len(hosts_of(workers))
    cards = [
        ("tasks", f"{record.total:,}", "nodes in the graph"),
        ("completed", f"{count[OK] + count[LOST]:,}", ""),
        ("cached", f"{count[CACHED]:,}", "cached" if count[CACHED] else ""),
        ("failed", f"{count[FAILED]:,}", "bad" if count[FAILED] else ""),
        ("skipped", f"{count[SKIPPED]:,}", "warn" if count[SKIPPED] else ""),
        ("retries", f"{retries:,}", "warn" if retries else ""),
        ("abandoned", f"{stopped:,}", "warn" if stopped else ""),
        ("not run", f"{not_run:,}", "warn" if not_run else ""),
        ("planned again", f"{record.replans:,}", "warn") if record.replans else None,
        ("workers", f"{len(workers):,}", ""),
        ("hosts", f"{hosts:,}", "") if hosts > 1 else None,
        ("wall time", seconds(record.wall), ""),
    ]
    items = []
    for name, value, mood in filter(None, cards):
        cls = mood if mood in ("bad", "warn", "cached") else ""
        items.append(
            f'<div class="card {cls}"><div class="v">{escape(value)}</div>'
            f'<div class="k">{escape(name)}</div></div>'
        )
    return '<section class="cards">' + "".join(items) + "</section>"


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
    spread = len(hosts_of(stats)) > 1
    for worker in sorted(stats, key=worker_order):
        s = stats[worker]
        rows.append(
            [
                *([_td(escape(worker_host(worker) or ""))] if spread else []),
                _td(escape(worker)),
                _num(s["attempts"]),
                _num(s["failed"], "bad"),
                _num(s["retried"], "warn"),
                _time_cell(s["busy"]),
                _td(f"{100 * s['busy'] / wall:.0f}%", "n", s["busy"] / wall),
                _td(size(int(s["bytes"])) if s["bytes"] else "", "n", s["bytes"]),
            ]
        )
    head = ["worker", "attempts", "failed", "retried", "busy", "busy / wall", "results"]
    head = ["host", *head] if spread else head
    hint = (
        '<p class="hint">Busy is the sum of call durations; above 100% means tasks ran '
        "concurrently on that worker (threads, coroutines, slots).</p>"
    )
    table = _table(head, rows, set(range(1 + spread, len(head))))
    return "<section><h2>By worker</h2>" + hint + table + "</section>"


def _links(record: RunRecord) -> str:
    """What placement took a move to cost, per class of link, and whether it measured it."""
    if not record.links:
        return ""
    rows = []
    for label, (latency, bandwidth, samples) in record.links.items():
        rows.append(
            [
                _td(escape(label)),
                _td(escape(seconds(latency)), "n", latency),
                _td(f"{bandwidth / 1e9:.3g} GB/s", "n", bandwidth),
                _td(f"measured, {samples:,} fetches" if samples else "assumed", "", samples),
            ]
        )
    hint = (
        '<p class="hint">What placement takes moving a result between two workers to cost: '
        "latency plus bytes at the bandwidth, fitted to the fetches the workers timed (the "
        "assumed figures until there are enough).</p>"
    )
    table = _table(["link", "latency", "bandwidth", "from"], rows, {1, 2})
    return "<section><h2>Links</h2>" + hint + table + "</section>"


def _failures(record: RunRecord) -> str:
    failed = [a for a in record.attempts if a.status in (FAILED, RETRIED)]
    skipped = sum(1 for a in record.attempts if a.status == SKIPPED)
    if not failed and not skipped:
        return ""
    items = []
    for attempt in failed[:MAX_FAILURES]:
        label = record.described(attempt.task)
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
    where = spans([a for a in attempts if a.status != SKIPPED], record.in_order)
    note = ""
    if len(attempts) > MAX_ROWS:
        note = f'<p class="note">The first {MAX_ROWS:,} of {len(attempts):,} attempts.</p>'
        attempts = attempts[:MAX_ROWS]
    rows = []
    for a in attempts:
        label = record.labels[a.task]
        span = where.get(id(a))
        waited = span[0] - a.start if span is not None and span[2] else None
        status_class = {FAILED: "bad", RETRIED: "warn", SKIPPED: "warn", LOST: "warn"}.get(
            a.status, ""
        )
        rows.append(
            [
                _td(str(a.task), "n", a.task),
                _td(
                    f'<i class="sw" style="background:{colors[label]}"></i>'
                    + escape(record.described(a.task)),
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
                _td(size(a.nbytes) if a.nbytes is not None else "", "n", a.nbytes or 0),
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


def _time_cell(t: float | None) -> str:
    if t is None:
        return _td("", "n", -1)
    return _td(escape(seconds(t)), "n", t)


def _num(value: float, mood: str = "") -> str:
    return _td(f"{value:,.0f}", f"n {mood}" if value and mood else "n", value)
