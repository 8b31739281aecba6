"""The ``dispatcher`` command: executors, run, graph; exit codes; one-line messages."""

from __future__ import annotations

import ast
import os
import signal
import stat
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

import dispatcher

pytestmark = pytest.mark.timeout(60)

Cli = Callable[..., tuple[int, str, str]]


def one_line(err: str) -> str:
    """The single line a usage mistake must produce."""
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert "Traceback" not in err
    return lines[0]


# -- executors -------------------------------------------------------------------------------


def test_executors_lists_name_distribution_version_description(cli: Cli) -> None:
    status, out, _ = cli("executors")
    assert status == 0
    lines = out.splitlines()
    assert lines[0].split() == ["NAME", "DISTRIBUTION", "VERSION", "DESCRIPTION"]
    rows = {line.split()[0]: line.split() for line in lines[1:]}
    for name in ("sync", "async"):
        assert rows[name][1] == "dispatcher-core"
        assert rows[name][2] == dispatcher.__version__
        assert len(rows[name]) > 3  # a description follows
    assert set(rows) == set(dispatcher.available_executors())


# -- run: what NAME may be -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("total", "5\n"),
        ("pair", "inc(1): 2\ninc(inc(1)): 3\n"),
        ("named", "first: 2\nsecond: 3\n"),
        ("graph", "add(inc(1), inc(inc(...))): 5\n"),
        ("build", "16\n"),
    ],
    ids=["node", "list", "dict", "graph", "function"],
)
def test_run_prints_results_in_the_targets_shape(
    cli: Cli, flow: Path, name: str, expected: str
) -> None:
    status, out, err = cli("run", f"{flow}:{name}", "--executor", "sync")
    assert (status, out, err) == (0, expected, "")


def test_run_accepts_an_op_function_without_arguments(cli: Cli, tmp_path: Path) -> None:
    path = tmp_path / "job.py"
    path.write_text("from dispatcher import op\n\n@op\ndef main():\n    return {'a': 1}\n")
    assert cli("run", f"{path}:main") == (0, "{'a': 1}\n", "")


def test_run_imports_modules_next_to_the_file_and_cleans_up(cli: Cli, tmp_path: Path) -> None:
    (tmp_path / "helpers_next_door.py").write_text("def triple(x):\n    return 3 * x\n")
    path = tmp_path / "job2.py"
    path.write_text(
        "from dispatcher import op\nfrom helpers_next_door import triple\nresult = op(triple)(14)\n"
    )
    path_before, modules_before = list(sys.path), set(sys.modules)
    environ_before = os.environ.get("PYTHONPATH")
    assert cli("run", f"{path}:result", "-e", "async", "-w", "2") == (0, "42\n", "")
    assert sys.path == path_before
    assert os.environ.get("PYTHONPATH") == environ_before
    assert not {"job2"} & (set(sys.modules) - modules_before)
    sys.modules.pop("helpers_next_door", None)


@pytest.mark.skipif("mp" not in dispatcher.available_executors(), reason="no mp executor")
def test_worker_processes_import_modules_next_to_the_file(cli: Cli, tmp_path: Path) -> None:
    (tmp_path / "helpers_for_workers.py").write_text("def triple(x):\n    return 3 * x\n")
    path = tmp_path / "on_workers.py"
    path.write_text(
        "import os\nfrom dispatcher import op\nfrom helpers_for_workers import triple\n\n"
        "@op\ndef where(x):\n    return triple(x), os.getpid()\n\n"
        "result = [where(i) for i in range(3)]\n"
    )
    status, out, _ = cli("run", f"{path}:result", "-e", "mp", "-w", "2")
    assert status == 0
    values = [ast.literal_eval(line.split(": ", 1)[1]) for line in out.splitlines()]
    assert [v[0] for v in values] == [0, 3, 6]
    assert os.getpid() not in {v[1] for v in values}
    sys.modules.pop("helpers_for_workers", None)


