"""Splitting a worker's pipe into messages, a buffer at a time."""

from __future__ import annotations

import os
import struct
from collections.abc import Iterator
from multiprocessing.connection import Connection

import pytest

from dispatcher_mp._frames import FrameReader


@pytest.fixture
def pipe() -> Iterator[tuple[FrameReader, Connection]]:
    read_fd, write_fd = os.pipe()
    writer = Connection(write_fd, readable=False)
    yield FrameReader(read_fd), writer
    writer.close()
    os.close(read_fd)


def test_every_message_written_is_read_back_in_one_go(
    pipe: tuple[FrameReader, Connection],
) -> None:
    frames, writer = pipe
    sent = [b"", b"a", b"x" * 20_000, bytes(range(256))]
    for message in sent:
        writer.send_bytes(message)
    assert frames.read() == sent


def test_a_message_cut_short_waits_for_the_rest(pipe: tuple[FrameReader, Connection]) -> None:
    frames, writer = pipe
    whole = struct.pack("!i", 6) + b"abcdef"
    os.write(writer.fileno(), whole[:3])
    assert frames.read() == []
    os.write(writer.fileno(), whole[3:8])
    assert frames.read() == []
    os.write(writer.fileno(), whole[8:] + struct.pack("!i", 1) + b"z")
    assert frames.read() == [b"abcdef", b"z"]


def test_the_long_header_of_messages_over_2_gib_is_understood(
    pipe: tuple[FrameReader, Connection],
) -> None:
    frames, writer = pipe
    os.write(writer.fileno(), struct.pack("!i", -1) + struct.pack("!Q", 5)[:4])
    assert frames.read() == []
    os.write(writer.fileno(), struct.pack("!Q", 5)[4:] + b"hello")
    assert frames.read() == [b"hello"]


def test_the_end_of_the_stream_is_none(pipe: tuple[FrameReader, Connection]) -> None:
    frames, writer = pipe
    writer.send_bytes(b"last")
    writer.close()
    assert frames.read() == [b"last"]
    assert frames.read() is None
