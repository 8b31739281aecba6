"""The ``dispatcher`` command: ``executors``, ``run FILE.py:NAME``, ``graph FILE.py:NAME``,
``cache info|clear PATH``.

Exit status: 0 success, 1 a task failed, 2 a usage error (bad file, name or option), 130
interrupted. Mistakes in how the command was called get one line on standard error, not a
traceback; a task that fails gets its own traceback (without dispatcher's frames), since
that is what its author needs.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import pprint
import shutil
import subprocess
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, NoReturn

from ._cache_cli import add_cache_command, cache_command
from ._errors import ExecutorNotFound
from ._graph import DispatchGraph
from ._hooks import hookimpl
from ._nodes import DispatchNode
from ._script import (
    TARGET_KINDS,
    UsageError,
    format_exception,
    load,
    one_line,
    split_target,
    target,
)
from ._version import __version__

__all__ = ["main"]

OK = 0
FAILED = 1  # a task failed (or, rarely, something else did: dot, a broken plugin)
USAGE = 2
INTERRUPTED = 130
BROKEN_PIPE = 141  # 128 + SIGPIPE, as a shell reports a process SIGPIPE ended

PROG = "dispatcher"
GRAPH_FORMATS = {".dot": None, ".gv": None, ".svg": "svg", ".png": "png", ".pdf": "pdf"}


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage mistake is one line (with where to find help), not a block."""

    def error(self, message: str) -> NoReturn:
        self.exit(USAGE, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")


class _HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """argparse's, with the commands' help aligned: argparse measures command names
    without the indent it draws them with, so the longest (``executors``) would get a line
    of its own."""

    def add_argument(self, action: argparse.Action) -> None:
        super().add_argument(action)
        subactions = getattr(action, "_get_subactions", None)
        if subactions is not None and action.help is not argparse.SUPPRESS:
            names = [len(self._format_action_invocation(a)) for a in subactions()]
            indent = self._current_indent + self._indent_increment
            self._action_max_length = max(self._action_max_length, max(names, default=0) + indent)


# -- the command line ------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog=PROG,
        description=(
            "Run dispatcher graphs defined in Python files, draw them, list executors, "
            "manage result caches."
        ),
        epilog=(
            "examples:\n"
            "  dispatcher executors\n"
            "  dispatcher run examples/pipeline.py:pipeline --executor mp --progress\n"
            "  dispatcher graph examples/pipeline.py:pipeline -o pipeline.svg\n"
            "  dispatcher cache info .dispatcher-cache\n"
            "\n"
            "exit status: 0 success, 1 a task failed, 2 usage error, 130 interrupted"
        ),
        formatter_class=_HelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    commands.add_parser(
        "executors",
        help="list the installed executors",
        description="List the installed executors: name, distribution, version, description.",
    )

    target_help = (
        "FILE.py:NAME, where NAME is " + TARGET_KINDS + " (the file's directory goes on sys.path)"
    )
    _add_run_command(commands, target_help)

    graph = commands.add_parser(
        "graph",
        help="write a graph as Graphviz DOT, SVG or PNG",
        description=(
            "Load FILE.py, take NAME from it and write its graph: DOT text on standard output, "
            "or to -o FILE (.dot, .svg, .png, .pdf; all but .dot need Graphviz's 'dot')."
        ),
    )
    graph.add_argument("target", metavar="FILE.py:NAME", help=target_help)
    graph.add_argument(
        "-o", "--output", metavar="FILE", help="where to write: out.dot, out.svg or out.png"
    )
    add_cache_command(commands)
    return parser


def _add_run_command(commands: Any, target_help: str) -> None:
    run = commands.add_parser(
        "run",
        help="run a graph from a Python file and print its results",
        description=(
            "Load FILE.py, take NAME from it, run it and print the results. NAME is "
            + TARGET_KINDS
            + "."
        ),
    )
    run.add_argument("target", metavar="FILE.py:NAME", help=target_help)
    run.add_argument(
        "-e",
        "--executor",
        metavar="E",
        help="executor name (default: $DISPATCHER_EXECUTOR, else 'async'); "
        "see 'dispatcher executors'",
    )
    run.add_argument("-w", "--workers", metavar="N", type=_positive_int, help="number of workers")
    run.add_argument(
        "--progress",
        action="store_true",
        help="show progress on standard error (a bar on a terminal, else a line every 5 s)",
    )
    run.add_argument(
        "--report", metavar="FILE", help="write an HTML report of the run (timeline, summary)"
    )
    run.add_argument(
        "--cache",
        metavar="DIR",
        help="keep results in DIR; a node stored there already does not run again",
    )
    run.add_argument(
        "-v",
        "--verbose",
        action="count",
        default=0,
        help="log to standard error: -v each run, -vv each task",
    )


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected at least 1, got {value}")
    return value


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line ``argv`` (default: ``sys.argv[1:]``); return the exit status."""
    parser = _parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, --version, or a usage error already printed
        return exc.code if isinstance(exc.code, int) else USAGE
    if args.command is None:
        parser.print_help(sys.stderr)
        return USAGE
    try:
        if args.command == "executors":
            return _executors()
        if args.command == "run":
            return _run(args)
        if args.command == "cache":
            return cache_command(args)
        return _graph(args)
    except UsageError as exc:
        _say(f"error: {exc}")
        return USAGE
    except KeyboardInterrupt:
        _say("interrupted")
        return INTERRUPTED
    except BrokenPipeError:  # ``dispatcher run ... | head``: the reader has what it wanted
        # (and the interpreter's last flush of stdout must not fail again)
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return BROKEN_PIPE


def _say(message: str) -> None:
    print(f"{PROG}: {message}", file=sys.stderr)


# -- executors ---------------------------------------------------------------------------


def _executors() -> int:
    from ._registry import available_executors

    try:
        executors = available_executors()
    except Exception as exc:  # a broken plugin: say which, not where in pluggy
        _say(f"error: cannot list executors: {type(exc).__name__}: {exc}")
        return FAILED
    rows = [("NAME", "DISTRIBUTION", "VERSION", "DESCRIPTION")]
    for name, info in executors.items():
        rows.append((name, info.distribution or "-", info.version or "-", info.description))
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    for row in rows:
        cells = [cell.ljust(width) for cell, width in zip(row, widths)]
        print("  ".join([*cells, row[3]]).rstrip())
    return OK


# -- run -----------------------------------------------------------------------------------


def _run(args: argparse.Namespace) -> int:
    from ._registry import DEFAULT_EXECUTOR, ENVIRONMENT_VARIABLE, get_executor

    report = args.report
    if report is not None:
        _check_report_path(Path(report))
    if args.progress:
        from ._progress import load_tqdm

        try:
            load_tqdm()
        except ModuleNotFoundError as exc:
            raise UsageError(f"--progress: {exc}") from None
    path, name = split_target(args.target)
    with load(path) as module, _verbosity(args.verbose):
        targets = target(module, path, name)
        executor_name = args.executor or os.environ.get(ENVIRONMENT_VARIABLE) or DEFAULT_EXECUTOR
        options = {} if args.workers is None else {"workers": args.workers}
        try:
            executor = get_executor(executor_name, **options)
        except ExecutorNotFound as exc:
            raise UsageError(str(exc)) from None
        except Exception as exc:  # a wrong option, or a backend that cannot start here
            raise UsageError(
                f"cannot start the {executor_name!r} executor: {one_line(exc)}"
            ) from None
        watcher = _FailureWatcher()
        try:
            with executor:
                values = executor.run(
                    targets,
                    progress=args.progress,
                    report=report,
                    plugins=[watcher],
                    cache=args.cache,
                )
        except BaseException as exc:  # a task's SystemExit too: not this command's exit
            if watcher.node is None or isinstance(exc, KeyboardInterrupt):
                raise  # not a task's failure: a bug, shown with its traceback, or Ctrl-C
            sys.stdout.flush()
            print(format_exception(exc), end="", file=sys.stderr)
            _say(f"task {watcher.node} failed on worker {watcher.worker!r}")
            _report_written(report)
            return FAILED
        finally:
            sys.stderr.flush()
    _print_results(targets, values)
    _report_written(report)
    return OK


class _FailureWatcher:
    """Remembers the first task failure, so that the command can tell it from other errors."""

    def __init__(self) -> None:
        self.node: DispatchNode | None = None
        self.worker = ""

    @hookimpl
    def dispatcher_task_failed(self, node: DispatchNode, worker: str) -> None:
        if self.node is None:
            self.node, self.worker = node, worker


def _check_report_path(path: Path) -> None:
    if path.is_dir():
        raise UsageError(f"--report {str(path)!r} is a directory; give a file name")
    if not path.parent.is_dir():
        raise UsageError(f"--report {str(path)!r}: directory {str(path.parent)!r} does not exist")


def _report_written(report: str | None) -> None:
    if report is not None and Path(report).is_file():
        _say(f"report written to {report}")


@contextlib.contextmanager
def _verbosity(level: int) -> Iterator[None]:
    """``-v``: the dispatcher logger tree at INFO on standard error; ``-vv``: at DEBUG."""
    if level <= 0:
        yield
        return
    logger = logging.getLogger("dispatcher")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(name)s: %(message)s"))
    previous = logger.level
    logger.setLevel(logging.INFO if level == 1 else logging.DEBUG)
    logger.addHandler(handler)
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(previous)


def _print_results(targets: Any, values: Any) -> None:
    if isinstance(targets, DispatchNode):
        print(_show(values))
        return
    if isinstance(targets, dict):
        entries = [(str(key), value) for key, value in zip(targets, values.values())]
    else:
        nodes = targets.sinks() if isinstance(targets, DispatchGraph) else list(targets)
        labels = [str(node) for node in nodes]  # label and arguments: parse('b.txt')
        if len(set(labels)) < len(labels):  # still alike: number them to tell them apart
            labels = [f"[{i}] {label}" for i, label in enumerate(labels)]
        entries = list(zip(labels, values))
    for key, value in entries:
        text = _show(value)
        if "\n" in text:
            print(f"{key}:")
            print("\n".join("  " + line for line in text.splitlines()))
        else:
            print(f"{key}: {text}")


def _show(value: Any) -> str:
    if isinstance(value, str):
        return value
    return pprint.pformat(value, width=100, sort_dicts=False)


# -- graph ---------------------------------------------------------------------------------


def _graph(args: argparse.Namespace) -> int:
    output = Path(args.output) if args.output is not None else None
    fmt = None
    if output is not None:
        suffix = output.suffix.lower()
        if suffix not in GRAPH_FORMATS:
            raise UsageError(
                f"-o {str(output)!r}: cannot tell the format from {suffix or 'no suffix'!r}; "
                "use .dot, .svg or .png (or .gv, .pdf)"
            )
        if not output.parent.is_dir():
            raise UsageError(f"-o {str(output)!r}: directory {str(output.parent)!r} does not exist")
        fmt = GRAPH_FORMATS[suffix]
    dot = shutil.which("dot") if fmt is not None else None
    if fmt is not None and dot is None:
        raise UsageError(
            f"writing {fmt.upper()} needs Graphviz's 'dot' program, which is not on PATH: "
            "install Graphviz, or write DOT text with -o FILE.dot"
        )
    path, name = split_target(args.target)
    with load(path) as module:
        targets = target(module, path, name)
    graph = _as_graph(targets)
    text = graph.to_dot()
    if output is None:
        sys.stdout.write(text)
        return OK
    if fmt is None:
        output.write_text(text, encoding="utf-8")
        return OK
    assert dot is not None
    done = subprocess.run(
        [dot, f"-T{fmt}", "-o", str(output)], input=text.encode(), capture_output=True, check=False
    )
    if done.returncode != 0:
        message = done.stderr.decode(errors="replace").strip().splitlines()
        _say(f"error: dot failed: {message[0] if message else f'exit status {done.returncode}'}")
        return FAILED
    return OK


def _as_graph(targets: Any) -> DispatchGraph:
    if isinstance(targets, DispatchGraph):
        return targets
    if isinstance(targets, dict):
        return DispatchGraph(list(targets.values()))
    return DispatchGraph(targets)
