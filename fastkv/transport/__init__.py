"""Peer transport: delivers msgpack-serialisable messages between the members of a cluster.

The transport knows nothing of Raft: a message is any msgpack-serialisable value addressed to
a member id. Delivery is best effort — a message may be lost, and ``send`` never blocks and
never raises because a peer is down or slow (Raft retries on its own). Messages on one link
arrive in the order they were sent, or not at all.

Implementations (one contract, ``Transport``):

* ``fastkv.transport.tcp.TcpTransport`` — framed msgpack over TCP on the running asyncio
  loop (uvloop in the server);
* ``fastkv.transport.memory.MemoryNetwork`` / ``MemoryTransport`` — in one process, with
  seeded loss, duplication, delay, reordering and partitions, for tests and simulations.

Besides one-way messages, ``call`` sends a request and waits for the reply that the peer's
request handler returns (used to forward client writes from a follower to the leader).
"""

from __future__ import annotations

import asyncio
import inspect
import itertools
import logging
from collections.abc import Awaitable, Callable, Iterable
from typing import Protocol

from fastkv.transport.stats import PeerStats

__all__ = [
    "MessageHandler",
    "PeerUnavailable",
    "PendingCalls",
    "RemoteError",
    "RequestHandler",
    "Transport",
    "answer_request",
]

log = logging.getLogger("fastkv.transport")

MessageHandler = Callable[[int, object], None]
"""Called with ``(from_id, message)`` for every message received, on the event loop."""

RequestHandler = Callable[[int, object], object | Awaitable[object]]
"""Called with ``(from_id, request)``; returns the reply, or an awaitable of it. Raising sends the
error's text back, where ``call`` raises it as ``RemoteError``."""


class PeerUnavailable(ConnectionError):
    """``call`` could not reach the peer: unknown, not connected, queue full or connection lost."""


class RemoteError(Exception):
    """The peer's request handler raised; the message is the text of that error."""


class Transport(Protocol):
    """What the server needs from a peer transport."""

    async def start(self) -> None:
        """Listen for peers and begin connecting to them; returns once listening."""

    def send(self, to: int, message: object) -> None:
        """Queue ``message`` for member ``to``. Never blocks; never raises for a down or unknown peer
        (the message is counted as failed or dropped). Raises ``TypeError`` for a message that is not
        msgpack-serialisable and ``FrameError`` for one larger than the frame limit."""

    def set_handler(self, handler: MessageHandler) -> None:
        """Receive every one-way message with ``handler(from_id, message)``."""

    def set_request_handler(self, handler: RequestHandler) -> None:
        """Answer ``call`` requests from peers with ``handler(from_id, request) -> reply``."""

    async def call(self, to: int, message: object, timeout: float) -> object:
        """Send a request and return the peer's reply. Raises ``TimeoutError``, ``PeerUnavailable``
        or ``RemoteError``."""

    def add_peer(self, member_id: int, urls: Iterable[str]) -> None:
        """Start talking to a new member; its frames are accepted from now on."""

    def remove_peer(self, member_id: int) -> None:
        """Forget a member: drop its queue, close its connections, refuse its frames."""

    def update_peer(self, member_id: int, urls: Iterable[str]) -> None:
        """A member's peer URLs changed; reconnect to the new ones."""

    def stats(self, member_id: int) -> PeerStats:
        """Counters and round-trip latency of one peer; ``KeyError`` for an unknown member."""

    async def stop(self) -> None:
        """Close listeners and connections; pending calls fail with ``PeerUnavailable``."""


class PendingCalls:
    """Requests waiting for their replies, by request id. Ids are unique per transport."""

    __slots__ = ("_ids", "_waiting")

    def __init__(self) -> None:
        self._ids = itertools.count(1)
        self._waiting: dict[int, tuple[int, asyncio.Future[object]]] = {}

    async def call(self, peer: int, send: Callable[[int], bool], timeout: float) -> object:
        """Run one request: ``send(request_id)`` queues it (``False``: it could not be queued, raise
        ``PeerUnavailable``), then wait up to ``timeout`` seconds for the reply (``TimeoutError``)."""
        request_id = next(self._ids)
        future: asyncio.Future[object] = asyncio.get_running_loop().create_future()
        self._waiting[request_id] = (peer, future)
        try:
            if not send(request_id):
                raise PeerUnavailable(f"member {peer:x} cannot be reached")
            return await asyncio.wait_for(future, timeout)
        finally:
            del self._waiting[request_id]

    def resolve(self, peer: int, request_id: int, reply: object, is_error: bool) -> None:
        """Complete a request with the peer's reply. Late replies (after a timeout) and replies from
        a member the request was not sent to are ignored."""
        waiting = self._waiting.get(request_id)
        if waiting is None or waiting[0] != peer or waiting[1].done():
            return
        if is_error:
            waiting[1].set_exception(RemoteError(str(reply)))
        else:
            waiting[1].set_result(reply)

    def fail(self, peer: int | None, reason: str) -> None:
        """Fail the requests sent to ``peer`` (every request when ``None``) with ``PeerUnavailable``."""
        for _, (to, future) in list(self._waiting.items()):
            if (peer is None or to == peer) and not future.done():
                future.set_exception(PeerUnavailable(reason))


def answer_request(handler: RequestHandler | None, sender: int, request: object,
                   respond: Callable[[bool, object], None]) -> None:
    """Run ``handler`` for a request and pass ``(is_error, reply)`` to ``respond`` when it is known:
    at once for a plain return value, when the awaitable finishes otherwise."""
    if handler is None:
        respond(True, "no request handler")
        return
    try:
        result = handler(sender, request)
    except Exception as exc:
        log.debug("request handler failed for member %x: %r", sender, exc)
        respond(True, str(exc) or type(exc).__name__)
        return
    if not inspect.isawaitable(result):
        respond(False, result)
        return

    async def finish(awaitable: Awaitable[object]) -> None:
        try:
            reply = await awaitable
        except Exception as exc:
            respond(True, str(exc) or type(exc).__name__)
        else:
            respond(False, reply)

    task = asyncio.ensure_future(finish(result))
    _tasks.add(task)
    task.add_done_callback(_tasks.discard)


_tasks: set[asyncio.Future[None]] = set()  # keeps request tasks alive until they finish
