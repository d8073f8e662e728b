"""``AnswerWriter.write_all``, the watch hub's ``deliver``, over real socket pairs: a fan-out's
answers leave on the sockets at once; a connection that cannot take one at once gets its own
``write``; what a socket did not take, or could not, goes to its transport."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest

from fastkv.http.writer import FAN_OUT, AnswerWriter
from tests.sockets import read_exactly


@dataclass
class FakeTransport:
    """The transport of one connection: how much it buffers, what it was given."""

    buffered: int = 0
    closing: bool = False
    writes: list[bytes] = field(default_factory=list)

    def get_write_buffer_size(self) -> int:
        return self.buffered

    def is_closing(self) -> bool:
        return self.closing

    def write(self, data: bytes) -> None:
        self.writes.append(data)


@dataclass
class FakeConnection:
    """A connection over one end of a real socket pair; ``writes`` records its own ``write``."""

    sock: socket.socket
    transport: FakeTransport = field(default_factory=FakeTransport)
    write_paused: bool = False
    sending: bool = False
    writes: list[bytes] = field(default_factory=list)

    @property
    def fd(self) -> int:
        return self.sock.fileno()

    def write(self, data: bytes) -> None:
        self.writes.append(data)

    def written(self, data: bytes, sent: int) -> None:
        raise AssertionError("write_all hands nothing back later")


@pytest.fixture
def writer() -> Iterator[AnswerWriter]:
    loop = asyncio.new_event_loop()
    answer_writer = AnswerWriter(loop)
    yield answer_writer
    answer_writer.close()
    loop.close()


def pairs(count: int) -> list[tuple[FakeConnection, socket.socket]]:
    made = []
    for _ in range(count):
        ours, theirs = socket.socketpair()
        theirs.settimeout(5)
        made.append((FakeConnection(ours), theirs))
    return made


def close(made: list[tuple[FakeConnection, socket.socket]]) -> None:
    for conn, theirs in made:
        conn.sock.close()
        theirs.close()


def test_a_fan_out_reaches_every_socket_directly(writer: AnswerWriter) -> None:
    made = pairs(FAN_OUT * 4)
    try:
        writer.write_all([conn for conn, _ in made], b"the event")
        for conn, theirs in made:
            assert read_exactly(theirs, 9) == b"the event"
            assert conn.writes == [] and conn.transport.writes == []
    finally:
        close(made)


def test_connections_that_cannot_take_it_at_once_get_their_own_write(writer: AnswerWriter) -> None:
    made = pairs(FAN_OUT * 2)
    busy = [made[1][0], made[5][0], made[9][0], made[13][0]]
    busy[0].sending = True  # an earlier answer is with the writer
    busy[1].transport.buffered = 10  # the transport still holds earlier output
    busy[2].write_paused = True
    busy[3].transport.closing = True
    try:
        writer.write_all([conn for conn, _ in made], b"event")
        for conn, theirs in made:
            if conn in busy:
                assert conn.writes == [b"event"] and conn.transport.writes == []
            else:
                assert read_exactly(theirs, 5) == b"event" and conn.writes == []
        for conn, theirs in made:
            if conn in busy:
                theirs.setblocking(False)
                with pytest.raises(BlockingIOError):
                    theirs.recv(10)  # nothing was sent on their sockets
    finally:
        close(made)


def test_what_a_socket_does_not_take_goes_to_its_transport(writer: AnswerWriter) -> None:
    made = pairs(FAN_OUT)
    full, _ = made[3]
    full.sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    data = bytes(range(256)) * 200  # 51,200 bytes: more than that socket's buffers hold
    gone, gone_peer = made[7]
    gone_peer.close()
    try:
        writer.write_all([conn for conn, _ in made], data)
        [rest] = full.transport.writes
        assert 0 < len(rest) < len(data) and data.endswith(rest)
        assert read_exactly(made[3][1], len(data) - len(rest)) == data[: len(data) - len(rest)]
        assert gone.transport.writes == [data]  # a closed peer: the transport meets the error
        for i, (conn, theirs) in enumerate(made):
            if i not in (3, 7):
                assert read_exactly(theirs, len(data)) == data and conn.transport.writes == []
    finally:
        close(made)


def test_a_small_group_goes_through_each_connection(writer: AnswerWriter) -> None:
    made = pairs(FAN_OUT - 1)
    try:
        writer.write_all([conn for conn, _ in made], b"event")
        assert all(conn.writes == [b"event"] for conn, _ in made)
    finally:
        close(made)
