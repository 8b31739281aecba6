"""Unlinking an executor's shared memory once its caller is gone, however it went.

The caller unlinks its segments itself as a run ends and sweeps them all at close; killed
(SIGKILL, or SIGTERM from a batch system), it cannot. A janitor does it then: a small
process, started with the executor in a session of its own (so a signal to the caller's
process group does not reach it), that watches its parent. Once the parent is gone (the
janitor is then adopted by another process) it unlinks every segment named after the
executor's prefix, the workers' too, and exits: within :data:`WATCH_EVERY` seconds.
The executor's close sweeps them itself, through :meth:`Janitor.sweep_and_stop`.

The caller never speaks to it. multiprocessing's resource tracker, which did this job
before, is told of every segment through a pipe: once it stops reading (frozen, say), the
pipe fills and every later write, the caller's and any start of a worker process, blocks
for ever. A frozen janitor delays nothing; the executor's close kills it.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from multiprocessing import spawn

from ._wire import SHM_DIR, sweep

__all__ = ["WATCH_EVERY", "Janitor"]

WATCH_EVERY = 0.5
"""Seconds between the janitor's looks at its parent."""

_log = logging.getLogger("dispatcher.mp")

# Run with -I -S: no site packages, no environment, so it starts in some 10 ms. Its sweep
# is :func:`~dispatcher_mp._wire.sweep` written again: importing ours would need both.
_PROGRAM = f"""
import os, signal, sys, time
signal.signal(signal.SIGINT, signal.SIG_IGN)
prefix, parent = sys.argv[1], int(sys.argv[2])
while os.getppid() == parent:
    time.sleep({WATCH_EVERY})
for name in os.listdir({SHM_DIR!r}):
    if name.startswith(prefix):
        try:
            os.unlink(os.path.join({SHM_DIR!r}, name))
        except OSError:
            pass
"""


class Janitor:
    """The process that unlinks segments named ``prefix...`` once this process is gone."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.process: subprocess.Popen[bytes] | None = None
        if not os.path.isdir(SHM_DIR) or sys.platform == "win32":
            return
        try:
            self.process = subprocess.Popen(
                [spawn.get_executable(), "-I", "-S", "-c", _PROGRAM, prefix, str(os.getpid())],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                close_fds=True,
                start_new_session=True,
            )
        except OSError as exc:  # the close still sweeps; only a killed caller would leak
            _log.warning(
                "could not start the process that unlinks shared memory should this "
                "process be killed (%s): a killed caller may leave segments named %s* in %s",
                exc,
                prefix,
                SHM_DIR,
            )

    def sweep_and_stop(self) -> None:
        """Unlink every segment named after the prefix, then end the janitor: the
        executor closes."""
        sweep(self.prefix)
        if self.process is not None and self.process.poll() is None:
            self.process.kill()  # SIGKILL: it may be frozen
            self.process.wait()
