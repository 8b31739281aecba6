"""The progress bar observer: counts, a bar in terminals and notebooks, status lines
elsewhere, missing tqdm."""

from __future__ import annotations

import io
import sys
import threading
import time
import types
from typing import Any

import pytest

from dispatcher import DataNode, Op, op, run
from dispatcher._progress import ProgressBar, in_notebook
from dispatcher.testing import FakeTransport, fake_executor, tasks

pytestmark = pytest.mark.timeout(60)

pytest.importorskip("tqdm")  # an optional dependency: without it, progress=True refuses


class Terminal(io.StringIO):
    """A text stream that says it is a terminal."""

    def isatty(self) -> bool:
        return True


def diamond_with_a_failure() -> list[Any]:
    """Eight nodes: five that finish, one that fails, two skipped after it."""
    a = Op(tasks.inc, 1)
    b = Op(tasks.double, a)
    broken = Op(tasks.fail, a)
    after = Op(tasks.inc, broken)
    after2 = Op(tasks.inc, after)
    return [Op(tasks.add, b, DataNode(3)), after2, Op(tasks.identity, b)]


@pytest.mark.parametrize("executor", ["sync", "async"])
def test_counts_done_failed_and_total(executor: str) -> None:
    bar = ProgressBar(file=io.StringIO())
    results = run(diamond_with_a_failure(), executor=executor, throw=False, plugins=[bar])
    assert [r.ok for r in results] == [True, False, True]
    assert (bar.total, bar.done, bar.failed, bar.retried) == (8, 5, 3, 0)


def test_draws_done_total_failed_rate_to_a_terminal() -> None:
    screen = Terminal()
    bar = ProgressBar(file=screen)
    run(diamond_with_a_failure(), executor="sync", throw=False, plugins=[bar])
    last = screen.getvalue().rstrip("\n").split("\r")[-1]
    assert last.startswith("sync: 100%")
    assert "8/8" in last
    assert "failed=3" in last
    assert "task/s" in last
    # Which node failed, not one of those skipped after it: its label and arguments.
    assert "last=fail(inc(1))" in last
    assert bar.last_failure == "fail(inc(1))"


def test_a_pipe_gets_whole_status_lines_not_a_bar() -> None:
    pipe = io.StringIO()
    bar = ProgressBar(file=pipe)
    run([Op(tasks.inc, i) for i in range(5)], executor="sync", plugins=[bar])
    # A run shorter than the interval: just the last line.
    assert pipe.getvalue().startswith("dispatcher sync: 5/5 tasks (100%), done in ")
    assert pipe.getvalue().count("\n") == 1
    assert "\r" not in pipe.getvalue()


@op
def nap(seconds: float) -> float:
    time.sleep(seconds)
    return seconds


def test_status_lines_come_while_the_run_goes_on() -> None:
    pipe = io.StringIO()
    bar = ProgressBar(file=pipe, interval=0.05)
    with pytest.raises(ValueError):
        run(
            [nap(0.3), nap(0.3), Op(tasks.fail, nap(0.3))],
            executor="sync",
            plugins=[bar],
        )
    lines = pipe.getvalue().splitlines()
    assert "\r" not in pipe.getvalue()
    # The counts went up line by line while tasks were still running...
    during = [line for line in lines[:-1] if "elapsed" in line]
    assert any("1/4 tasks (25%)" in line for line in during), lines
    assert any("2/4 tasks (50%)" in line for line in during), lines
    # ... and nothing repeats while nothing changes (a line per change, not per tick).
    assert len(during) == len(set(line.split(", ")[0] for line in during)), lines
    assert lines[-1].startswith(
        "dispatcher sync: 4/4 tasks (100%), 1 failed (last fail(nap(0.3))), stopped after "
    )


