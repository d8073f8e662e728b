"""The peer transport over TCP: framed msgpack on the running asyncio loop (uvloop in the server).

Connections are one-way for messages, as in etcd: member A dials B to send to B, and B dials
A to send to A. Replies to ``call`` requests and to pings travel back on the connection the
request came in on.

Per peer, the sending side keeps one outbound connection and one bounded queue of encoded
frames. ``send`` only appends to the queue; everything queued before the loop runs again, or
while the socket cannot take more (the transport paused writing), goes out as one write.
When the queue is full the frame is dropped and counted — Raft tolerates loss, and a slow
peer cannot make memory grow. While a peer is unreachable, frames for it are counted as
failed and not kept; a timer dials it again after an exponential backoff with jitter, or at
once when that peer dials us (it is evidently up again).

Each outbound connection starts with a ping; the pong proves the peer accepts our frames
(which resets the backoff) and gives a round-trip sample. After that one ping rides along
with a write whenever none is outstanding and ``PING_INTERVAL_S`` passed since the last, so
latency samples follow the traffic without a pong for every write (at a write per request,
that would double the frames and wake-ups of both members).

A process that is not a member yet (one about to join the cluster) may open a connection for
the cluster-info handshake only (``fastkv.transport.framing``): ``fetch_cluster_info`` asks,
the handler set with ``set_info_handler`` answers.

A connection that delivers a frame that breaks the rules of ``fastkv.transport.framing``
(garbage, oversized, another cluster, an unknown member, the wrong recipient or version,
truncated msgpack) is closed with its reason logged on ``fastkv.transport``; nothing else is
affected.
"""

from __future__ import annotations

import asyncio
import enum
import functools
import itertools
import logging
import random
import time
from collections import deque
from collections.abc import Callable, Iterable
from typing import cast
from urllib.parse import urlsplit

from fastkv.transport import (
    MessageHandler,
    PendingCalls,
    RequestHandler,
    answer_request,
    log,
)
from fastkv.transport.framing import (
    DEFAULT_MAX_FRAME_BYTES,
    KIND_ERROR,
    KIND_INFO_REPLY,
    KIND_INFO_REQUEST,
    KIND_MESSAGE,
    KIND_PING,
    KIND_PONG,
    KIND_REPLY,
    KIND_REQUEST,
    Frame,
    FrameDecoder,
    FrameEncoder,
    FrameError,
)
from fastkv.transport.stats import PeerStats

__all__ = ["Backoff", "TcpTransport", "fetch_cluster_info", "parse_peer_url"]

PING_INTERVAL_S = 0.1  # at least this long between two pings riding along with traffic
INBOUND_KINDS = frozenset((KIND_MESSAGE, KIND_REQUEST, KIND_PING, KIND_INFO_REQUEST))
InfoHandler = Callable[[], object]
"""Returns the msgpack-serialisable cluster info sent to a process about to join."""
OUTBOUND_KINDS = frozenset((KIND_REPLY, KIND_ERROR, KIND_PONG))


def parse_peer_url(url: str) -> tuple[str, int]:
    """``(host, port)`` of an ``http://host:port`` peer URL; ``ValueError`` for anything else."""
    parts = urlsplit(url)
    if parts.scheme != "http" or not parts.hostname or parts.port is None:
        raise ValueError(f"peer URL {url!r} is not of the form http://host:port")
    return parts.hostname, parts.port


class Backoff:
    """Delays between connection attempts: doubling from ``initial`` up to ``maximum``, each drawn
    uniformly from the upper half of the current step so that members do not retry in step."""

    __slots__ = ("_step", "initial", "maximum", "rng")

    def __init__(self, initial: float, maximum: float, rng: random.Random) -> None:
        self.initial = initial
        self.maximum = maximum
        self.rng = rng
        self._step = initial

    def next_delay(self) -> float:
        """The delay before the next attempt; the following one will be about twice as long."""
        step = self._step
        self._step = min(self.maximum, step * 2)
        return step * (0.5 + 0.5 * self.rng.random())

    def reset(self) -> None:
        """The peer answered: the next failure waits ``initial`` again."""
        self._step = self.initial


