"""README's MPI commands work as written after its set-up command: nothing activated, the
environment's own `mpiexec` and `python` named by path. And `progress=True` shows through
`mpiexec`, whose output is a pipe, not a terminal."""

from __future__ import annotations

import importlib.util
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [
    pytest.mark.timeout(120),
    pytest.mark.skipif(
        importlib.util.find_spec("dispatcher_mpi") is None, reason="dispatcher-mpi not installed"
    ),
    pytest.mark.skipif(
        not (Path(sys.prefix) / "bin" / "mpiexec").exists(),
        reason="no mpiexec in this environment (the mpich extra brings one)",
    ),
]

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text()
SETUP = re.findall(r"```sh\n(.+?)\n```", README)[0]


def mpi_commands() -> list[str]:
    """The lines of the first shell block of README's MPI section."""
    section = README.split("\n## MPI (`mpi`)\n", 1)[1].split("\n## ", 1)[0]
    block = re.search(r"```sh\n(.+?)\n```", section, flags=re.DOTALL)
    assert block is not None, "README's MPI section has no sh block"
    return block.group(1).splitlines()


def clone_with_venv(tmp_path: Path) -> Path:
    """A directory laid out like README's clone after its set-up command: ``.venv`` is this
    test's own environment (which has what the install line installs), ``examples`` and
    ``packages`` the repository's."""
    for name in ("examples", "packages"):
        (tmp_path / name).symlink_to(ROOT / name)
    (tmp_path / ".venv").symlink_to(Path(sys.prefix))
    return tmp_path


def test_the_install_line_adds_to_the_setup_environment() -> None:
    install, *_ = mpi_commands()
    words = shlex.split(install)
    assert words[:4] == [".venv/bin/python", "-m", "pip", "install"]
    assert ".venv/bin/python" in SETUP  # the environment the set-up command made
    assert "./packages/dispatcher-mpi[mpich]" in words  # MPICH and its mpiexec with it
    for requirement in words[4:]:
        assert (ROOT / requirement.split("[")[0]).is_dir(), requirement


def test_the_run_line_runs_as_written(tmp_path: Path) -> None:
    _, *runs = mpi_commands()
    assert runs
    clone = clone_with_venv(tmp_path)
    for line in runs:
        assert line.startswith(".venv/bin/mpiexec ")
        assert " .venv/bin/python " in line
        done = subprocess.run(
            line, shell=True, cwd=clone, capture_output=True, text=True, timeout=100
        )
        assert done.returncode == 0, done.stderr[-3000:]
        assert "order files parsed on 'mpi'" in done.stdout, done.stdout
        assert "total     16,000   454,274.86" in done.stdout


def test_progress_shows_through_mpiexec(tmp_path: Path) -> None:
    pytest.importorskip("tqdm")  # progress=True needs it, wherever it draws
    clone = clone_with_venv(tmp_path)
    command = (
        ".venv/bin/mpiexec -n 3 .venv/bin/python -m dispatcher_mpi "
        "-m dispatcher run examples/pipeline.py:pipeline --executor mpi --progress"
    )
    done = subprocess.run(
        command, shell=True, cwd=clone, capture_output=True, text=True, timeout=100
    )
    assert done.returncode == 0, done.stderr[-3000:]
    status = [line for line in done.stderr.splitlines() if line.startswith("dispatcher mpi: ")]
    assert status, done.stderr
    assert re.match(r"dispatcher mpi: (\d+)/\1 tasks \(100%\), done in ", status[-1])
    assert "\r" not in done.stderr
