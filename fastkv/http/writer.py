"""The answer writer: the answers of a watch fan-out leave from two threads at once.

Sending an answer is a syscall that, on loopback, also does the receiving side's TCP work. For
ordinary loop passes that is cheaper on the loop than any hand-off; a fan-out (one event for
many long-poll watchers) is thousands of such sends at once. ``AnswerWriter`` splits those: the
first answer of a loop pass goes out at once through its transport (a lone client waits for
nothing); ``write`` gathers the others, and at the end of the pass, when they are at least
``FAN_OUT``, a compiled send queue's thread sends half of them without the GIL while the loop
sends the other half with the GIL released; fewer are written through their transports.

Contract with a connection (``HttpProtocol``): while one of its answers is with the writer
(``sending``) whatever else it writes waits, in order, and so does a close. The thread writes to
a ``dup`` of the socket's descriptor, taken by the queue on the loop while the transport is open
and closed by the thread after the send, so the socket outlives anything that happens to the
connection meanwhile (a closed and reused descriptor would get another client's bytes). Where no
duplicate can be had (the open-file limit), the send reports ``-EBADF`` and the answer goes
through the transport. ``written(data, sent)`` runs on the loop once the send is done (``sent``
bytes went out, or ``-errno``); the connection writes the rest through its transport.
"""

from __future__ import annotations

import asyncio
import threading
from collections import deque
from typing import Any, Protocol

from fastkv._native.ioqueue import SendQueue, send_now

# A loop pass that gathers this many answers (a watch fan-out) has the thread send half of them
# while the loop sends the other half; fewer are written through their transports. Side by side,
# handing the answers of ordinary passes (GET and PUT at 64 connections) to the thread cost
# ≈ 10 % of their throughput: the duplicates and the hand-back cost the loop more than the sends.
FAN_OUT = 128
MAX_ANSWER = 1 << 16  # bigger answers go through the transport, which buffers what is left


class Connection(Protocol):
    transport: Any
    write_paused: bool
    fd: int  # the socket's descriptor, as its transport holds it

    def written(self, data: bytes, sent: int) -> None: ...


class AnswerWriter:
    """Writes whole answers of many connections, batched per loop pass (see the module doc)."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._pass: list[tuple[Connection, bytes]] = []
        self._pass_open = False  # this loop pass answered already: later answers are gathered
        self._in_flight: deque[list[tuple[Connection, bytes]]] = deque()
        self._queue: SendQueue | None = None
        self._thread: threading.Thread | None = None

    def write(self, conn: Connection, data: bytes) -> bool:
        """Take ``data``, a whole answer, for the end of this loop pass; False (not taken) when
        it goes through the transport now: the first answer of a pass (a lone client waits for
        nothing), too big, or the transport still holds earlier data."""
        if len(data) > MAX_ANSWER or conn.write_paused or conn.transport.get_write_buffer_size():
            return False
        if not self._pass_open:
            self._pass_open = True
            self._loop.call_soon(self._flush)
            return False
        self._pass.append((conn, data))
        return True

    def _flush(self) -> None:
        self._pass_open = False
        batch, self._pass = self._pass, []
        if len(batch) < FAN_OUT:
            for conn, data in batch:
                conn.written(data, 0)  # nothing sent here: the connection writes it all
            return
        half = len(batch) // 2
        theirs = _usable(batch[half:])
        if theirs:
            self._in_flight.append(theirs)
            # The thread sends on duplicates, taken by the queue here (see the module doc).
            fds, payloads = [conn.fd for conn, _ in theirs], [data for _, data in theirs]
            self._started().submit(fds, payloads, duplicate=True)
        mine = _usable(batch[:half])
        # On the sockets' own descriptors: only this thread closes them, and it waits here.
        outcomes = send_now([conn.fd for conn, _ in mine], [data for _, data in mine], close_after=False)
        for (conn, data), sent in zip(mine, outcomes, strict=True):
            conn.written(data, sent)

    def _started(self) -> SendQueue:
        if self._queue is None:
            self._queue = SendQueue()
            self._loop.add_reader(self._queue.event_fd, self._sent)
            self._thread = threading.Thread(target=self._queue.serve, name="fastkv-send", daemon=True)
            self._thread.start()
        return self._queue

    def _sent(self) -> None:
        assert self._queue is not None
        for outcomes in self._queue.collect():
            batch = self._in_flight.popleft()
            for (conn, data), sent in zip(batch, outcomes, strict=True):
                conn.written(data, sent)

    def close(self) -> None:
        """Send what is queued, then end the thread (blocks until it has)."""
        if self._queue is None or self._thread is None:
            return
        self._loop.remove_reader(self._queue.event_fd)
        self._queue.stop()
        self._thread.join()
        self._sent()
        self._queue = self._thread = None


def _usable(batch: list[tuple[Connection, bytes]]) -> list[tuple[Connection, bytes]]:
    """The answers of ``batch`` whose socket can take a send now (it has a descriptor and is not
    closing); each of the others is handed back to its connection to write."""
    usable: list[tuple[Connection, bytes]] = []
    for conn, data in batch:
        if conn.fd >= 0 and not conn.transport.is_closing():
            usable.append((conn, data))
        else:
            conn.written(data, 0)
    return usable
