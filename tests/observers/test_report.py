"""The HTML run report: every task, failures, retries, offline, written whatever happens."""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import stat
import subprocess
import sys
import threading
from datetime import datetime
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest

from dispatcher import DataNode, Op, op, run
from dispatcher import _report_html as html_module
from dispatcher import _report_timeline as timeline_module
from dispatcher._report import ReportWriter
from dispatcher._report_model import FAILED, OK, Attempt, RunRecord
from dispatcher.testing import FakeTransport, fake_executor, tasks

pytestmark = pytest.mark.timeout(60)


class Page(HTMLParser):
    """What a browser would load from elsewhere, and the tags left open."""

    VOID = {"meta", "link", "br", "img", "input", "hr", "rect", "line", "stop"}

    def __init__(self, text: str) -> None:
        super().__init__()
        self.external: list[str] = []
        self.open: list[str] = []
        self.text: list[str] = []
        self.feed(text)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        for name, value in attrs:
            if name in ("src", "href") and value and not value.startswith("#"):
                self.external.append(value)
        if tag == "link":
            self.external.append(str(attrs))
        if tag not in self.VOID:
            self.open.append(tag)

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        pass

    def handle_endtag(self, tag: str) -> None:
        if tag in self.VOID:
            return
        assert self.open, f"</{tag}> closes nothing"
        assert self.open[-1] == tag, f"</{tag}> closes <{self.open[-1]}>"
        self.open.pop()

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def labelled(func: Any, *args: Any, label: str) -> Op:
    return op(func, label=label)(*args)


def broken(x: int) -> int:
    raise ValueError(f"cannot handle {x}")


def test_every_task_is_in_the_report(tmp_path: Path) -> None:
    sources = [labelled(tasks.inc, i, label=f"source-{i}") for i in range(6)]
    doubled = [labelled(tasks.double, s, label=f"doubled-{i}") for i, s in enumerate(sources)]
    total = labelled(tasks.total, *doubled, label="the-total")
    report = tmp_path / "run.html"
    assert run(total, report=report) == 42
    text = report.read_text()
    page = Page(text)
    assert page.open == []
    assert page.external == []
    for node in [*sources, *doubled, total]:
        assert f">{node.label}<" in text, node.label
    assert "completed" in text


def test_the_record_holds_one_attempt_per_task(tmp_path: Path) -> None:
    nodes = [Op(tasks.inc, i) for i in range(5)]
    writer = ReportWriter(tmp_path / "r.html")
    run(nodes, executor="sync", plugins=[writer])
    record = writer.record
    assert record is not None
    assert record.executor == "sync"
    assert record.total == record.tasks == 5
    assert [a.status for a in record.attempts] == ["ok"] * 5
    for attempt in record.attempts:
        assert attempt.worker == "main"
        assert attempt.end is not None
        assert attempt.duration is not None
        assert 0 <= attempt.start <= attempt.end <= record.wall


def test_failures_and_skipped_tasks(tmp_path: Path) -> None:
    a = Op(tasks.inc, 1)
    bad = labelled(broken, a, label="the-broken-one")
    after = labelled(tasks.inc, bad, label="never-ran")
    fine = Op(tasks.double, a)
    writer = ReportWriter(tmp_path / "r.html")
    results = run([after, fine], executor="sync", throw=False, plugins=[writer])
    assert [r.ok for r in results] == [False, True]
    assert writer.record is not None
    status = {writer.record.labels[a.task]: a.status for a in writer.record.attempts}
    assert status["the-broken-one"] == "failed"
    assert status["never-ran"] == "skipped"
    text = (tmp_path / "r.html").read_text()
    assert "ValueError: cannot handle 2" in text
    assert "skipped (an ancestor failed)" in text
    assert "the-broken-one" in text
    assert "never-ran" in text


def test_a_failure_whose_str_fails_is_reported(tmp_path: Path) -> None:
    # The report asked str() of the error, which raised: no report was written.
    bad = Op(tasks.raise_odd, "BadStrError")
    with pytest.raises(tasks.BadStrError):
        run([bad, Op(tasks.inc, bad)], executor="sync", report=str(tmp_path / "r.html"))
    assert "BadStrError: &lt;BadStrError: str() failed&gt;" in (tmp_path / "r.html").read_text()


def test_a_failure_names_its_node_with_its_arguments(tmp_path: Path) -> None:
    def parse(name: str) -> str:
        if name == "b.txt":
            raise ValueError(name)
        return name

    nodes = [op(parse, label="parse")(name) for name in ["a.txt", "b.txt", "c.txt"]]
    writer = ReportWriter(tmp_path / "r.html")
    run(nodes, executor="sync", throw=False, plugins=[writer])
    assert writer.record is not None
    assert writer.record.descriptions == ["parse('a.txt')", "parse('b.txt')", "parse('c.txt')"]
    text = (tmp_path / "r.html").read_text()
    failures = text.split("<h2>Failures</h2>")[1].split("</section>")[0]
    # Which of the three parses failed, in the user's terms, not an internal number.
    assert "<b>parse(&#x27;b.txt&#x27;)</b> failed on main" in failures, failures
    assert not re.search(r"#\d", failures), failures


