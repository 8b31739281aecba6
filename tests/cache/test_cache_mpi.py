"""The cache on MPI ranks: worker ranks read hits and store results themselves."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from cache_scenarios import SCENARIOS

pytestmark = [pytest.mark.mpi, pytest.mark.timeout(300)]

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE.parent / "mpi"))
from mpi_jobs import MISSING, MPIEXEC, command  # noqa: E402

if MPIEXEC is None:
    pytest.skip(MISSING, allow_module_level=True)


def test_every_scenario_on_mpi() -> None:
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")]),
    }
    done = subprocess.run(
        command(3, str(HERE / "cache_job.py")),
        capture_output=True,
        text=True,
        timeout=280,
        cwd=HERE,
        env=env,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    passed = {line.split()[1] for line in done.stdout.splitlines() if line.startswith("passed ")}
    assert passed == {s.__name__ for s in SCENARIOS}
