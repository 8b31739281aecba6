"""Every example runs, as a program and through the command line, and says what it should."""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from dispatcher import available_executors

pytestmark = pytest.mark.timeout(120)

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
Cli = Callable[..., tuple[int, str, str]]

PIPELINE_TOTAL = "  total     16,000   454,274.86"


def example(
    name: str, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        [sys.executable, str(EXAMPLES / name), *args],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        timeout=100,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
    return done


def test_every_example_is_tested() -> None:
    tested = {"pipeline.py", "http_fanout.py", "sweep.py", "cache_rerun.py"}
    assert {p.name for p in EXAMPLES.glob("*.py")} == tested


# -- cache_rerun -------------------------------------------------------------------------------


@pytest.mark.parametrize("executor", [None, "sync"], ids=["default", "sync"])
def test_cache_rerun(executor: str | None) -> None:
    args = [] if executor is None else ["--executor", executor]
    lines = example("cache_rerun.py", *args).stdout.splitlines()
    assert lines == [
        "first run : total = 6; 7 tasks ran ['count_words', 'load', 'total'], "
        "0 read from the cache",
        "after edit: total = 3; 4 tasks ran ['count_words', 'total'], 3 read from the cache",
        "unchanged : total = 3; 0 tasks ran [], 1 read from the cache",
    ]


# -- pipeline ----------------------------------------------------------------------------------


@pytest.mark.parametrize("executor", [None, "sync", "async"], ids=["default", "sync", "async"])
def test_pipeline(tmp_path: Path, executor: str | None) -> None:
    args = [] if executor is None else ["--executor", executor]
    done = example("pipeline.py", *args, env={"TMPDIR": str(tmp_path)})
    lines = done.stdout.splitlines()
    default = "mp" if "mp" in available_executors() else "async"
    assert lines[0].startswith(f"8 order files parsed on {executor or default!r} in ")
    assert lines[1].split() == ["region", "orders", "revenue"]
    assert [line.split()[0] for line in lines[2:6]] == ["east", "north", "south", "west"]
    assert lines[6] == PIPELINE_TOTAL
    assert len(lines) == 7  # short: it is the first thing a newcomer runs
    assert list(tmp_path.iterdir()) == []  # the graph removed its working directory


def test_pipeline_through_the_command_line(cli: Cli, tmp_path: Path) -> None:
    report = tmp_path / "pipeline.html"
    status, out, _ = cli("run", f"{EXAMPLES}/pipeline.py:pipeline", "--report", report)
    assert status == 0
    assert out.startswith("{'east': {'orders': 4015, 'revenue': 113810.52},")
    text = report.read_text()
    for label in ("make_workdir", "write_orders", "parse", "combine", "cleanup"):
        assert label in text


def test_pipeline_graph(cli: Cli) -> None:
    status, out, _ = cli("graph", f"{EXAMPLES}/pipeline.py:pipeline")
    assert status == 0
    assert out.count('label="parse(write_orders(') == 8
    # directory -> 8 writes -> 8 parses -> combine; directory and combine -> cleanup
    assert out.count("->") == 8 + 8 + 8 + 2


# -- http fan-out ------------------------------------------------------------------------------


def test_http_fanout() -> None:
    lines = example("http_fanout.py").stdout.splitlines()
    assert lines[0].startswith("fetched 20 items from http://127.0.0.1:")
    assert lines[2] == "  retried after a 503: /item/3, /item/11"
    assert lines[3] == "  sum of values: 2470"


def test_http_fanout_through_the_command_line(cli: Cli) -> None:
    status, out, _ = cli("run", f"{EXAMPLES}/http_fanout.py:fanout", "--executor", "async")
    assert (status, out) == (0, "{'items': 20, 'sum of values': 2470}\n")


# -- sweep -------------------------------------------------------------------------------------

# The strongest response is at resonance with the least damping (peak ~ 1 / (2 * 0.05)).
SWEEP_ANSWER = "{'damping': 0.05, 'drive': 1.0, 'peak': 10.0000"


def test_sweep_on_every_installed_executor() -> None:
    lines = example("sweep.py").stdout.splitlines()
    installed = available_executors()
    names = [n for n in ("sync", "async", "mp", "mpi") if n in installed]
    assert lines[0] == f"sweep of 24 points (damping x drive) on {', '.join(names)}"
    rows = {line.split()[0]: line for line in lines[1:-1]}
    assert list(rows) == names
    ran = [n for n in names if "skipped" not in rows[n]]
    answers = {rows[name].split(maxsplit=3)[3] for name in ran}
    assert len(answers) == 1
    assert answers.pop().startswith(SWEEP_ANSWER)
    assert {"sync", "async"} <= set(ran)
    if "mp" in installed:
        assert "mp" in ran
    if "mpi" in installed:  # not launched with mpiexec here
        assert "mpi" not in ran
        assert "mpiexec" in rows["mpi"]  # the reason says how to launch it
    assert lines[-1] == f"same answer on {', '.join(ran)}"


@pytest.mark.parametrize("executor", ["sync", "async"])
def test_sweep_on_one_executor(executor: str) -> None:
    lines = example("sweep.py", "--executor", executor).stdout.splitlines()
    assert lines[1].startswith(f"  {executor}")
    assert SWEEP_ANSWER in lines[1]


def test_sweep_through_the_command_line(cli: Cli) -> None:
    status, out, _ = cli("run", f"{EXAMPLES}/sweep.py:sweep", "-e", "sync")
    assert status == 0
    assert out.startswith(SWEEP_ANSWER)


def _mpiexec() -> str | None:
    beside = Path(sys.executable).parent / "mpiexec"
    return str(beside) if beside.exists() else shutil.which("mpiexec")


@pytest.mark.mpi
@pytest.mark.skipif(
    importlib.util.find_spec("dispatcher_mpi") is None, reason="dispatcher-mpi is not installed"
)
@pytest.mark.skipif(_mpiexec() is None, reason="no mpiexec")
def test_sweep_under_mpiexec() -> None:
    mpiexec = _mpiexec()
    assert mpiexec is not None
    done = subprocess.run(
        [mpiexec, "-n", "3", sys.executable, "-m", "dispatcher_mpi", str(EXAMPLES / "sweep.py")],
        capture_output=True,
        text=True,
        timeout=100,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    rows = {line.split()[0]: line for line in lines[1:-1]}
    assert SWEEP_ANSWER in rows["mpi"]
    assert lines[-1].startswith("same answer on sync, async")
    assert lines[-1].endswith("mpi")
