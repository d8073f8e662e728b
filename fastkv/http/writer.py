"""The answer writer: the answers of a watch fan-out leave from two threads at once.

Sending an answer is a syscall that, on loopback, also does the receiving side's TCP work. For
ordinary loop passes that is cheaper on the loop than any hand-off; a fan-out (one event for
many long-poll watchers) is thousands of such sends at once, and a busy pass of GETs or PUTs
dozens. ``AnswerWriter`` shares those out: the first answer of a loop pass goes out at once
through its transport (a lone client waits for nothing); ``write`` gathers the others, and at
the end of the pass, when they are at least ``FAN_OUT``, the loop sends them together with a
compiled send queue's thread, the GIL released, each taking the next unsent answer; fewer are
written through their transports. The watch hub's fan-out does not wait for the end of the pass:
``write_all`` sends the answers of the long polls one event completes at once, before the hub
does its bookkeeping for them.

Contract with a connection (``HttpProtocol``): while one of its answers is with the writer
(``sending``) whatever else it writes waits, in order, and so does a close. The sends use the
sockets' own descriptors while the loop waits for them, so no connection can close (and its
descriptor be reused) meanwhile; a connection whose transport closed after its answer was
gathered gets the answer back unsent. ``written(data, sent)`` runs on the loop once the send is
done (``sent`` bytes went out, or ``-errno``); the connection writes the rest through its
transport.
"""

from __future__ import annotations

import asyncio
import threading
from typing import Any, Protocol

from fastkv._native.ioqueue import SendQueue

# A loop pass that gathers this many answers has them sent by the loop and the queue's thread
# together; fewer are written through their transports. Side by side against 128: GET at 64
# connections +15 % and +23 %, PUT even.
FAN_OUT = 16
MAX_ANSWER = 1 << 16  # bigger answers go through the transport, which buffers what is left


class Connection(Protocol):
    transport: Any
    write_paused: bool
    sending: bool  # one of its answers is with the writer
    fd: int  # the socket's descriptor, as its transport holds it

    def write(self, data: bytes) -> None: ...
    def written(self, data: bytes, sent: int) -> None: ...


class AnswerWriter:
    """Writes whole answers of many connections, batched per loop pass (see the module doc)."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._pass: list[tuple[Connection, bytes]] = []
        self._pass_open = False  # this loop pass answered already: later answers are gathered
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
        usable = _usable(batch)
        outcomes = self._started().send([conn.fd for conn, _ in usable], [data for _, data in usable])
        for (conn, data), sent in zip(usable, outcomes, strict=True):
            conn.written(data, sent)

    def write_all(self, conns: list[Connection], data: bytes) -> None:
        """Write ``data`` to each of ``conns`` now, as its own ``write`` would: the watch hub's
        ``deliver``, for the long-poll watchers one event completes. From ``FAN_OUT`` of them,
        those whose socket can take it at once (nothing with the writer or in the transport's
        buffer, not closing) are sent together by the loop and the thread, and what a socket
        did not take goes to its transport; the others, and all of a smaller group, get
        ``conn.write``. Call it from synchronous work only: the sends use the sockets' own
        descriptors, which must not close before it returns."""
        if len(conns) < FAN_OUT or len(data) > MAX_ANSWER:
            for conn in conns:
                conn.write(data)
            return
        ready: list[Connection] = []
        for conn in conns:
            transport = conn.transport
            if (conn.sending or conn.write_paused or conn.fd < 0 or transport.get_write_buffer_size()
                    or transport.is_closing()):
                conn.write(data)
            else:
                ready.append(conn)
        outcomes = self._started().send([conn.fd for conn in ready], [data] * len(ready))
        for conn, sent in zip(ready, outcomes, strict=True):
            if sent < len(data):
                conn.transport.write(data[max(sent, 0):])  # the rest, or the error, to the transport

    def _started(self) -> SendQueue:
        if self._queue is None:
            self._queue = SendQueue()
            self._thread = threading.Thread(target=self._queue.serve, name="fastkv-send", daemon=True)
            self._thread.start()
        return self._queue

    def close(self) -> None:
        """End the thread (blocks until it has)."""
        if self._queue is None or self._thread is None:
            return
        self._queue.stop()
        self._thread.join()
        self._queue = self._thread = None


def _usable(batch: list[tuple[Connection, bytes]]) -> list[tuple[Connection, bytes]]:
    """The answers of ``batch`` whose socket can take a send now (it has a descriptor and its
    transport is not closing); each of the others is handed back to its connection to write."""
    usable: list[tuple[Connection, bytes]] = []
    for conn, data in batch:
        if conn.fd >= 0 and not conn.transport.is_closing():
            usable.append((conn, data))
        else:
            conn.written(data, 0)
    return usable