def test_retries_show_each_attempt(tmp_path: Path) -> None:
    calls = []

    @op
    def flaky() -> int:
        calls.append(1)
        if len(calls) < 3:
            raise ConnectionError(f"try {len(calls)}")
        return 7

    writer = ReportWriter(tmp_path / "r.html")
    assert run(flaky(), executor="sync", retry_on=ConnectionError, plugins=[writer]) == 7
    assert writer.record is not None
    attempts = writer.record.attempts
    assert [(a.number, a.status) for a in attempts] == [(1, "retried"), (2, "retried"), (3, "ok")]
    assert attempts[0].error == "ConnectionError: try 1"
    text = (tmp_path / "r.html").read_text()
    assert text.count("failed, retried") >= 2
    assert "ConnectionError: try 2" in text


def test_a_lost_worker_and_recomputed_results(tmp_path: Path) -> None:
    transport = FakeTransport(workers=2)
    transport.kill_on("double")
    a = Op(tasks.inc, 1)
    writer = ReportWriter(tmp_path / "r.html")
    with fake_executor(transport) as ex:
        assert ex.run([Op(tasks.double, a), Op(tasks.inc, a)], plugins=[writer]) == [4, 3]
    assert writer.record is not None
    by_node: dict[int, list[str]] = {}
    for attempt in writer.record.attempts:
        by_node.setdefault(attempt.task, []).append(attempt.status)
    # Each node ends with one success; before it, a result lost with the worker (then
    # recomputed) or a task the worker died running (then retried).
    assert len(by_node) == 3
    for statuses in by_node.values():
        assert statuses[-1] == "ok", statuses
        assert statuses.count("ok") == 1, statuses
        assert set(statuses[:-1]) <= {"lost", "retried"}, statuses
    assert any("retried" in statuses for statuses in by_node.values())
    workers = {a.worker for a in writer.record.attempts}
    assert workers <= {"fake-0", "fake-1", "main"}
    text = (tmp_path / "r.html").read_text()
    assert "WorkerLostError" in text
    assert "fake-0" in text
    assert "fake-1" in text


def test_a_stopped_run_is_reported_with_what_was_abandoned(tmp_path: Path) -> None:
    release = threading.Event()

    def slow() -> int:
        release.wait(30)
        return 1

    report = tmp_path / "r.html"
    writer = ReportWriter(report)
    try:
        with pytest.raises(ValueError, match="cannot handle 5"):
            run(
                [labelled(slow, label="slow"), Op(broken, 5)],
                executor="async",
                threads=2,
                plugins=[writer],
            )
    finally:
        release.set()
    assert writer.record is not None
    status = {writer.record.labels[a.task]: a.status for a in writer.record.attempts}
    assert status == {"slow": "abandoned", "broken": "failed"}
    text = report.read_text()
    assert "The run stopped: ValueError: cannot handle 5" in text
    assert "abandoned (the run stopped)" in text


def test_nodes_not_run_are_counted(tmp_path: Path) -> None:
    writer = ReportWriter(tmp_path / "r.html")
    chain = Op(tasks.inc, Op(tasks.inc, Op(broken, 1)))
    with pytest.raises(ValueError):
        run(chain, executor="sync", plugins=[writer])
    assert writer.record is not None
    assert (writer.record.total, writer.record.tasks) == (3, 1)
    text = (tmp_path / "r.html").read_text()
    assert re.search(r'<div class="v">2</div><div class="k">not run</div>', text)


def test_constants_and_inputs(tmp_path: Path) -> None:
    a = Op(tasks.inc, 1)
    b = Op(tasks.add, a, DataNode(5))
    writer = ReportWriter(tmp_path / "r.html")
    assert run(b, executor="sync", inputs={a: 10}, plugins=[writer]) == 15
    assert writer.record is not None
    assert sorted(writer.record.kinds) == ["DataNode", "Op"]


def test_labels_are_escaped(tmp_path: Path) -> None:
    node = labelled(tasks.inc, 1, label="<script>alert(1)</script>")
    run(node, executor="sync", report=tmp_path / "r.html")
    text = (tmp_path / "r.html").read_text()
    assert "<script>alert" not in text
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in text


def test_a_bad_path_is_refused_before_the_run(tmp_path: Path) -> None:
    ran = []
    with pytest.raises(FileNotFoundError, match="does not exist"):
        run(Op(ran.append, 1), report=tmp_path / "missing" / "r.html")
    with pytest.raises(IsADirectoryError):
        run(Op(ran.append, 1), report=tmp_path)
    assert ran == []


def test_the_file_is_replaced_whole(tmp_path: Path) -> None:
    report = tmp_path / "r.html"
    report.write_text("old")
    run(Op(tasks.inc, 1), report=str(report))
    assert report.read_text().startswith("<!DOCTYPE html>")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.html"]


def test_a_symbolic_link_is_written_through(tmp_path: Path) -> None:
    (tmp_path / "kept").mkdir()
    (tmp_path / "latest.html").symlink_to(tmp_path / "kept" / "r.html")
    run(Op(tasks.inc, 1), report=str(tmp_path / "latest.html"))
    assert (tmp_path / "latest.html").is_symlink()
    assert (tmp_path / "kept" / "r.html").read_text().startswith("<!DOCTYPE html>")


@pytest.mark.timeout(60)
def test_a_fifo_is_written_into_and_one_nobody_reads_is_no_wait(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # As a shell's redirection would (``--report /dev/stdout``): a device or a FIFO is
    # never replaced by a file; with no reader, the report is an error, not a hang.
    fifo = tmp_path / "report.fifo"
    os.mkfifo(fifo)
    fd = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)  # a reader, there before the run ends
    with os.fdopen(fd, "rb") as reader:
        fcntl.fcntl(fd, fcntl.F_SETPIPE_SZ, 1 << 20)  # (the whole report fits: no thread)
        assert run(Op(tasks.inc, 1), report=str(fifo)) == 2
        assert reader.read().startswith(b"<!DOCTYPE html>")
    assert stat.S_ISFIFO(fifo.lstat().st_mode)
    with caplog.at_level("ERROR"):
        assert run(Op(tasks.inc, 1), report=str(fifo)) == 2  # nobody reads it now
    assert stat.S_ISFIFO(fifo.lstat().st_mode)
    assert any("nothing reads the FIFO" in str(r.exc_info) + r.getMessage() for r in caplog.records)


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="no /proc/self/fd here")
def test_a_pipe_named_as_dev_stdout_names_it_is_written_into() -> None:
    r, w = os.pipe()  # /dev/stdout, when the output goes to a pipe, is such a path
    with os.fdopen(r, "rb") as reader:
        fcntl.fcntl(w, fcntl.F_SETPIPE_SZ, 1 << 20)
        try:
            assert run(Op(tasks.inc, 1), report=f"/proc/self/fd/{w}") == 2
        finally:
            os.close(w)
        assert reader.read().startswith(b"<!DOCTYPE html>")


def test_dev_stdout_redirected_to_a_file_is_appended_to(tmp_path: Path) -> None:
    # ``python prog.py >> log`` with report="/dev/stdout": the report goes where the
    # program's output goes, after it; the file is not replaced.
    log = tmp_path / "log.txt"
    log.write_text("kept\n")
    program = (
        "from dispatcher import Op, run\nprint('before', flush=True)\n"
        "run(Op(abs, -1), report='/dev/stdout')\nprint('after')\n"
    )
    with log.open("a") as out:
        subprocess.run([sys.executable, "-c", program], stdout=out, check=True, timeout=60)
    text = log.read_text()
    assert text.startswith("kept\nbefore\n<!DOCTYPE html>")
    assert text.endswith("</html>\nafter\n")


def test_a_label_that_is_not_utf8_is_escaped_not_fatal(tmp_path: Path) -> None:
    report = tmp_path / "r.html"
    run(labelled(tasks.inc, 1, label="data-\udcff.csv"), report=str(report))
    assert "data-\\udcff.csv" in report.read_text()


