"""The repository keeps its promises to a newcomer: README's commands and CI agree."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def readme_commands() -> list[str]:
    readme = (ROOT / "README.md").read_text()
    return re.findall(r"```sh\n(.+?)\n```", readme)


@pytest.mark.skipif(not (ROOT / "README.md").exists(), reason="not run from a clone")
def test_readme_opens_with_the_two_commands() -> None:
    commands = readme_commands()
    assert len(commands) >= 2
    example, tests = commands[:2]
    script = re.search(r"(examples/\S+\.py)", example)
    assert script is not None
    assert (ROOT / script.group(1)).exists()
    assert "tox" in tests


@pytest.mark.skipif(not (ROOT / ".ci" / "run").exists(), reason="not run from a clone")
def test_ci_runs_exactly_the_readme_test_command() -> None:
    ci = (ROOT / ".ci" / "run").read_text()
    assert readme_commands()[1] in ci.splitlines()