def test_run_twice_loads_the_file_afresh(cli: Cli, tmp_path: Path) -> None:
    path = tmp_path / "again.py"
    path.write_text("from dispatcher import DataNode\nvalue = DataNode(1)\n")
    assert cli("run", f"{path}:value")[1] == "1\n"
    path.write_text("from dispatcher import DataNode\nvalue = DataNode(2)\n")
    assert cli("run", f"{path}:value")[1] == "2\n"


def test_executor_comes_from_the_environment(
    cli: Cli, flow: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DISPATCHER_EXECUTOR", "no-such-executor")
    status, _, err = cli("run", f"{flow}:total")
    assert status == 2
    assert "'no-such-executor'" in one_line(err)
    assert cli("run", f"{flow}:total", "--executor", "sync")[0] == 0


def test_report_option_writes_the_report(cli: Cli, flow: Path, tmp_path: Path) -> None:
    report = tmp_path / "run.html"
    status, out, err = cli("run", f"{flow}:total", "--report", report)
    assert (status, out) == (0, "5\n")
    assert err == f"dispatcher: report written to {report}\n"
    text = report.read_text()
    assert "inc" in text
    assert "add" in text


def test_progress_option_writes_status_lines_when_stderr_is_not_a_terminal(
    cli: Cli, flow: Path
) -> None:
    status, out, err = cli("run", f"{flow}:total", "--progress")
    assert (status, out) == (0, "5\n")
    assert err.startswith("dispatcher async: ")
    assert "done in" in err
    assert "\r" not in err


def test_progress_option_without_tqdm_says_what_to_install(
    cli: Cli, flow: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "tqdm.auto", None)
    status, out, err = cli("run", f"{flow}:total", "--progress")
    assert (status, out) == (2, "")
    assert "pip install tqdm" in one_line(err)


# -- run: a task that fails ------------------------------------------------------------------


@pytest.mark.parametrize("executor", ["sync", "async"])
def test_task_failure_exits_1_with_the_users_traceback(cli: Cli, flow: Path, executor: str) -> None:
    status, out, err = cli("run", f"{flow}:failing", "-e", executor)
    assert status == 1
    assert out == ""
    assert "Traceback (most recent call last):" in err
    assert f'File "{flow}"' in err
    assert 'raise ValueError(f"bad value {x}")' in err
    assert "ValueError: bad value 5" in err
    assert os.path.dirname(dispatcher.__file__) not in err  # dispatcher's own frames are cut
    assert (
        err.splitlines()[-1]
        == "dispatcher: task boom(add(inc(...), inc(...))) failed on worker 'main'"
    )


@pytest.mark.parametrize("code", [0, 5])
def test_a_task_calling_sys_exit_fails_its_node_not_the_command(
    cli: Cli, tmp_path: Path, code: int
) -> None:
    # A helper that calls sys.exit() in a task: the command must not exit as it says
    # (0: a failed job looking green), but fail as for any task's exception.
    script = tmp_path / "exits.py"
    script.write_text(
        f"import sys\nfrom dispatcher import op\n\n@op\ndef check(x):\n    sys.exit({code})\n\n"
        "def g():\n    return check(-1)\n"
    )
    status, out, err = cli("run", f"{script}:g", "-e", "sync")
    assert status == 1
    assert out == ""
    assert err.splitlines()[-1] == "dispatcher: task check(-1) failed on worker 'main'"


def test_a_reader_that_stops_reading_ends_the_command_quietly(tmp_path: Path) -> None:
    script = tmp_path / "many.py"
    script.write_text(
        "from dispatcher import op\n\ndef g():\n    return [op(abs)(-i) for i in range(20000)]\n"
    )
    command = f"{sys.executable} -m dispatcher run {script}:g -e sync"
    shell = f"{command} | head -c 10 >/dev/null; echo ${{PIPESTATUS[0]}}"
    done = subprocess.run(["bash", "-c", shell], capture_output=True, text=True, timeout=60)
    assert done.stdout.strip() == "141", done.stderr
    assert "Traceback" not in done.stderr, done.stderr


def test_task_failure_still_writes_the_report(cli: Cli, flow: Path, tmp_path: Path) -> None:
    report = tmp_path / "failed.html"
    status, _, err = cli("run", f"{flow}:failing", "--report", report)
    assert status == 1
    assert "report written to" in err
    assert "ValueError: bad value 5" in report.read_text()


# -- run: usage mistakes ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["{flow}"], "expected FILE.py:NAME"),
        (["{dir}/missing.py:x"], "no such file"),
        (["{dir}:x"], "not a file"),
        (["{dir}/data.txt:x"], "expected a Python file"),
        (["{flow}:nope"], "has no 'nope'; it defines: a, b, total, pair"),
        (["{flow}:number"], "is an int (5)"),
        (["{flow}:needs"], "is a function that needs arguments"),
        (["{flow}:total", "--executor", "warp-drive"], "no executor named 'warp-drive'"),
        (["{flow}:total", "--workers", "0"], "expected at least 1"),
        (["{flow}:total", "--workers", "many"], "expected a whole number"),
        (["{flow}:total", "--report", "{dir}/no/such/dir/r.html"], "does not exist"),
        (["{flow}:total", "--report", "{dir}"], "is a directory"),
        (["{flow}:total", "--frobnicate"], "unrecognized arguments: --frobnicate"),
    ],
    ids=[
        "no-name",
        "missing-file",
        "directory",
        "not-python",
        "unknown-name",
        "not-a-node",
        "function-with-arguments",
        "unknown-executor",
        "zero-workers",
        "workers-not-a-number",
        "report-directory-missing",
        "report-is-a-directory",
        "unknown-option",
    ],
)
def test_usage_mistakes_exit_2_with_one_line(
    cli: Cli, flow: Path, tmp_path: Path, args: list[str], message: str
) -> None:
    (tmp_path / "data.txt").write_text("")
    argv = [a.format(flow=flow, dir=tmp_path) for a in args]
    status, out, err = cli("run", *argv)
    assert status == 2
    assert out == ""
    assert message in one_line(err)


def test_sync_takes_and_ignores_workers(cli: Cli, flow: Path) -> None:
    assert cli("run", f"{flow}:total", "--executor", "sync", "--workers", "2")[0] == 0


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ("x = (\n", "SyntaxError"),
        ("import no_such_module_here\n", "ModuleNotFoundError: No module named"),
    ],
    ids=["syntax-error", "import-error"],
)
def test_a_file_that_cannot_load_is_one_line(
    cli: Cli, tmp_path: Path, source: str, message: str
) -> None:
    path = tmp_path / "broken.py"
    path.write_text(source)
    status, _, err = cli("run", f"{path}:x")
    assert status == 2
    assert message in one_line(err)


def test_a_file_that_raises_shows_where_then_one_line(cli: Cli, tmp_path: Path) -> None:
    path = tmp_path / "raises.py"
    path.write_text("def helper():\n    raise RuntimeError('no config')\n\nhelper()\n")
    status, _, err = cli("run", f"{path}:x")
    assert status == 2
    assert "RuntimeError: no config" in err
    assert "importlib" not in err
    assert err.splitlines()[-1] == f"dispatcher: error: cannot load {path}: it raised RuntimeError"


def test_a_builder_that_returns_something_else(cli: Cli, tmp_path: Path) -> None:
    path = tmp_path / "builder.py"
    path.write_text("from dispatcher import DataNode\ndef make():\n    return [DataNode(1), 2]\n")
    status, _, err = cli("run", f"{path}:make")
    assert status == 2
    assert "make() in" in one_line(err)
    assert "returned a list holding an int (2), not only nodes" in err


def test_targets_nested_as_run_takes_them_run_and_print_in_their_shape(
    cli: Cli, tmp_path: Path
) -> None:
    # The command refused nested dicts and lists, which run() takes.
    path = tmp_path / "nested.py"
    path.write_text(
        "from dispatcher import DataNode\n"
        "targets = {'x': {'a': DataNode(1)}, 'y': [DataNode(2), (DataNode(3),)]}\n"
        "odd = {'x': {'a': DataNode(1), 'b': 'text'}}\n"
    )
    status, out, err = cli("run", f"{path}:targets", "--executor", "sync")
    assert status == 0, err
    assert "x: {'a': 1}" in out
    assert "y: [2, (3,)]" in out
    status, _, err = cli("run", f"{path}:odd", "--executor", "sync")
    assert status == 2
    assert "odd in" in one_line(err)
    assert "is a dict holding a str ('text'), not only nodes" in err


# -- help, version, no command ---------------------------------------------------------------


@pytest.mark.parametrize("command", [[], ["executors"], ["run"], ["graph"]])
def test_help_everywhere(cli: Cli, command: list[str]) -> None:
    status, out, _ = cli(*command, "--help")
    assert status == 0
    assert out.startswith("usage: dispatcher")


def test_help_aligns_every_command_with_its_description(cli: Cli) -> None:
    out = cli("--help")[1]
    rows = [line for line in out.splitlines() if line.startswith("    ")]
    assert [row.split()[0] for row in rows] == ["executors", "run", "graph", "cache"]
    # Each description on its command's line, all in one column.
    starts = {len(row) - len(row[4:].split(maxsplit=1)[1]) for row in rows if len(row.split()) > 1}
    assert len(starts) == 1, out
    assert all(len(row.split()) > 1 for row in rows), out


def test_run_help_names_the_options(cli: Cli) -> None:
    out = cli("run", "--help")[1]
    for option in ("--executor", "--workers", "--progress", "--report", "FILE.py:NAME"):
        assert option in out


def test_no_command_prints_help_and_exits_2(cli: Cli) -> None:
    status, out, err = cli()
    assert status == 2
    assert "usage: dispatcher" in err


def test_version(cli: Cli) -> None:
    assert cli("--version") == (0, f"dispatcher {dispatcher.__version__}\n", "")


def test_unknown_command_is_one_line(cli: Cli) -> None:
    status, _, err = cli("frobnicate")
    assert status == 2
    assert "invalid choice: 'frobnicate'" in one_line(err)


# -- graph -----------------------------------------------------------------------------------


def test_graph_writes_dot_to_stdout(cli: Cli, flow: Path) -> None:
    status, out, err = cli("graph", f"{flow}:graph")
    assert (status, err) == (0, "")
    assert out.startswith("digraph")
    # Each box says which call it is: the label and the arguments.
    assert 'label="inc(1)"' in out
    assert 'label="inc(inc(1))"' in out
    assert 'label="add(inc(1), inc(inc(...)))"' in out
    assert out.count("->") == 3


def test_graph_of_a_dict_and_of_a_builder(cli: Cli, flow: Path) -> None:
    assert cli("graph", f"{flow}:named")[1].count("label=") == 2
    assert cli("graph", f"{flow}:build")[1].count("label=") == 2  # add(inc(10), 5)


def test_graph_writes_a_dot_file(cli: Cli, flow: Path, tmp_path: Path) -> None:
    out = tmp_path / "g.dot"
    assert cli("graph", f"{flow}:total", "-o", out) == (0, "", "")
    assert out.read_text().startswith("digraph")