class _LinkState(enum.Enum):
    IDLE = "idle"  # not started, stopped or being reconfigured
    CONNECTING = "connecting"  # a dial is in progress; frames are queued
    CONNECTED = "connected"
    WAITING = "waiting"  # backing off after a failure; frames are counted as failed


class _Peer:
    """The sending side of one peer: its URLs, queue, outbound connection and counters."""

    def __init__(self, member_id: int, urls: list[tuple[str, int]], backoff: Backoff) -> None:
        self.member_id = member_id
        self.urls = urls
        self.url_turn = itertools.cycle(range(len(urls)))
        self.backoff = backoff
        self.stats = PeerStats()
        # Link state
        self.state = _LinkState.IDLE
        self.connection: _Connection | None = None
        self.dialing: asyncio.Task[None] | None = None
        self.timer: asyncio.TimerHandle | None = None
        self.probe: tuple[int, float] | None = None  # (ping id, monotonic time sent) while outstanding
        self.pinged = 0.0  # monotonic time the last ping was sent
        self.active_since = 0.0  # monotonic time the current link was proven by a pong; 0 = not active
        # Queue of encoded frames not yet written
        self.queue: deque[bytes] = deque()
        self.queued_bytes = 0
        self.flush_scheduled = False

    def next_url(self) -> tuple[str, int]:
        """The URL to dial next: each in turn, so one dead URL does not hide the others."""
        return self.urls[next(self.url_turn)]

    def drop_queue(self) -> None:
        """Discard what was never written, counting it as failed."""
        self.stats.failed += len(self.queue)
        self.queue.clear()
        self.queued_bytes = 0


class _Connection(asyncio.Protocol):
    """One TCP connection, inbound (``peer`` is None) or outbound to ``peer``.

    ``data_received`` only feeds the decoder and hands each frame to the owning transport;
    a ``FrameError`` closes this connection and nothing else.
    """

    def __init__(self, owner: TcpTransport, peer: _Peer | None) -> None:
        # Per-connection state
        self.owner = owner
        self.peer = peer
        self.transport: asyncio.Transport | None = None
        self.address = "?"
        self.paused = False
        self.closed_for: str | None = None  # why this side closed it, once it did
        accept = owner.is_peer if peer is None else peer.member_id.__eq__
        self.decoder = FrameDecoder(owner.cluster_id, owner.member_id, accept_sender=accept,
                                    kinds=INBOUND_KINDS if peer is None else OUTBOUND_KINDS,
                                    max_frame_bytes=owner.max_frame_bytes)

    # Protocol interface

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        host, port = transport.get_extra_info("peername")[:2]
        self.address = f"{host}:{port}"
        self.owner.connection_made(self)

    def data_received(self, data: bytes) -> None:
        self.decoder.feed(data)
        try:
            for frame in self.decoder:
                self.owner.on_frame(self, frame)
                if self.closed_for is not None:
                    return
        except FrameError as exc:
            self.close(exc.reason)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.closed_for is None and self.decoder.buffered:
            log.warning("connection with %s closed inside a frame (%d bytes unread)", self.address,
                        self.decoder.buffered)
        self.owner.connection_lost(self, exc)

    def pause_writing(self) -> None:
        self.paused = True

    def resume_writing(self) -> None:
        self.paused = False
        if self.peer is not None:
            self.owner.schedule_flush(self.peer)

    # Actions

    @property
    def member(self) -> int | None:
        """The member on the other end, once known."""
        return self.peer.member_id if self.peer is not None else self.decoder.sender

    def write(self, data: bytes) -> None:
        if self.transport is not None and self.closed_for is None:
            self.transport.write(data)

    def close(self, reason: str, routine: bool = False) -> None:
        """Close at once, dropping unwritten bytes. ``reason`` is logged as a warning unless closing is
        ``routine`` (stop, reconfiguration)."""
        if self.closed_for is not None or self.transport is None:
            return
        self.closed_for = reason
        log.log(logging.DEBUG if routine else logging.WARNING, "closing connection with %s (member %s): %s",
                self.address, "?" if self.member is None else f"{self.member:x}", reason)
        self.transport.abort()


