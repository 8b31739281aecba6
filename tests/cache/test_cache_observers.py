"""A hit fires dispatcher_task_cached instead of started/finished; the progress bar, the
HTML report and the command line show hits apart."""

from __future__ import annotations

import io
import os
import re
import time
import warnings
from pathlib import Path
from typing import Any

import pytest

from dispatcher import Cache, CacheWarning, DispatchGraph, hookimpl, op, run
from dispatcher._cache_cli import parse_duration
from dispatcher._cache_plan import CachePlan
from dispatcher._cli import main


def inc(x: int) -> int:
    return x + 1


class Seen:
    def __init__(self) -> None:
        self.events: list[tuple[str, str]] = []

    @hookimpl
    def dispatcher_task_started(self, node: Any) -> None:
        self.events.append(("started", node.label))

    @hookimpl
    def dispatcher_task_finished(self, node: Any) -> None:
        self.events.append(("finished", node.label))

    @hookimpl
    def dispatcher_task_cached(self, node: Any, worker: str) -> None:
        self.events.append(("cached", f"{node.label}@{worker}"))


@pytest.mark.parametrize("executor", ["sync", "async"])
def test_a_hit_fires_task_cached_only(tmp_path: Path, executor: str) -> None:
    def graph() -> Any:
        return op(inc, label="top")(op(inc, label="low")(1))

    first, second = Seen(), Seen()
    run(graph(), executor=executor, cache=tmp_path, plugins=[first])
    assert sorted(first.events) == sorted(
        [("started", "low"), ("finished", "low"), ("started", "top"), ("finished", "top")]
    )
    run(graph(), executor=executor, cache=tmp_path, plugins=[second])
    assert second.events == [("cached", "top@main")]  # and "low" was not needed at all


def test_progress_bar_counts_hits_apart(tmp_path: Path) -> None:
    pytest.importorskip("tqdm")
    from dispatcher._progress import ProgressBar

    run([op(inc)(i) for i in range(3)], executor="sync", cache=tmp_path)
    bar = ProgressBar(file=io.StringIO(), enabled=True)
    run([op(inc)(i) for i in range(5)], executor="sync", cache=tmp_path, plugins=[bar])
    assert (bar.cached, bar.done, bar.total) == (3, 2, 5)


def test_report_shows_hits_in_their_own_colour_and_tile(tmp_path: Path) -> None:
    cache, report = tmp_path / "cache", tmp_path / "run.html"
    run([op(inc)(i) for i in range(3)], executor="sync", cache=cache)
    run([op(inc)(i) for i in range(4)], executor="sync", cache=cache, report=str(report))
    html = report.read_text()
    assert '<div class="card cached"><div class="v">3</div><div class="k">cached</div>' in html
    assert html.count('fill="#17becf"') == 3
    assert "read from the cache" in html


def total(*xs: int) -> int:
    return sum(xs)


class Announced:
    """The graphs a run announced, by size, and how often it started and finished."""

    def __init__(self) -> None:
        self.graphs: list[tuple[str, int]] = []
        self.finished = 0

    @hookimpl
    def dispatcher_run_started(self, graph: Any) -> None:
        self.graphs.append(("started", len(graph)))

    @hookimpl
    def dispatcher_run_replanned(self, graph: Any) -> None:
        self.graphs.append(("replanned", len(graph)))

    @hookimpl
    def dispatcher_run_finished(self) -> None:
        self.finished += 1


def damaged_hit_mid_run(cache: Cache) -> list[Any]:
    """Targets whose first plan has five nodes, one of them a hit whose entry is found
    damaged when it is read: planned again, the run computes it from its two inputs
    (hits now), while the other targets' hits and new nodes stay what they were."""

    def targets(new: int) -> tuple[Any, list[Any]]:
        a = op(total, label="topA")(*[op(inc, label="a")(i) for i in range(2)])
        b = op(total, label="topB")(*[op(inc, label="b")(i) for i in range(10, 12)])
        return b, [b, a, *(op(inc, label="new")(new + i) for i in range(3))]

    run(targets(0)[1], executor="sync", cache=cache)
    damaged, wanted = targets(100)
    key = CachePlan(cache, DispatchGraph([damaged]), [damaged], {}).keys[0]
    entry = Path(cache.path) / "entries" / key[:2] / key
    data = bytearray(entry.read_bytes())
    data[-3] ^= 0xFF
    entry.write_bytes(bytes(data))
    return wanted


@pytest.mark.parametrize("executor", ["sync", "async"])
def test_a_run_planned_again_shows_the_totals_of_both_plans(tmp_path: Path, executor: str) -> None:
    """The bar and the report count every node of the run once: those of the first plan
    and those the damaged hit had pruned, and a node computed before the new plan, which
    reads it back from the cache, as computed."""
    pytest.importorskip("tqdm")
    from dispatcher._progress import ProgressBar

    cache = Cache(tmp_path / "cache")
    wanted = damaged_hit_mid_run(cache)
    bar, announced, report = ProgressBar(file=io.StringIO()), Announced(), tmp_path / "r.html"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", CacheWarning)
        values = run(
            wanted,
            executor=executor,
            cache=cache,
            plugins=[bar, announced],
            report=str(report),
        )
    assert values == [23, 3, 101, 102, 103]
    # One run: started and finished once, planned again once, with the pruned inputs.
    assert announced.graphs == [("started", 5), ("replanned", 7)]
    assert announced.finished == 1
    # Computed: topB and the three new nodes; read from the cache: topA and topB's inputs.
    assert (bar.total, bar.done, bar.cached, bar.failed) == (7, 4, 3, 0)
    html = report.read_text()
    found = re.findall(r'<div class="v">([^<]*)</div><div class="k">([^<]*)</div>', html)
    cards = {name: value for value, name in found}
    assert (cards["tasks"], cards["completed"], cards["cached"]) == ("7", "4", "3")
    assert (cards["not run"], cards["planned again"]) == ("0", "1")


