"""Workers on several hosts: the report groups them by host, the progress bar counts hosts."""

from __future__ import annotations

import io
import re
from pathlib import Path
from typing import Any

import pytest

from dispatcher import Op
from dispatcher._progress import ProgressBar
from dispatcher._report import ReportWriter
from dispatcher.testing import FakeTransport, fake_executor, tasks

pytestmark = pytest.mark.timeout(60)


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


class HostedFake(FakeTransport):
    """Four pretend workers named as a transport names workers on two hosts, listed in
    an order that is not the hosts'."""

    NAMES = ("rank-1@node1", "rank-2@node2", "rank-3@node1", "rank-4@node2")

    def __init__(self, **options: Any) -> None:
        super().__init__(workers=len(self.NAMES), **options)
        self.names = list(self.NAMES)
        self.stores = {name: {} for name in self.names}


def spread_run(**options: Any) -> Any:
    # Slots of one: twelve sources at once fill every worker.
    with fake_executor(HostedFake(slots=1)) as ex:
        return ex.run([Op(tasks.inc, i) for i in range(12)], **options)


def test_the_report_groups_workers_by_host(tmp_path: Path) -> None:
    writer = ReportWriter(tmp_path / "r.html")
    spread_run(plugins=[writer])
    text = (tmp_path / "r.html").read_text()
    assert writer.record is not None
    assert {a.worker for a in writer.record.attempts} == set(HostedFake.NAMES)
    section = text.split("<h2>By worker</h2>", 1)[1].split("</section>", 1)[0]
    assert "<th>host</th>" in section
    rows = re.findall(r"<tr><td>(node\d)</td><td>(rank-\d@node\d)</td>", section)
    assert rows == [
        ("node1", "rank-1@node1"),
        ("node1", "rank-3@node1"),
        ("node2", "rank-2@node2"),
        ("node2", "rank-4@node2"),
    ]
    # The timeline's bands come in the same order.
    names = re.findall(r'class="w">(rank-\d@node\d)</text>', text)
    assert names == [name for _, name in rows]
    assert re.search(r'<div class="v">2</div><div class="k">hosts</div>', text)


def test_on_one_host_the_report_has_no_host_column(tmp_path: Path) -> None:
    with fake_executor(FakeTransport(workers=2, slots=1)) as ex:
        ex.run([Op(tasks.inc, i) for i in range(4)], report=tmp_path / "r.html")
    text = (tmp_path / "r.html").read_text()
    assert "<th>host</th>" not in text
    assert ">hosts<" not in text


def test_the_progress_bar_says_on_how_many_hosts_tasks_ran() -> None:
    screen = Terminal()
    bar = ProgressBar(file=screen)
    spread_run(plugins=[bar])
    assert bar.hosts == {"node1", "node2"}
    assert "hosts=2" in screen.getvalue().rstrip("\n").split("\r")[-1]


def test_status_lines_say_on_how_many_hosts_tasks_ran() -> None:
    pipe = io.StringIO()  # not a terminal: status lines, not a bar
    spread_run(plugins=[ProgressBar(file=pipe)])
    assert ", on 2 hosts" in pipe.getvalue()
