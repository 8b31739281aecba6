"""Waking a napping hub on the same host at once.

An idle hub naps (up to 2 ms) between probes: MPI has no call that waits for a message
without spinning on a core, and a probe every few microseconds would cost an idle rank a
whole core. So the first message after a pause waited out the receiver's nap, and the
first task after idle took several milliseconds instead of one. A rank on the same host
can do better than wait: each hub keeps a :class:`Doorbell`, a datagram socket in Linux's
abstract namespace named by its process id (nothing on disk, gone with the process), and
naps in ``select`` on it; a hub that sends a rank on its host a message rings that rank's
bell unless it rang it a moment ago (the rank still spins then). Ranks on other hosts, and
systems without abstract sockets, are reached as before, at the next probe: a bell that
cannot ring only leaves the message to it.
"""

from __future__ import annotations

import os
import select
import socket
import sys
from collections.abc import Sequence

__all__ = ["Doorbell"]


_SELECTABLE = 1024  # select() takes descriptors below FD_SETSIZE only


def _address(pid: int) -> str:
    return f"\0dispatcher-mpi-{pid}"


class Doorbell:
    """One rank's bell, and the addresses of the bells of the other ranks on its host."""

    def __init__(self, rank: int, peers: Sequence[tuple[str, int]]) -> None:
        host, pid = peers[rank]
        self.own = _address(pid)
        self.peers = {r: _address(p) for r, (h, p) in enumerate(peers) if h == host and r != rank}
        """Ranks on this host, by rank: those whose bell this one rings."""
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        try:
            self.sock.setblocking(False)
            self.sock.bind(self.own)
        except OSError:
            self.sock.close()
            raise

    @classmethod
    def open(cls, rank: int, peers: Sequence[tuple[str, int]] | None) -> Doorbell | None:
        """This rank's bell; ``None`` where there can be none (no abstract sockets, or
        the peers' hosts unknown), and the hub naps as before."""
        if peers is None or not sys.platform.startswith("linux") or peers[rank][1] != os.getpid():
            return None
        try:
            bell = cls(rank, peers)
        except OSError:
            return None
        if bell.sock.fileno() >= _SELECTABLE:  # (made at start-up: never so far)
            bell.close()
            return None
        return bell

    def ring(self, rank: int) -> bool:
        """Ring ``rank``'s bell, if it is on this host; whether it rang."""
        address = self.peers.get(rank)
        if address is None:
            return False
        return self._send(address)

    def ring_own(self) -> None:
        """Wake this rank's own hub (another thread of it posted a message)."""
        self._send(self.own)

    def _send(self, address: str) -> bool:
        try:
            self.sock.sendto(b"\0", address)
        except OSError:  # gone, elsewhere, or its bell full of rings already
            return False
        return True

    def wait(self, seconds: float) -> bool:
        """Nap at most ``seconds``; whether the bell rang meanwhile (its rings taken)."""
        readable, _, _ = select.select([self.sock], [], [], seconds)
        if not readable:
            return False
        try:
            while True:
                self.sock.recv(16)
        except OSError:  # (BlockingIOError once all are taken)
            pass
        return True

    def close(self) -> None:
        self.sock.close()