def test_big_runs_are_summarised(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(timeline_module, "MAX_DRAWN", 10)
    monkeypatch.setattr(html_module, "MAX_ROWS", 20)
    run([Op(tasks.inc, i) for i in range(30)], executor="sync", report=tmp_path / "r.html")
    text = (tmp_path / "r.html").read_text()
    assert "The timeline shows the first 10 of 30 task attempts." in text
    assert "The first 20 of 30 attempts." in text
    assert text.count("<rect x=") <= 10 + 5  # bars, plus the band backgrounds


# -- what the timeline draws ------------------------------------------------------------------


def bars(text: str) -> dict[str, list[tuple[float, float, float]]]:
    """Each drawn bar's (x, y, width), by the label that starts its tooltip."""
    found: dict[str, list[tuple[float, float, float]]] = {}
    pattern = r'<rect x="([\d.]+)" y="([\d.]+)" width="([\d.]+)"[^>]*><title>([^\n<]*)'
    for x, y, width, title in re.findall(pattern, text):
        found.setdefault(re.split(r"[ (]", title)[0], []).append((float(x), float(y), float(width)))
    return found


def record_of(attempts: list[Attempt], labels: list[str], in_order: bool) -> RunRecord:
    record = RunRecord("mp", len(labels), datetime(2026, 1, 1).astimezone(), in_order=in_order)
    record.labels = labels
    record.kinds = ["Op"] * len(labels)
    record.attempts = attempts
    record.wall = max(a.end or 0.0 for a in attempts)
    return record


@pytest.mark.parametrize("executor", ["sync", "async"])
def test_failed_attempts_keep_their_run_time(executor: str, tmp_path: Path) -> None:
    calls = []

    @op
    def flaky() -> int:
        calls.append(1)
        if len(calls) < 2:
            raise ConnectionError("again")
        raise KeyError("for good")

    writer = ReportWriter(tmp_path / "r.html")
    [result, skipped] = run(
        [flaky(), Op(tasks.inc, flaky())],
        executor=executor,
        throw=False,
        retry_on=ConnectionError,
        plugins=[writer],
    )
    assert not result.ok
    assert not skipped.ok
    assert writer.record is not None
    by_status = {a.status: a for a in writer.record.attempts}
    # Measured where they ran, like a success's; a skipped node never ran.
    assert by_status["retried"].duration is not None
    assert by_status["failed"].duration is not None
    assert by_status["skipped"].duration is None


def test_a_failure_is_drawn_for_its_run_time_not_its_wait() -> None:
    # Handed over together to a worker that runs one task at a time; their ends came back
    # in one batch at 0.3 s. The failed call ran 10 ms, after the 290 ms one.
    slow = Attempt(0, "mp-0", 0.0, end=0.3, duration=0.29, status=OK)
    failed = Attempt(1, "mp-0", 0.0, end=0.3, duration=0.01, status=FAILED, error="E: x")
    text = html_module.render(record_of([slow, failed], ["slow", "quick"], in_order=True))
    [(x_slow, y_slow, w_slow)] = bars(text)["slow"]
    [(x_quick, y_quick, w_quick)] = bars(text)["quick"]
    assert y_slow == y_quick  # one task at a time: one row
    assert x_quick >= x_slow + w_slow - 0.01  # after the slow one, not over its wait
    assert w_quick == pytest.approx(w_slow * 0.01 / 0.29, rel=0.01)


def test_a_worker_running_one_task_at_a_time_is_one_row() -> None:
    # Ten 10 ms tasks queued at once, their ends reported two by two.
    attempts = [
        Attempt(i, "mp-0", 0.0, end=0.02 * (i // 2 + 1), duration=0.01, status=OK)
        for i in range(10)
    ]
    labels = [f"t{i}" for i in range(10)]
    in_order = bars(html_module.render(record_of(attempts, labels, in_order=True)))
    assert len({y for drawn in in_order.values() for _, y, _ in drawn}) == 1
    # Spans are laid end to end, in the order sent.
    xs = [in_order[f"t{i}"][0][0] for i in range(10)]
    assert xs == sorted(xs)
    # Where a worker runs tasks side by side (threads), the same times are concurrent.
    side_by_side = bars(html_module.render(record_of(attempts, labels, in_order=False)))
    assert len({y for drawn in side_by_side.values() for _, y, _ in drawn}) == 2


def test_a_failure_without_a_run_time_is_a_mark_where_it_was_reported(tmp_path: Path) -> None:
    transport = FakeTransport(workers=2)
    transport.kill_on("double", times=3)  # the worker dies every time: no run time known
    writer = ReportWriter(tmp_path / "r.html")
    with fake_executor(transport) as ex:
        [result] = ex.run([Op(tasks.double, 1)], plugins=[writer], throw=False)
    assert not result.ok
    assert writer.record is not None
    assert all(a.duration is None for a in writer.record.attempts)
    text = (tmp_path / "r.html").read_text()
    assert "ran for a time nobody knows (its worker was lost)" in text
    widths = [width for _, _, width in bars(text)["double"]]
    assert widths
    assert all(width == pytest.approx(timeline_module.MARK) for width in widths)


def test_the_badge_says_how_the_run_ended(tmp_path: Path) -> None:
    def badge(targets: Any, **options: Any) -> str:
        report = tmp_path / "r.html"
        with contextlib.suppress(ValueError):
            run(targets, executor="sync", report=report, **options)
        found = re.search(r'<span class="badge (\w+)">([^<]*)</span>', report.read_text())
        assert found is not None
        return f"{found[1]}: {found[2]}"

    assert badge(Op(tasks.inc, 1)) == "good: completed"
    one = [Op(broken, 1), Op(tasks.inc, 1)]
    assert badge(one, throw=False) == "warn: completed with 1 failure"
    two = [Op(broken, 1), Op(tasks.inc, Op(broken, 2))]  # the skipped one is no failure
    assert badge(two, throw=False) == "warn: completed with 2 failures"
    assert badge(one) == "bad: failed"
