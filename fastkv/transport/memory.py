"""The peer transport in one process, with faults: loss, duplication, delay, reordering, partitions.

A ``MemoryNetwork`` carries messages between the ``MemoryTransport`` of each member. Every
fault is drawn from the ``random.Random`` it is given, in the order messages are sent, so one
seed and one sequence of sends give one schedule of deliveries.

Time is the network's own. Without an event loop it stands still until ``advance(seconds)``
moves it and delivers what became due (``deliver_all`` delivers everything in flight); a
simulation steps it. Once a transport is ``start``ed on an asyncio loop, the network follows
the loop's clock and delivers on its own with a timer.

Messages cross the network as msgpack bytes, exactly as on TCP: the receiver gets its own copy,
and a message that is not serialisable fails at ``send`` as it would there.

Faults, per message, at send time: lost with probability ``loss``; else a copy is added with
probability ``duplication``; each copy is delayed uniformly between ``min_delay`` and
``max_delay`` seconds but never overtakes an earlier message on its link (TCP's order), unless
it is ``reorder``ed: then it is held back an extra ``reorder_delay`` and later messages may
pass it. At delivery time: dropped when sender and recipient are partitioned, either of them is
stopped, or the recipient does not know the sender. ``queue_limit`` bounds the messages in
flight to one recipient; beyond it messages are dropped.
"""

from __future__ import annotations

import asyncio
import functools
import heapq
import itertools
import random
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass

from fastkv.transport import MessageHandler, PendingCalls, RequestHandler, answer_request, log
from fastkv.transport.framing import (
    KIND_ERROR,
    KIND_MESSAGE,
    KIND_REPLY,
    KIND_REQUEST,
    pack_payload,
    unpack_payload,
)
from fastkv.transport.stats import PeerStats

__all__ = ["MemoryNetwork", "MemoryTransport"]


@dataclass(frozen=True, slots=True)
class _Envelope:
    sender: int
    recipient: int
    kind: int
    request_id: int
    payload: bytes


class MemoryNetwork:
    """The wire between in-memory transports; see the module documentation for the faults."""

    def __init__(self, rng: random.Random, *, loss: float = 0.0, duplication: float = 0.0,
                 min_delay: float = 0.0, max_delay: float = 0.0, reorder: float = 0.0,
                 reorder_delay: float = 0.01, queue_limit: int = 100_000) -> None:
        self.rng = rng
        self.loss = loss
        self.duplication = duplication
        self.min_delay = min_delay
        self.max_delay = max_delay
        self.reorder = reorder
        self.reorder_delay = reorder_delay
        self.queue_limit = queue_limit
        self.now = 0.0  # the network's time while no loop drives it
        self.delivered = 0
        self._transports: dict[int, MemoryTransport] = {}
        self._groups: dict[int, int] = {}  # member -> partition group; empty = all connected
        self._in_flight: list[tuple[float, int, _Envelope]] = []  # heap by (due, sequence)
        self._per_recipient: Counter[int] = Counter()
        self._link_due: dict[tuple[int, int], float] = {}  # latest in-order due time per link
        self._sequence = itertools.count()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._timer: asyncio.TimerHandle | None = None

    # Membership and faults

    def transport(self, member_id: int, peers: Iterable[int] = ()) -> MemoryTransport:
        """The transport of a new member ``member_id`` that knows ``peers``."""
        if member_id in self._transports:
            raise ValueError(f"member {member_id:x} is already on this network")
        transport = self._transports[member_id] = MemoryTransport(self, member_id, peers)
        return transport

    def partition(self, *groups: Iterable[int]) -> None:
        """Only members of the same group reach each other; members not named form one more group."""
        self._groups = {member: number for number, group in enumerate(groups, 1) for member in group}

    def heal(self) -> None:
        """End every partition."""
        self._groups = {}

    def connected(self, a: int, b: int) -> bool:
        """Whether a message from ``a`` would reach ``b`` now (ignoring random faults)."""
        return self._groups.get(a, 0) == self._groups.get(b, 0)

    @property
    def in_flight(self) -> int:
        """Messages sent and not yet delivered or dropped."""
        return len(self._in_flight)

    # Time

    def advance(self, seconds: float) -> int:
        """Move the network's time forward and deliver what became due; returns how many arrived.
        Only without a loop (``start`` hands time to the loop)."""
        if self._loop is not None:
            raise RuntimeError("the network follows its event loop's clock")
        self.now += seconds
        return self._deliver_due(self.now)

    def deliver_all(self) -> int:
        """Deliver everything in flight, including what deliveries send, in due order."""
        delivered = 0
        while self._in_flight:
            if self._loop is None:
                self.now = max(self.now, self._in_flight[0][0])
            delivered += self._deliver_due(self._in_flight[0][0])
        return delivered

    def follow(self, loop: asyncio.AbstractEventLoop) -> None:
        """Take time from ``loop`` and deliver with its timers from now on."""
        if self._loop is loop:
            return
        if self._loop is not None:
            raise RuntimeError("the network already follows another event loop")
        shift = loop.time() - self.now  # keep what is in flight due as far ahead as it was
        self._in_flight = [(due + shift, seq, envelope) for due, seq, envelope in self._in_flight]
        self._link_due = {link: due + shift for link, due in self._link_due.items()}
        self._loop = loop
        self._arm()

    def _time(self) -> float:
        return self._loop.time() if self._loop is not None else self.now

    # Sending and delivering

    def submit(self, envelope: _Envelope) -> bool:
        """Put a message on the wire with this network's faults; ``False`` if it was lost or
        dropped at once (counted by the sending transport)."""
        rng = self.rng
        if rng.random() < self.loss:
            return False
        copies = 2 if rng.random() < self.duplication else 1
        placed = 0
        for _ in range(copies):
            if self._per_recipient[envelope.recipient] < self.queue_limit:
                heapq.heappush(self._in_flight, (self._due(envelope), next(self._sequence), envelope))
                self._per_recipient[envelope.recipient] += 1
                placed += 1
        self._arm()
        return placed > 0

    def _due(self, envelope: _Envelope) -> float:
        """When one copy arrives: after its delay, and after earlier messages on its link unless reordered."""
        rng = self.rng
        due = self._time() + self.min_delay + rng.random() * (self.max_delay - self.min_delay)
        if rng.random() < self.reorder:
            return due + self.reorder_delay
        link = (envelope.sender, envelope.recipient)
        due = max(due, self._link_due.get(link, due))
        self._link_due[link] = due
        return due

    def _deliver_due(self, now: float) -> int:
        delivered = 0
        while self._in_flight and self._in_flight[0][0] <= now:
            envelope = heapq.heappop(self._in_flight)[2]
            self._per_recipient[envelope.recipient] -= 1
            if self._deliver(envelope):
                delivered += 1
        self.delivered += delivered
        return delivered

    def _deliver(self, envelope: _Envelope) -> bool:
        sender = self._transports.get(envelope.sender)
        recipient = self._transports.get(envelope.recipient)
        if (sender is None or recipient is None or not sender.running or not recipient.running
                or not recipient.is_peer(envelope.sender)
                or not self.connected(envelope.sender, envelope.recipient)):
            if sender is not None and sender.is_peer(envelope.recipient):
                sender.stats(envelope.recipient).failed += 1
            return False
        recipient.receive(envelope)
        return True

    def _arm(self) -> None:
        """With a loop: wake up when the earliest message in flight is due."""
        if self._loop is None or not self._in_flight:
            return
        due = self._in_flight[0][0]
        if self._timer is not None:
            if self._timer.when() <= due:
                return
            self._timer.cancel()
        self._timer = self._loop.call_at(due, self._on_timer)

    def _on_timer(self) -> None:
        assert self._loop is not None
        self._timer = None
        try:
            self._deliver_due(self._loop.time())
        finally:
            self._arm()