class TcpTransport:
    """The ``fastkv.transport.Transport`` over TCP. See the module documentation for the behaviour.

    ``listen_urls`` are ``http://host:port`` (port 0 picks a free port: see ``listen_addresses``);
    ``peers`` maps member ids to their peer URLs. ``rng`` draws the backoff jitter. ``queue_limit``
    and ``queue_bytes_limit`` bound each peer's queue; ``max_frame_bytes`` bounds one frame both
    ways. ``reply_buffer_limit`` bounds the replies buffered for a peer that does not read them.
    """

    def __init__(self, cluster_id: int, member_id: int, listen_urls: Iterable[str],
                 peers: dict[int, list[str]], loop: asyncio.AbstractEventLoop | None = None,
                 rng: random.Random | None = None, *, max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES,
                 queue_limit: int = 4096, queue_bytes_limit: int = 64 * 1024 * 1024,
                 backoff_initial: float = 0.05, backoff_max: float = 2.0, connect_timeout: float = 2.0,
                 reply_buffer_limit: int = 16 * 1024 * 1024) -> None:
        self.cluster_id = cluster_id
        self.member_id = member_id
        self.listen_urls = [parse_peer_url(url) for url in listen_urls]
        self.max_frame_bytes = max_frame_bytes
        self.queue_limit = queue_limit
        self.queue_bytes_limit = queue_bytes_limit
        self.backoff_initial = backoff_initial
        self.backoff_max = backoff_max
        self.connect_timeout = connect_timeout
        self.reply_buffer_limit = reply_buffer_limit
        self._loop = loop
        self._rng = rng if rng is not None else random.Random()
        self._encoder = FrameEncoder(cluster_id, member_id, max_frame_bytes)
        self._handler: MessageHandler | None = None
        self._request_handler: RequestHandler | None = None
        self._info_handler: InfoHandler | None = None
        self._calls = PendingCalls()
        self._probe_ids = itertools.count(1)
        self._peers: dict[int, _Peer] = {}
        self._inbound: set[_Connection] = set()
        self._servers: list[asyncio.Server] = []
        self._running = False
        self._on_frame = {KIND_MESSAGE: self._on_message, KIND_REQUEST: self._on_request,
                          KIND_PING: self._on_ping, KIND_PONG: self._on_pong,
                          KIND_REPLY: self._on_reply, KIND_ERROR: self._on_reply,
                          KIND_INFO_REQUEST: self._on_info}
        for peer_id, urls in peers.items():
            self.add_peer(peer_id, urls)

    # Public interface

    async def start(self) -> None:
        """Listen on every listen URL and dial every peer."""
        loop = self._loop = self._loop or asyncio.get_running_loop()
        for host, port in self.listen_urls:
            host = "127.0.0.1" if host == "localhost" else host  # as etcd listens for localhost
            self._servers.append(await loop.create_server(lambda: _Connection(self, None), host, port))
        self._running = True
        for peer in self._peers.values():
            self._dial(peer)

    @property
    def listen_addresses(self) -> list[tuple[str, int]]:
        """The ``(host, port)`` actually listened on, one per socket (after ``start``)."""
        return [sock.getsockname()[:2] for server in self._servers for sock in server.sockets]

    def set_handler(self, handler: MessageHandler) -> None:
        self._handler = handler

    def set_request_handler(self, handler: RequestHandler) -> None:
        self._request_handler = handler

    def set_info_handler(self, handler: InfoHandler) -> None:
        """Answer cluster-info requests (the handshake of a process about to join) with ``handler()``."""
        self._info_handler = handler

    def active_since(self, member_id: int) -> float:
        """Since when (``time.monotonic()``) the link to ``member_id`` has been up without a break,
        counted from the first pong on it; 0.0 while it is down or unknown."""
        peer = self._peers.get(member_id)
        return peer.active_since if peer is not None else 0.0

    def send(self, to: int, message: object) -> None:
        """Queue ``message`` for ``to``; see ``Transport.send``. A message to an unknown member is
        dropped (Raft may still address a member that was just removed)."""
        peer = self._peers.get(to)
        if peer is None:
            log.debug("dropping a message to unknown member %x", to)
            return
        self._enqueue(peer, self._encoder.encode(KIND_MESSAGE, to, message))

    async def call(self, to: int, message: object, timeout: float) -> object:
        """Send a request to ``to`` and return its reply; see ``Transport.call``."""
        peer = self._peers.get(to)

        def send(request_id: int) -> bool:
            frame = self._encoder.encode(KIND_REQUEST, to, message, request_id)
            return peer is not None and self._enqueue(peer, frame)

        return await self._calls.call(to, send, timeout)

    def add_peer(self, member_id: int, urls: Iterable[str]) -> None:
        if member_id == self.member_id:
            raise ValueError(f"member {member_id:x} is this member")
        if member_id in self._peers:
            raise ValueError(f"member {member_id:x} is already a peer")
        peer = _Peer(member_id, self._parse_urls(urls),
                     Backoff(self.backoff_initial, self.backoff_max, self._rng))
        self._peers[member_id] = peer
        if self._running:
            self._dial(peer)

    def remove_peer(self, member_id: int) -> None:
        """Forget ``member_id``; its inbound connections are closed. Unknown ids are ignored."""
        peer = self._peers.pop(member_id, None)
        if peer is not None:
            self._hang_up(peer, f"member {member_id:x} was removed")
        for connection in [c for c in self._inbound if c.member == member_id]:
            connection.close(f"member {member_id:x} was removed", routine=True)

    def update_peer(self, member_id: int, urls: Iterable[str]) -> None:
        peer = self._peers[member_id]
        peer.urls = self._parse_urls(urls)
        peer.url_turn = itertools.cycle(range(len(peer.urls)))
        self._hang_up(peer, f"member {member_id:x} moved")
        peer.backoff.reset()
        if self._running:
            self._dial(peer)

    def stats(self, member_id: int) -> PeerStats:
        return self._peers[member_id].stats

    def queued(self, member_id: int) -> int:
        """Frames waiting in ``member_id``'s queue (at most ``queue_limit``)."""
        return len(self._peers[member_id].queue)

    def is_peer(self, member_id: int) -> bool:
        """Whether frames from ``member_id`` are accepted."""
        return member_id in self._peers

    async def stop(self) -> None:
        """Stop listening, close every connection and fail pending calls."""
        self._running = False
        for server in self._servers:
            server.close()
        dialing = [peer.dialing for peer in self._peers.values() if peer.dialing is not None]
        for peer in self._peers.values():
            self._hang_up(peer, "transport stopped")
        for connection in list(self._inbound):
            connection.close("transport stopped", routine=True)
        self._calls.fail(None, "transport stopped")
        await asyncio.gather(*dialing, return_exceptions=True)
        for server in self._servers:
            await server.wait_closed()
        self._servers.clear()

    # Sending side

    def _parse_urls(self, urls: Iterable[str]) -> list[tuple[str, int]]:
        parsed = [parse_peer_url(url) for url in urls]
        if not parsed:
            raise ValueError("a peer needs at least one URL")
        return parsed

    def _enqueue(self, peer: _Peer, frame: bytes) -> bool:
        """Queue a frame for ``peer``; ``False`` (and counted) when it cannot be queued."""
        if peer.state is not _LinkState.CONNECTED and peer.state is not _LinkState.CONNECTING:
            peer.stats.failed += 1
            return False
        if len(peer.queue) >= self.queue_limit or peer.queued_bytes + len(frame) > self.queue_bytes_limit:
            peer.stats.dropped += 1
            return False
        peer.queue.append(frame)
        peer.queued_bytes += len(frame)
        self.schedule_flush(peer)
        return True

    def schedule_flush(self, peer: _Peer) -> None:
        """Write ``peer``'s queue once the loop has run what is ready now (batching those sends)."""
        if not peer.flush_scheduled and peer.connection is not None and peer.queue:
            peer.flush_scheduled = True
            assert self._loop is not None
            self._loop.call_soon(self._flush, peer)

    def _flush(self, peer: _Peer) -> None:
        """Write everything queued for ``peer`` in one write, plus a ping when one is due."""
        peer.flush_scheduled = False
        connection = peer.connection
        if connection is None or connection.paused or not peer.queue:
            return  # resume_writing or the next connection flushes
        peer.stats.sent += len(peer.queue)
        peer.stats.writes += 1
        if peer.probe is None and time.monotonic() - peer.pinged >= PING_INTERVAL_S:
            peer.queue.append(self._ping(peer))
        data = b"".join(peer.queue)
        peer.queue.clear()
        peer.queued_bytes = 0
        connection.write(data)

    def _ping(self, peer: _Peer) -> bytes:
        probe_id = next(self._probe_ids)
        peer.pinged = time.monotonic()  # uvloop's loop.time() has only millisecond steps
        peer.probe = (probe_id, peer.pinged)
        return self._encoder.encode(KIND_PING, peer.member_id, None, probe_id)

    # Link life cycle: IDLE/WAITING -> CONNECTING -> CONNECTED -> WAITING -> CONNECTING ...

    def _dial(self, peer: _Peer) -> None:
        """IDLE/WAITING -> CONNECTING."""
        assert self._loop is not None
        peer.timer = None
        peer.state = _LinkState.CONNECTING
        peer.stats.connects += 1
        peer.dialing = self._loop.create_task(self._connect(peer, *peer.next_url()))

    async def _connect(self, peer: _Peer, host: str, port: int) -> None:
        assert self._loop is not None
        try:
            await asyncio.wait_for(self._loop.create_connection(lambda: _Connection(self, peer), host, port),
                                   self.connect_timeout)
        except (OSError, TimeoutError) as exc:
            if peer.dialing is asyncio.current_task():
                peer.dialing = None
                peer.stats.connect_failures += 1
                log.debug("cannot connect to member %x at %s:%d: %s", peer.member_id, host, port, exc)
                self._wait_before_dialing(peer)
        else:
            if peer.dialing is asyncio.current_task():
                peer.dialing = None

    def _wait_before_dialing(self, peer: _Peer) -> None:
        """CONNECTING/CONNECTED -> WAITING: drop the queue, dial again after the backoff."""
        assert self._loop is not None
        peer.drop_queue()
        peer.state = _LinkState.WAITING
        peer.timer = self._loop.call_later(peer.backoff.next_delay(), self._dial, peer)

    def _hang_up(self, peer: _Peer, reason: str) -> None:
        """Any state -> IDLE: stop dialing, close the connection, drop the queue, fail its calls."""
        if peer.timer is not None:
            peer.timer.cancel()
            peer.timer = None
        if peer.dialing is not None:
            peer.dialing.cancel()
            peer.dialing = None
        connection, peer.connection = peer.connection, None
        if connection is not None:
            connection.close(reason, routine=True)
        peer.drop_queue()
        peer.probe = None
        peer.active_since = 0.0
        peer.flush_scheduled = False
        peer.state = _LinkState.IDLE
        self._calls.fail(peer.member_id, reason)

    def connection_made(self, connection: _Connection) -> None:
        """A connection is up: inbound ones are tracked; outbound ones become the peer's link."""
        peer = connection.peer
        if peer is None:
            self._inbound.add(connection)
            if not self._running:
                connection.close("transport stopped", routine=True)
            return
        if self._peers.get(peer.member_id) is not peer or peer.state is not _LinkState.CONNECTING:
            connection.close("connection no longer wanted", routine=True)
            return
        peer.state = _LinkState.CONNECTED
        peer.connection = connection
        if peer.stats.connect_failures:
            log.info("connected to member %x at %s", peer.member_id, connection.address)
        connection.write(self._ping(peer))
        self.schedule_flush(peer)

    def connection_lost(self, connection: _Connection, exc: Exception | None) -> None:
        """CONNECTED -> WAITING for the peer's link; an inbound connection is just forgotten."""
        peer = connection.peer
        if peer is None:
            self._inbound.discard(connection)
            return
        if peer.connection is not connection:
            return  # hung up on purpose
        peer.connection = None
        peer.probe = None
        peer.active_since = 0.0
        log.warning("lost connection to member %x at %s%s", peer.member_id, connection.address,
                    f": {exc}" if exc else "")
        self._calls.fail(peer.member_id, f"connection to member {peer.member_id:x} lost")
        self._wait_before_dialing(peer)

    # Receiving side

    def on_frame(self, connection: _Connection, frame: Frame) -> None:
        """Dispatch one valid frame by its kind (the decoder admitted only kinds this side expects)."""
        self._on_frame[frame.kind](connection, frame)

    def _on_message(self, connection: _Connection, frame: Frame) -> None:
        if self._handler is None:
            return
        try:
            self._handler(frame.sender, frame.message)
        except Exception:
            log.exception("message handler failed on a message from member %x", frame.sender)

    def _on_request(self, connection: _Connection, frame: Frame) -> None:
        respond = functools.partial(self._reply, connection, frame.sender, frame.request_id)
        answer_request(self._request_handler, frame.sender, frame.message, respond)

    def _reply(self, connection: _Connection, to: int, request_id: int, is_error: bool,
               reply: object) -> None:
        try:
            frame = self._encoder.encode(KIND_ERROR if is_error else KIND_REPLY, to, reply, request_id)
        except (TypeError, ValueError, FrameError) as exc:
            frame = self._encoder.encode(KIND_ERROR, to, f"reply cannot be sent: {exc}", request_id)
        self._write_back(connection, frame)

    def _on_info(self, connection: _Connection, frame: Frame) -> None:
        """The cluster-info handshake: answer once; the decoder accepts nothing more on it."""
        if self._info_handler is None:
            connection.close("cluster-info request, but this member cannot answer one")
            return
        try:
            reply = self._encoder.encode(KIND_INFO_REPLY, 0, self._info_handler())
        except Exception:
            log.exception("answering a cluster-info request failed")
            connection.close("cluster-info request could not be answered")
            return
        log.info("answered a cluster-info request from %s", connection.address)
        self._write_back(connection, reply)

    def _on_ping(self, connection: _Connection, frame: Frame) -> None:
        self._write_back(connection, self._encoder.encode(KIND_PONG, frame.sender, None, frame.request_id))
        self._dial_back_now(frame.sender)

    def _dial_back_now(self, member_id: int) -> None:
        """A peer we are backing off from has just dialed us, so it is up: WAITING -> CONNECTING now,
        with a fresh backoff, rather than after a delay that may have grown to ``backoff_max``."""
        peer = self._peers.get(member_id)
        if peer is None or peer.state is not _LinkState.WAITING or not self._running:
            return
        if peer.timer is not None:
            peer.timer.cancel()
        peer.backoff.reset()
        self._dial(peer)

    def _write_back(self, connection: _Connection, frame: bytes) -> None:
        """Answer on an inbound connection, closing it if the peer has stopped reading answers."""
        transport = connection.transport
        if transport is not None and transport.get_write_buffer_size() > self.reply_buffer_limit:
            connection.close("peer does not read its replies")
            return
        connection.write(frame)

    def _on_pong(self, connection: _Connection, frame: Frame) -> None:
        peer = connection.peer
        assert peer is not None
        if peer.probe is not None and peer.probe[0] == frame.request_id:
            peer.stats.latency.observe(time.monotonic() - peer.probe[1])
            peer.probe = None
            peer.backoff.reset()
            if not peer.active_since and connection is peer.connection:
                peer.active_since = time.monotonic()

    def _on_reply(self, connection: _Connection, frame: Frame) -> None:
        self._calls.resolve(frame.sender, frame.request_id, frame.message, frame.kind == KIND_ERROR)


async def fetch_cluster_info(url: str, timeout: float,
                             max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES) -> tuple[int, object]:
    """Ask the member listening at peer URL ``url`` for its cluster info (the handshake of a
    process about to join): ``(the answering member's id, the info it sent)``.

    Raises ``OSError`` (``ConnectionError`` when the connection closes without an answer),
    ``TimeoutError`` after ``timeout`` seconds, ``FrameError`` for an answer that breaks the rules.
    """
    host, port = parse_peer_url(url)

    async def ask() -> tuple[int, object]:
        reader, writer = await asyncio.open_connection(host, port)
        try:
            writer.write(FrameEncoder(0, 0, max_frame_bytes).encode(KIND_INFO_REQUEST, 0, None))
            decoder = FrameDecoder(0, 0, kinds=frozenset((KIND_INFO_REPLY,)), accept_sender=lambda _: True,
                                   max_frame_bytes=max_frame_bytes)
            while True:
                data = await reader.read(65536)
                if not data:
                    raise ConnectionError(f"{url} closed the connection without answering")
                decoder.feed(data)
                for frame in decoder:
                    return frame.sender, frame.message
        finally:
            writer.close()

    return await asyncio.wait_for(ask(), timeout)
