"""Starting real MPI jobs from the tests: `mpiexec -n N python -m dispatcher_mpi ...`."""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

HERE = Path(__file__).parent
MPIEXEC = shutil.which("mpiexec", path=str(Path(sys.executable).parent)) or shutil.which("mpiexec")
MISSING = "no mpiexec next to this Python or on PATH (pip install mpich)"


def command(ranks: int, *args: str) -> list[str]:
    """The command line of a job of ``ranks`` ranks running ``python -m dispatcher_mpi``.

    ``DISPATCHER_TEST_MPIEXEC``, when set, is the mpiexec command up to its ``-n``: the
    cluster tests set it to one that places the ranks on other hosts."""
    assert MPIEXEC is not None
    launch = shlex.split(os.environ.get("DISPATCHER_TEST_MPIEXEC", "")) or [MPIEXEC]
    return [*launch, "-n", str(ranks), sys.executable, "-m", "dispatcher_mpi", *args]


def job(
    ranks: int, *args: str, env: dict[str, str] | None = None, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    """Run a job to its end; its exit status and output."""
    return subprocess.run(
        command(ranks, *args),
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=HERE,
        env={**os.environ, **(env or {})},
    )


def script(tmp_path: Path, body: str) -> str:
    """``body`` written as a program file; its path."""
    path = tmp_path / "program.py"
    path.write_text(textwrap.dedent(body))
    return str(path)


def recording(tmp_path: Path, recorder: str, variable: str) -> tuple[dict[str, str], Path]:
    """The environment of a job whose every rank first runs ``recorder`` (as its
    ``sitecustomize``), and the empty folder it writes to, named to it by ``variable``."""
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(textwrap.dedent(recorder))
    logs = tmp_path / "logs"
    logs.mkdir()
    return {"PYTHONPATH": str(site), variable: str(logs)}, logs