def test_cli_cache_info_and_clear(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run([op(inc)(i) for i in range(3)], executor="sync", cache=tmp_path)
    run([op(inc)(i) for i in range(4)], executor="sync", cache=tmp_path)
    assert main(["cache", "info", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "entries  4" in out
    assert "3 hits, 1 misses" in out
    old = next((tmp_path / "entries").glob("*/*"))
    past = time.time() - 10 * 86400
    os.utime(old, (past, past))
    assert main(["cache", "clear", str(tmp_path), "--older-than", "7d"]) == 0
    assert "deleted 1 entry" in capsys.readouterr().out
    assert main(["cache", "clear", str(tmp_path)]) == 0
    assert "deleted 3 entries" in capsys.readouterr().out
    assert main(["cache", "info", str(tmp_path)]) == 0
    assert "entries  0" in capsys.readouterr().out


def test_cli_cache_info_shows_what_dead_writers_left(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # A writer killed mid-store leaves its file beside the entries; without max_bytes no
    # run lists the store, so info is where the space it takes shows.
    run(op(inc)(1), executor="sync", cache=tmp_path)
    shard = next((tmp_path / "entries").glob("*"))
    (shard / ".0123abcd.dead").write_bytes(b"x" * 3000)
    info = Cache(tmp_path).info()
    assert (info.entries, info.partial, info.partial_bytes) == (1, 1, 3000)
    assert main(["cache", "info", str(tmp_path)]) == 0
    assert "partial  1 file (2.9 KiB)" in capsys.readouterr().out
    assert main(["cache", "clear", str(tmp_path)]) == 0
    assert Cache(tmp_path).info().partial == 0


def test_cli_cache_clear_says_what_it_could_not_delete(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # A cache another user owns, say: "deleted 0 entries" and status 0 would hide it.
    run([op(inc)(i) for i in range(3)], executor="sync", cache=tmp_path)

    def refused(path: Any) -> None:
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(os, "unlink", refused)
    assert main(["cache", "clear", str(tmp_path)]) == 1
    captured = capsys.readouterr()
    assert "deleted 0 entries" in captured.out
    assert "3 entries could not be deleted" in captured.err
    monkeypatch.setattr(os, "scandir", refused)  # and one it cannot even read
    assert main(["cache", "info", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert "Permission denied" in err


def test_cli_cache_usage_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["cache", "info", str(tmp_path / "missing")]) == 2
    assert "not a directory" in capsys.readouterr().err
    (tmp_path / "notes.txt").write_text("mine")
    assert main(["cache", "clear", str(tmp_path)]) == 2
    assert "not a dispatcher cache" in capsys.readouterr().err
    assert (tmp_path / "notes.txt").exists()
    assert main(["cache", "clear", str(tmp_path), "--older-than", "soon"]) == 2


@pytest.mark.parametrize(
    "record",
    ["[1, 2]", '"text"', '{"finished": "x", "hits": "a"}', '{"finished": 1e30}', "{", ""],
    ids=["a list", "a string", "strings", "out of range", "cut short", "empty"],
)
def test_cli_cache_info_with_a_damaged_last_run_record(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], record: str
) -> None:
    # The record of the last run is the one file a reader of the cache does not check
    # for damage: whatever is in it, info shows the entries and no traceback.
    run([op(inc)(i) for i in range(2)], executor="sync", cache=tmp_path)
    (tmp_path / "last-run.json").write_text(record)
    assert main(["cache", "info", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "entries  2" in out
    assert "last run none recorded" in out


@pytest.mark.timeout(30)
def test_cli_cache_info_with_a_fifo_for_the_last_run_record(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Opened blocking, a FIFO in the record's place hung info for ever."""
    run([op(inc)(i) for i in range(2)], executor="sync", cache=tmp_path)
    (tmp_path / "last-run.json").unlink()
    os.mkfifo(tmp_path / "last-run.json")
    assert main(["cache", "info", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "entries  2" in out
    assert "last run none recorded" in out


def test_cli_run_with_a_cache(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    script = tmp_path / "pipe.py"
    script.write_text(
        "from dispatcher import op\ndef inc(x):\n    return x + 1\npipeline = op(inc)(op(inc)(1))\n"
    )
    for _ in range(2):
        assert (
            main(["run", f"{script}:pipeline", "-e", "sync", "--cache", str(tmp_path / "c")]) == 0
        )
    assert main(["cache", "info", str(tmp_path / "c")]) == 0
    assert "1 hits, 0 misses" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("text", "seconds"), [("90", 90), ("90s", 90), ("15m", 900), ("1d12h", 129600), ("2w", 1209600)]
)
def test_durations(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds
