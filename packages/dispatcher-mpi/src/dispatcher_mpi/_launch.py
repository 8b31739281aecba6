"""What to tell someone who uses the ``mpi`` executor outside a job started by the
launcher: how to start one, with this interpreter."""

from __future__ import annotations

import os
import shutil
import sys

__all__ = ["LAUNCH_HELP"]


def _launch_help() -> str:
    # This interpreter, and the mpiexec beside it (the mpich wheel's) if there is one: a
    # bare `python` under mpiexec is often another environment's, without dispatcher_mpi.
    python = sys.executable or "python"
    mpiexec = shutil.which("mpiexec", path=os.path.dirname(python)) or "mpiexec"
    return (
        "the 'mpi' executor runs inside an MPI job started by the dispatcher launcher, with "
        "at least one worker rank besides rank 0:\n"
        f"    {mpiexec} -n 4 {python} -m dispatcher_mpi your_script.py [args...]\n"
        "(also `-m module` or `-c code`, like python -m mpi4py.futures)"
    )


LAUNCH_HELP = _launch_help()
