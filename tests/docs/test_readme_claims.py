"""README sentences a user would act on, checked: what is printed without logging set up,
what `dispatcher executors` says about `sync`, and pluggy's rule for hook arguments."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from dispatcher import Op, hookimpl, run
from dispatcher.testing import tasks

README = (Path(__file__).resolve().parents[2] / "README.md").read_text()

LOSES_A_WORKER = """\
import logging
import os
import sys

from dispatcher import op, run


@op
def die():
    os._exit(3)


if __name__ == "__main__":
    if sys.argv[1:] == ["quiet"]:
        logging.getLogger("dispatcher").setLevel(logging.ERROR)
    result = run(die(), executor="mp", workers=1, retries=0, throw=False)
    print(type(result.error).__name__)
"""


@pytest.mark.timeout(120)
@pytest.mark.skipif(importlib.util.find_spec("dispatcher_mp") is None, reason="needs mp")
@pytest.mark.parametrize("mode", ["default", "quiet"])
def test_warnings_without_logging_set_up_are_as_the_readme_says(mode: str, tmp_path: Path) -> None:
    assert "Warnings (`dispatcher.mp`: a worker lost or restarted) reach" in README
    assert 'logging.getLogger("dispatcher").setLevel(logging.ERROR)` silences' in README
    script = tmp_path / "loses_a_worker.py"
    script.write_text(LOSES_A_WORKER)
    done = subprocess.run(
        [sys.executable, str(script), mode], capture_output=True, text=True, timeout=100
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout == "WorkerLostError\n"
    if mode == "default":
        assert "worker mp-0 was lost" in done.stderr
    else:
        assert done.stderr == ""


def test_dispatcher_executors_says_sync_ignores_workers() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "dispatcher", "executors"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    sync = next(line for line in done.stdout.splitlines() if line.startswith("sync "))
    assert "workers= is ignored" in sync
    assert "timeout fails a task only once it returns" in sync
    assert run(Op(tasks.inc, 1), executor="sync", workers=8) == 2  # accepted all the same


def test_a_catch_all_hook_receives_nothing() -> None:
    assert "`def dispatcher_task_started(self, **kw)` receives nothing" in README
    seen: list[Any] = []

    class CatchAll:
        @hookimpl
        def dispatcher_task_started(self, **kw: Any) -> None:
            seen.append(kw)

    class Named:
        @hookimpl
        def dispatcher_task_started(self, worker: str, node: Any) -> None:
            seen.append((node.label, worker))

    run(Op(tasks.inc, 1), executor="sync", plugins=[CatchAll(), Named()])
    assert sorted(seen, key=str) == [("inc", "main"), {}]
