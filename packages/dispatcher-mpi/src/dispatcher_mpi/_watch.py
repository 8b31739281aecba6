"""Naming the worker rank that died, and what it was running.

When a rank dies, MPICH's process manager kills every other rank of the job within
milliseconds, with SIGKILL: rank 0 gets no chance to say anything, not even from a thread
woken by the death. So rank 0 starts a small helper process (plain Python, no MPI), in a
session of its own so that the clean-up does not reach it. The helper watches the ranks on
rank 0's host through pidfds (Linux 5.3+), and rank 0 keeps it told what each rank is
doing; when a rank dies, the helper writes one line naming the rank, its host and pid, and
that task. It exits when rank 0 says the job is ending, or when rank 0 is gone.

Ranks on other hosts cannot be watched from here: for them, MPICH's own message names the
host and pid.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Mapping, Sequence

__all__ = ["Watcher", "quiet"]

_active: list[Watcher] = []

_HELPER = r"""
import os, select, sys
root = os.pidfd_open(int(sys.argv[1]))
ranks = {}
for arg in sys.argv[2:]:
    rank, pid, where = arg.split(":", 2)
    try:
        ranks[os.pidfd_open(int(pid))] = (int(rank), where)
    except OSError:
        pass
doing, buffer, stdin = {}, b"", sys.stdin.fileno()
while ranks:
    ready = select.select([stdin, root, *ranks], [], [])[0]
    dead = [ranks.pop(fd) for fd in ready if fd in ranks]
    if dead:
        # Which rank died first cannot be told from the order the deaths are seen in:
        # MPI's clean-up ends the others within milliseconds. Gather those too, so the
        # line names every candidate rather than a wrong one.
        while ranks:
            more = select.select(list(ranks), [], [], 0.05)[0]
            if not more:
                break
            dead += [ranks.pop(fd) for fd in more]
        said = [
            f"rank {rank} ({where}) while {doing.get(rank, 'idle')}" for rank, where in dead
        ]
        if len(said) == 1:
            line = f"lost {said[0]}; MPI ends the whole job"
        else:  # one died, and the clean-up ended the others
            line = "lost, one of them first, then the rest in MPI's clean-up: " + "; ".join(said)
        os.write(2, f"dispatcher_mpi: {line}\n".encode("utf-8", "replace"))
        break
    if root in ready:
        break
    data = os.read(stdin, 1 << 16)
    if not data:
        break
    *lines, buffer = (buffer + data).split(b"\n")
    for line in lines:
        if line == b"stop":
            sys.exit(0)
        rank, _, what = line.decode("utf-8", "replace").partition("\t")
        doing[int(rank)] = what
"""


class Watcher:
    """Rank 0's helper process; see the module docstring."""

    def __init__(self, peers: Sequence[tuple[str, int]]) -> None:
        self.told: dict[int, str] = {}
        self.process: subprocess.Popen[bytes] | None = None
        if not peers or not hasattr(os, "pidfd_open"):
            return
        host = peers[0][0]
        local = [
            f"{rank}:{pid}:host {where}, pid {pid}"
            for rank, (where, pid) in enumerate(peers)
            if rank and where == host
        ]
        if not local:
            return
        try:
            self.process = subprocess.Popen(
                [sys.executable, "-I", "-c", _HELPER, str(os.getpid()), *local],
                stdin=subprocess.PIPE,
                stdout=subprocess.DEVNULL,
                start_new_session=True,  # out of reach of the job's clean-up
            )
        except OSError:
            self.process = None
        else:
            _active.append(self)

    def tell(self, doing: Mapping[int, str]) -> None:
        """What each rank does now (only changes are sent)."""
        lines = [f"{r}\t{what}\n" for r, what in doing.items() if self.told.get(r) != what]
        if lines:
            self.told.update(doing)
            self._write("".join(lines))

    def stop(self) -> None:
        """The ranks are about to exit on purpose: the helper goes quietly."""
        self._write("stop\n")
        if self in _active:
            _active.remove(self)
        process, self.process = self.process, None
        if process is not None:
            try:
                process.wait(5)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()

    def _write(self, text: str) -> None:
        process = self.process
        if process is None or process.stdin is None:
            return
        try:
            process.stdin.write(text.encode("utf-8", "replace"))
            process.stdin.flush()
        except (OSError, ValueError):  # the helper is gone: nothing more to say
            self.process = None


def quiet() -> None:
    """Before this process ends the job on purpose: no rank's end is news."""
    for watcher in list(_active):
        watcher.stop()
