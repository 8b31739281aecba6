"""Ranks on one host wake each other's napping hubs: the doorbell, in one process."""

from __future__ import annotations

import os
import random
import socket
import threading
from typing import Any

import pytest

from dispatcher.remote import Stop

pytest.importorskip("mpi4py")

from dispatcher_mpi._channel import Hub
from dispatcher_mpi._doorbell import Doorbell

pytestmark = [
    pytest.mark.timeout(60),
    pytest.mark.skipif(not hasattr(socket, "AF_UNIX"), reason="no UNIX sockets"),
]
HOST = "here"


def fake_pids(n: int) -> list[int]:
    """Numbers no process here has, to name test bells by."""
    base = random.randrange(1 << 40, 1 << 41)
    return [base + i for i in range(n)]


def test_a_bell_rings_the_ranks_of_its_host_only() -> None:
    pids = fake_pids(3)
    peers = [(HOST, pids[0]), (HOST, pids[1]), ("elsewhere", pids[2])]
    first, second = Doorbell(0, peers), Doorbell(1, peers)
    try:
        assert first.ring(1)
        assert second.wait(30.0)
        assert not second.wait(0.0)  # its rings were taken
        assert not first.ring(2)  # another host: left to its probe
        second.close()
        assert not first.ring(1)  # gone: nothing raised
    finally:
        first.close()
        second.close()


def test_without_its_own_pid_among_the_peers_there_is_no_bell() -> None:
    assert Doorbell.open(0, None) is None
    assert Doorbell.open(0, [(HOST, fake_pids(1)[0])]) is None


class Comm:
    """As much of a communicator as a hub asks for before it runs."""

    def __init__(self, rank: int) -> None:
        self.rank = rank

    def Get_rank(self) -> int:
        return self.rank


def test_a_napping_hub_wakes_when_rung_or_posted_to() -> None:
    other = fake_pids(1)[0]
    peers = [(HOST, os.getpid()), (HOST, other)]
    hub = Hub(Comm(0), lambda source, message: None, peers=peers)
    assert hub.doorbell is not None
    ringer = Doorbell(1, peers)
    woke: list[bool] = []
    try:
        nap = threading.Thread(target=lambda: woke.append(hub._nap(30.0)))
        nap.start()
        while not hub.napping and nap.is_alive():
            threading.Event().wait(0.001)
        assert ringer.ring(0)
        nap.join(30)
        assert woke == [True]  # rung, not the nap's end

        nap = threading.Thread(target=lambda: woke.append(hub._nap(30.0)))
        nap.start()
        while not hub.napping and nap.is_alive():
            threading.Event().wait(0.001)
        hub.post(1, Stop())  # another thread of the rank posts: the hub wakes to send it
        nap.join(30)
        assert woke == [True, True]
        assert not hub._nap(0.0)  # a post found waiting rings nothing
    finally:
        ringer.close()
        assert hub.doorbell is not None
        hub.doorbell.close()


def test_a_hub_rings_a_rank_it_sends_to_unless_it_just_did(monkeypatch: Any) -> None:
    other = fake_pids(1)[0]
    peers = [(HOST, os.getpid()), (HOST, other)]
    hub = Hub(Comm(0), lambda source, message: None, peers=peers)
    bell = hub.doorbell
    assert bell is not None
    rung: list[int] = []
    monkeypatch.setattr(bell, "ring", lambda rank: rung.append(rank) or True)
    try:
        hub._ring(1)
        hub._ring(1)  # it still spins: no need
        assert rung == [1]
        hub._rung[1] -= 1.0
        hub._ring(1)
        assert rung == [1, 1]
    finally:
        bell.close()
