"""Helpers for tests over real sockets."""

from __future__ import annotations

import socket


def read_exactly(sock: socket.socket, size: int) -> bytes:
    """``size`` bytes from ``sock`` (blocking); fails the test when the peer closes first."""
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        assert chunk, "peer closed early"
        data += chunk
    return data