class MemoryTransport:
    """One member's ``fastkv.transport.Transport`` on a ``MemoryNetwork`` (made by
    ``MemoryNetwork.transport``). It runs from creation; ``stop`` takes it off the network and
    ``start`` puts it back (and lets the running loop drive the network)."""

    def __init__(self, network: MemoryNetwork, member_id: int, peers: Iterable[int]) -> None:
        self.network = network
        self.member_id = member_id
        self.running = True
        self._peers: dict[int, PeerStats] = {}
        self._handler: MessageHandler | None = None
        self._request_handler: RequestHandler | None = None
        self._calls = PendingCalls()
        for peer in peers:
            self.add_peer(peer)

    async def start(self) -> None:
        self.running = True
        self.network.follow(asyncio.get_running_loop())

    async def stop(self) -> None:
        self.running = False
        self._calls.fail(None, "transport stopped")

    def set_handler(self, handler: MessageHandler) -> None:
        self._handler = handler

    def set_request_handler(self, handler: RequestHandler) -> None:
        self._request_handler = handler

    def add_peer(self, member_id: int, urls: Iterable[str] = ()) -> None:
        if member_id == self.member_id or member_id in self._peers:
            raise ValueError(f"member {member_id:x} is this member or already a peer")
        self._peers[member_id] = PeerStats()

    def remove_peer(self, member_id: int) -> None:
        self._peers.pop(member_id, None)
        self._calls.fail(member_id, f"member {member_id:x} was removed")

    def update_peer(self, member_id: int, urls: Iterable[str]) -> None:
        """URLs mean nothing here; the member must be a peer."""
        if member_id not in self._peers:
            raise KeyError(member_id)

    def stats(self, member_id: int) -> PeerStats:
        return self._peers[member_id]

    def is_peer(self, member_id: int) -> bool:
        return member_id in self._peers

    def send(self, to: int, message: object) -> None:
        self._submit(to, KIND_MESSAGE, message, 0)

    async def call(self, to: int, message: object, timeout: float) -> object:
        return await self._calls.call(to, lambda request_id: self._submit(to, KIND_REQUEST, message,
                                                                          request_id), timeout)

    def _submit(self, to: int, kind: int, message: object, request_id: int) -> bool:
        """Hand one message to the network, counting it; ``False`` if it is known lost at once."""
        stats = self._peers.get(to)
        payload = pack_payload(message)
        if stats is None:
            log.debug("dropping a message to unknown member %x", to)
            return False
        if self.running and self.network.submit(_Envelope(self.member_id, to, kind, request_id, payload)):
            stats.sent += 1
            return True
        stats.failed += 1
        return False

    def _reply(self, to: int, request_id: int, is_error: bool, reply: object) -> None:
        self._submit(to, KIND_ERROR if is_error else KIND_REPLY, reply, request_id)

    def receive(self, envelope: _Envelope) -> None:
        """Called by the network to deliver one message to this member."""
        message = unpack_payload(envelope.payload)
        if envelope.kind == KIND_MESSAGE:
            if self._handler is not None:
                self._handler(envelope.sender, message)
        elif envelope.kind == KIND_REQUEST:
            answer_request(self._request_handler, envelope.sender, message,
                           functools.partial(self._reply, envelope.sender, envelope.request_id))
        else:
            self._calls.resolve(envelope.sender, envelope.request_id, message, envelope.kind == KIND_ERROR)
