"""Shared fixtures for the command line and example tests: a graph file, the command in process."""

from __future__ import annotations

import textwrap
from collections.abc import Callable
from pathlib import Path

import pytest

from dispatcher._cli import main

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"

FLOW = """
from dispatcher import DispatchGraph, op

@op
def inc(x):
    return x + 1

@op
def add(a, b):
    return a + b

@op
def boom(x):
    raise ValueError(f"bad value {x}")

a = inc(1)
b = inc(a)
total = add(a, b)
pair = [a, b]
named = {"first": a, "second": b}
graph = DispatchGraph([total, b])
failing = boom(total)
number = 5

def build():
    return add(inc(10), 5)

def needs(x):
    return x
"""


@pytest.fixture
def flow(tmp_path: Path) -> Path:
    """A small graph module: nodes, a list, a dict, a graph, a failing node, a builder."""
    path = tmp_path / "flow.py"
    path.write_text(textwrap.dedent(FLOW))
    return path


Cli = Callable[..., tuple[int, str, str]]


@pytest.fixture
def cli(capsys: pytest.CaptureFixture[str]) -> Cli:
    """``cli("run", "x.py:y")`` runs the command in this process: (status, stdout, stderr)."""

    def call(*args: str) -> tuple[int, str, str]:
        status = main([str(a) for a in args])
        out, err = capsys.readouterr()
        return status, out, err

    return call