def test_a_long_quiet_task_still_gets_a_line_now_and_then(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr("dispatcher._progress.HEARTBEAT", 0.1)
    pipe = io.StringIO()
    run([nap(0.5)], executor="sync", plugins=[ProgressBar(file=pipe, interval=0.02)])
    quiet = [
        line for line in pipe.getvalue().splitlines() if line.startswith("dispatcher sync: 0/1")
    ]
    assert len(quiet) >= 2, pipe.getvalue()  # nothing changed, yet the log shows it is alive


def test_status_lines_stop_with_the_run() -> None:
    before = {t.name for t in threading.enumerate()}
    run([Op(tasks.inc, 1)], executor="sync", plugins=[ProgressBar(file=io.StringIO())])
    assert "dispatcher-progress" not in {t.name for t in threading.enumerate()} - before


def test_enabled_forces_drawing_or_silence() -> None:
    pipe = io.StringIO()
    run([Op(tasks.inc, 1)], executor="sync", plugins=[ProgressBar(file=pipe, enabled=True)])
    assert "1/1" in pipe.getvalue()
    screen = Terminal()
    run([Op(tasks.inc, 1)], executor="sync", plugins=[ProgressBar(file=screen, enabled=False)])
    assert screen.getvalue() == ""


def test_progress_true_draws_on_stderr_when_it_is_a_terminal(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    screen = Terminal()
    monkeypatch.setattr(sys, "stderr", screen)
    assert run([Op(tasks.inc, i) for i in range(3)], executor="async", progress=True) == [1, 2, 3]
    assert "3/3" in screen.getvalue()


def test_progress_true_on_a_pipe_writes_a_status_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert run(Op(tasks.inc, 1), progress=True) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err.startswith("dispatcher async: 1/1 tasks (100%), done in ")


def test_counts_retries_and_a_recomputed_node_once() -> None:
    transport = FakeTransport(workers=2)
    transport.kill_on("double")  # the worker holding inc's result dies: inc is recomputed
    a = Op(tasks.inc, 1)
    targets = [Op(tasks.double, a), Op(tasks.inc, a)]
    bar = ProgressBar(file=io.StringIO())
    with fake_executor(transport) as ex:
        assert ex.run(targets, plugins=[bar]) == [4, 3]
    assert bar.retried >= 1
    assert (bar.total, bar.done, bar.failed) == (3, 3, 0)


def test_counts_retry_on() -> None:
    calls = []

    @op
    def flaky() -> int:
        calls.append(1)
        if len(calls) < 3:
            raise ConnectionError("again")
        return 7

    bar = ProgressBar(file=io.StringIO())
    assert run(flaky(), executor="sync", retry_on=ConnectionError, plugins=[bar]) == 7
    assert (bar.done, bar.failed, bar.retried) == (1, 0, 2)


def test_a_bar_ends_full_when_inputs_replace_nodes() -> None:
    a = Op(tasks.inc, 1)
    b = Op(tasks.double, a)
    screen = Terminal()
    bar = ProgressBar(file=screen)
    assert run(b, executor="sync", inputs={a: 10}, plugins=[bar]) == 20
    assert bar.done == 1
    assert "1/1" in screen.getvalue().split("\r")[-1]


def test_a_stopped_run_leaves_the_bar_where_it_stopped() -> None:
    screen = Terminal()
    bar = ProgressBar(file=screen)
    with pytest.raises(ValueError):
        run(diamond_with_a_failure(), executor="sync", plugins=[bar])
    assert bar.failed == 1
    assert "/8" in screen.getvalue().split("\r")[-1]


def test_one_bar_per_run_even_when_reused() -> None:
    bar = ProgressBar(file=io.StringIO())
    run([Op(tasks.inc, i) for i in range(4)], executor="sync", plugins=[bar])
    run([Op(tasks.inc, i) for i in range(2)], executor="sync", plugins=[bar])
    assert (bar.total, bar.done) == (2, 2)


def test_missing_tqdm_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "tqdm.auto", None)  # makes `import tqdm.auto` fail
    ran = []
    with pytest.raises(ModuleNotFoundError, match=r"pip install tqdm") as info:
        run(Op(ran.append, 1), progress=True)
    assert "'progress' extra" in str(info.value)
    # Into this interpreter's environment, which a bare `pip` may not be.
    assert f"{sys.executable} -m pip install tqdm" in str(info.value)
    assert ran == []  # refused before anything ran


# -- notebooks -------------------------------------------------------------------------------


def fake_ipython(monkeypatch: pytest.MonkeyPatch, kernel: bool) -> None:
    shell = types.SimpleNamespace(config={"IPKernelApp": {}} if kernel else {})
    module = types.ModuleType("IPython")
    module.get_ipython = lambda: shell  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "IPython", module)


def test_in_notebook_needs_a_kernel(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delitem(sys.modules, "IPython", raising=False)
    assert not in_notebook()
    fake_ipython(monkeypatch, kernel=False)  # a terminal IPython
    assert not in_notebook()
    fake_ipython(monkeypatch, kernel=True)
    assert in_notebook()


class FakeWidget:
    """Stands in for tqdm.auto's notebook widget; records that it was used."""

    made: list[dict[str, Any]] = []

    def __init__(self, **options: Any) -> None:
        self.made.append(options)
        self.n = 0
        self.total = options["total"]

    def set_postfix_str(self, text: str, refresh: bool = True) -> None:
        pass

    def update(self, n: int) -> None:
        self.n += n

    def close(self) -> None:
        pass


class NoWidgets(FakeWidget):
    def __init__(self, **options: Any) -> None:
        raise ImportError("IProgress not found. Please update jupyter and ipywidgets.")


def test_a_notebook_gets_the_widget_even_though_stderr_is_no_terminal(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from tqdm.std import tqdm

    fake_ipython(monkeypatch, kernel=True)
    FakeWidget.made.clear()
    monkeypatch.setattr("dispatcher._progress.load_tqdm", lambda: (FakeWidget, tqdm))
    bar = ProgressBar()
    run([Op(tasks.inc, 1), Op(tasks.inc, 2)], executor="sync", plugins=[bar])
    assert len(FakeWidget.made) == 1
    assert FakeWidget.made[0]["disable"] is False
    assert FakeWidget.made[0]["total"] == 2


def test_a_notebook_without_widgets_falls_back_to_text(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from tqdm.std import tqdm

    fake_ipython(monkeypatch, kernel=True)
    monkeypatch.setattr("dispatcher._progress.load_tqdm", lambda: (NoWidgets, tqdm))
    bar = ProgressBar()
    assert run(Op(tasks.inc, 1), executor="sync", plugins=[bar]) == 2
    assert "1/1" in capsys.readouterr().err
