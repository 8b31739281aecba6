"""dispatcher-mpi: the ``mpi`` executor, MPI ranks as workers.

Launch a program with ``mpiexec -n N python -m dispatcher_mpi app.py [args...]``: rank 0
runs it, ranks 1..N-1 serve as workers, and inside it ``run(graph, executor="mpi")`` uses
them. Importing this package does not start MPI.
"""

import sys

if sys.argv[:1] == ["-m"]:  # being run: `python -m dispatcher_mpi`
    from . import _early_ctrl_c

    _early_ctrl_c.hold()

from ._plugin import make_executor as make_executor

__all__ = ["make_executor"]