@pytest.mark.parametrize("suffix", [".svg", ".png"])
def test_graph_without_graphviz_says_so(
    cli: Cli, flow: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, suffix: str
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    status, _, err = cli("graph", f"{flow}:total", "-o", tmp_path / f"g{suffix}")
    assert status == 2
    assert "needs Graphviz's 'dot' program, which is not on PATH" in one_line(err)
    assert not (tmp_path / f"g{suffix}").exists()


def fake_dot(directory: Path, script: str) -> None:
    directory.mkdir()
    dot = directory / "dot"
    dot.write_text(f"#!/bin/sh\n{script}\n")
    dot.chmod(dot.stat().st_mode | stat.S_IXUSR)


def test_graph_renders_through_dot(
    cli: Cli, flow: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A stand-in for Graphviz that records its arguments and its input.
    fake_dot(tmp_path / "bin", f'echo "$@" > {tmp_path}/args; cat > {tmp_path}/input')
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}{os.pathsep}{os.environ['PATH']}")
    assert cli("graph", f"{flow}:total", "-o", tmp_path / "g.svg") == (0, "", "")
    assert (tmp_path / "args").read_text().split() == ["-Tsvg", "-o", str(tmp_path / "g.svg")]
    assert (tmp_path / "input").read_text().startswith("digraph")


def test_graph_reports_a_dot_failure(
    cli: Cli, flow: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake_dot(tmp_path / "bin", "echo 'Error: something broke' >&2; exit 3")
    monkeypatch.setenv("PATH", str(tmp_path / "bin"))
    status, _, err = cli("graph", f"{flow}:total", "-o", tmp_path / "g.png")
    assert status == 1
    assert one_line(err) == "dispatcher: error: dot failed: Error: something broke"


def test_graph_rejects_an_unknown_format(cli: Cli, flow: Path, tmp_path: Path) -> None:
    status, _, err = cli("graph", f"{flow}:total", "-o", tmp_path / "g.jpeg")
    assert status == 2
    assert "cannot tell the format from '.jpeg'" in one_line(err)


# -- as a program ----------------------------------------------------------------------------


def test_python_dash_m_dispatcher(flow: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "dispatcher", "run", f"{flow}:total"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert (done.returncode, done.stdout, done.stderr) == (0, "5\n", "")


def test_console_script(flow: Path) -> None:
    script = Path(sys.executable).parent / "dispatcher"
    if not script.exists():
        pytest.skip("the dispatcher console script is not installed next to this Python")
    done = subprocess.run(
        [str(script), "run", f"{flow}:failing"], capture_output=True, text=True, check=False
    )
    assert done.returncode == 1
    assert (
        done.stderr.splitlines()[-1]
        == "dispatcher: task boom(add(inc(...), inc(...))) failed on worker 'main'"
    )


def test_ctrl_c_exits_130(tmp_path: Path) -> None:
    path = tmp_path / "forever.py"
    path.write_text(
        "import time\nfrom dispatcher import op\n\n@op\ndef wait(i):\n    time.sleep(3600)\n\n"
        "jobs = [wait(i) for i in range(3)]\nprint('loaded', flush=True)\n"
    )
    child = subprocess.Popen(
        [sys.executable, "-m", "dispatcher", "run", f"{path}:jobs"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert child.stdout is not None
        assert child.stdout.readline() == "loaded\n"
        child.send_signal(signal.SIGINT)
        out, err = child.communicate(timeout=30)
    finally:
        child.kill()
        child.wait()
    assert child.returncode == 130
    assert (out, err) == ("", "dispatcher: interrupted\n")


def test_verbose_logs_runs_to_stderr(cli: Cli, flow: Path) -> None:
    status, out, err = cli("run", f"{flow}:total", "-v")
    assert (status, out) == (0, "5\n")
    if "dispatcher.run" not in err:
        pytest.skip("core does not add the logging observer to runs yet")
    assert "dispatcher.run: run of 3 nodes started on 'async'" in err
    assert "dispatcher.task" not in err
    status, out, err = cli("run", f"{flow}:total", "-vv")
    assert "dispatcher.task: finished add(inc(1), inc(inc(...))) on main" in err
