"""A hit fires dispatcher_task_cached instead of started/finished; the progress bar, the
HTML report and the command line show hits apart."""

from __future__ import annotations

import io
import os
import time
from pathlib import Path
from typing import Any

import pytest

from dispatcher import hookimpl, op, run
from dispatcher._cache_cli import parse_duration
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


def test_cli_cache_usage_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["cache", "info", str(tmp_path / "missing")]) == 2
    assert "not a directory" in capsys.readouterr().err
    (tmp_path / "notes.txt").write_text("mine")
    assert main(["cache", "clear", str(tmp_path)]) == 2
    assert "not a dispatcher cache" in capsys.readouterr().err
    assert (tmp_path / "notes.txt").exists()
    assert main(["cache", "clear", str(tmp_path), "--older-than", "soon"]) == 2


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
