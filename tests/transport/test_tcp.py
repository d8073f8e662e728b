"""The TCP transport on real sockets on 127.0.0.1, under asyncio and uvloop.

Every test fails if the event loop's exception handler was called.
"""

from __future__ import annotations

import asyncio
import logging
import random
import socket
import struct
from collections.abc import Callable, Coroutine
from typing import Any

import pytest
import uvloop

from fastkv.transport import PeerUnavailable, RemoteError
from fastkv.transport.framing import KIND_MESSAGE, PROTOCOL_VERSION, FrameEncoder
from fastkv.transport.stats import LatencyStats
from fastkv.transport.tcp import Backoff, TcpTransport

CLUSTER = 0x1C
LOOPS = {"asyncio": asyncio.new_event_loop, "uvloop": uvloop.new_event_loop}
Run = Callable[[Coroutine[Any, Any, Any]], Any]


@pytest.fixture(params=sorted(LOOPS))
def run(request: pytest.FixtureRequest) -> Run:
    """Run a coroutine to completion on a fresh loop of the parametrised kind."""

    def runner(coro: Coroutine[Any, Any, Any]) -> Any:
        errors: list[dict[str, Any]] = []
        with asyncio.Runner(loop_factory=LOOPS[request.param]) as loop_runner:
            loop_runner.get_loop().set_exception_handler(lambda loop, context: errors.append(context))
            result = loop_runner.run(asyncio.wait_for(coro, 10))
        assert errors == []
        return result

    return runner


class Member:
    """A transport plus everything it received, by sender."""

    def __init__(self, member_id: int, port: int = 0, **options: Any) -> None:
        options = {"backoff_initial": 0.01, "backoff_max": 0.05, **options}
        self.transport = TcpTransport(CLUSTER, member_id, [f"http://127.0.0.1:{port}"], {},
                                      rng=random.Random(member_id), **options)
        self.received: dict[int, list[object]] = {}
        self.transport.set_handler(self.receive)

    def receive(self, sender: int, message: object) -> None:
        self.received.setdefault(sender, []).append(message)

    @property
    def id(self) -> int:
        return self.transport.member_id

    @property
    def url(self) -> str:
        host, port = self.transport.listen_addresses[0]
        return f"http://{host}:{port}"


async def cluster(count: int, **options: Any) -> list[Member]:
    """``count`` started members that all know each other."""
    members = [Member(member_id, **options) for member_id in range(1, count + 1)]
    for member in members:
        await member.transport.start()
    for member in members:
        for other in members:
            if other is not member:
                member.transport.add_peer(other.id, [other.url])
    return members


async def until(condition: Callable[[], bool], action: Callable[[], object] = lambda: None) -> None:
    """Wait, doing ``action`` between looks, until ``condition`` holds (the test's timeout bounds it)."""
    while not condition():
        action()
        await asyncio.sleep(0.002)


async def connected(*members: Member) -> None:
    """Until every member has had a round trip with every other (its first ping answered)."""
    await until(lambda: all(m.transport.stats(o.id).latency.count for m in members for o in members
                            if o is not m))


async def stop(*members: Member) -> None:
    for member in members:
        await member.transport.stop()


def test_messages_arrive_complete_and_in_order_on_every_link(run: Run) -> None:
    async def scenario() -> None:
        members = await cluster(3)
        for round_ in range(30):
            for member in members:
                for other in members:
                    if other is not member:
                        for i in range(100):
                            member.transport.send(other.id, {"from": member.id, "seq": round_ * 100 + i})
            await asyncio.sleep(0)
        await until(lambda: all(len(m.received.get(o.id, ())) == 3000 for m in members for o in members
                                if o is not m))
        for member in members:
            for sender, messages in member.received.items():
                assert messages == [{"from": sender, "seq": seq} for seq in range(3000)]
                stats = members[sender - 1].transport.stats(member.id)
                assert (stats.sent, stats.failed, stats.dropped) == (3000, 0, 0)
        await stop(*members)

    run(scenario())


def test_everything_sent_before_the_loop_runs_goes_out_in_one_write(run: Run) -> None:
    async def scenario() -> None:
        a, b = await cluster(2)
        await connected(a, b)
        before = a.transport.stats(b.id).writes
        for i in range(1000):
            a.transport.send(b.id, i)
        await until(lambda: len(b.received.get(a.id, ())) == 1000)
        stats = a.transport.stats(b.id)
        assert stats.writes - before == 1
        assert stats.sent == 1000
        await stop(a, b)

    run(scenario())


def test_a_peer_that_restarts_is_reached_again(run: Run) -> None:
    async def scenario() -> None:
        a, b = await cluster(2)
        await connected(a, b)
        port = b.transport.listen_addresses[0][1]
        await b.transport.stop()
        await until(lambda: a.transport.stats(b.id).connect_failures >= 2)
        a.transport.send(b.id, "into the void")  # neither blocks nor raises
        b2 = Member(b.id, port)
        await b2.transport.start()
        b2.transport.add_peer(a.id, [a.url])
        await until(lambda: b2.received.get(a.id) is not None, lambda: a.transport.send(b.id, "again"))
        await until(lambda: b2.id in a.received, lambda: b2.transport.send(a.id, "back"))
        assert set(b2.received[a.id]) == {"again"}
        await stop(a, b2)

    run(scenario())


def test_a_restarted_peer_that_dials_us_is_dialed_back_at_once(run: Run) -> None:
    """A member whose backoff has grown long (a peer down for a while) does not wait it out once the
    peer is back and dials it: its first ping makes the member dial back without delay."""
    async def scenario() -> None:
        a, b = await cluster(2, backoff_initial=30.0, backoff_max=60.0)
        await connected(a, b)
        port = b.transport.listen_addresses[0][1]
        await b.transport.stop()
        await until(lambda: a.transport.stats(b.id).failed >= 1, lambda: a.transport.send(b.id, "lost"))
        b2 = Member(b.id, port, backoff_initial=30.0, backoff_max=60.0)
        await b2.transport.start()
        b2.transport.add_peer(a.id, [a.url])  # b2 dials a; a is 30 s or more from dialing b again
        await until(lambda: b2.received.get(a.id) is not None, lambda: a.transport.send(b.id, "soon"))
        assert set(b2.received[a.id]) == {"soon"}
        await stop(a, b2)

    run(scenario())


def test_backoff_doubles_with_jitter_up_to_its_maximum_and_resets() -> None:
    backoff = Backoff(0.1, 1.0, random.Random(3))
    delays = [backoff.next_delay() for _ in range(7)]
    for delay, step in zip(delays, [0.1, 0.2, 0.4, 0.8, 1.0, 1.0, 1.0], strict=True):
        assert step / 2 <= delay <= step
    assert len(set(delays)) == len(delays)  # jittered
    same_seed = Backoff(0.1, 1.0, random.Random(3))
    assert [same_seed.next_delay() for _ in range(7)] == delays
    backoff.reset()
    assert 0.05 <= backoff.next_delay() <= 0.1


def test_a_peer_that_moves_is_reached_at_its_new_url(run: Run) -> None:
    async def scenario() -> None:
        a, b = await cluster(2)
        await connected(a, b)
        moved = Member(b.id)
        await moved.transport.start()
        moved.transport.add_peer(a.id, [a.url])
        await b.transport.stop()
        a.transport.update_peer(b.id, [moved.url])
        await until(lambda: moved.received.get(a.id) is not None, lambda: a.transport.send(b.id, "found you"))
        await stop(a, moved)

    run(scenario())


def test_a_down_peer_costs_only_a_reconnect_timer(run: Run) -> None:
    async def scenario() -> None:
        with socket.socket() as placeholder:
            placeholder.bind(("127.0.0.1", 0))  # bound but not listening: connections are refused
            (a,) = await cluster(1)
            a.transport.add_peer(9, [f"http://127.0.0.1:{placeholder.getsockname()[1]}"])
            for _ in range(100):
                a.transport.send(9, "queued while dialing, dropped when the dial fails")
            await until(lambda: a.transport.stats(9).connect_failures >= 4)
            a.transport.send(9, "refused while waiting, or dropped when the next dial fails")
            await until(lambda: a.transport.stats(9).failed == 101)
            stats = a.transport.stats(9)
            assert (stats.sent, stats.dropped, stats.writes) == (0, 0, 0)
            await stop(a)

    run(scenario())


async def raw_connection_is_closed(address: tuple[str, int], data: bytes, hang_up: bool = False) -> bool:
    """Write ``data`` on a fresh connection; whether the transport then closed it (else we did)."""
    reader, writer = await asyncio.open_connection(*address)
    writer.write(data)
    if hang_up:
        writer.close()
        await writer.wait_closed()
        return False
    try:
        closed = await reader.read(100) == b""
    except ConnectionResetError:
        closed = True
    writer.close()
    return closed


def frame(cluster: int = CLUSTER, sender: int = 1, recipient: int = 2, message: object = "x") -> bytes:
    return FrameEncoder(cluster, sender).encode(KIND_MESSAGE, recipient, message)


BAD_FRAMES = {
    "garbage bytes": (bytes(random.Random(1).randrange(256) for _ in range(200)), "exceeds the limit"),
    "garbage after a plausible length": (struct.pack(">I", 120) + bytes(range(7, 127)), "protocol version 7"),
    "oversized length prefix": (struct.pack(">I", 1 << 30) + b"\0" * 60, "exceeds the limit"),
    "wrong cluster id": (frame(cluster=0xBAD), "frame for cluster bad"),
    "unknown sender": (frame(sender=0x77), "member 77, which is not a member"),
    "wrong recipient": (frame(recipient=3), "addressed to member 3"),
    "bad version": (frame()[:4] + bytes([PROTOCOL_VERSION + 1]) + frame()[5:], "protocol version"),
    "truncated msgpack": (frame(message=[1, 2, 3])[:-1], "not one msgpack object"),
}


@pytest.mark.parametrize("case", [*sorted(BAD_FRAMES), "truncated frame then close"])
def test_a_bad_frame_closes_only_its_own_connection(run: Run, case: str,
                                                    caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="fastkv.transport")

    async def scenario() -> None:
        a, b = await cluster(2)
        await connected(a, b)
        if case in BAD_FRAMES:
            data, reason = BAD_FRAMES[case]
            if case == "truncated msgpack":  # a frame whose length covers a cut payload
                data = struct.pack(">I", len(data) - 4) + data[4:]
            assert await raw_connection_is_closed(b.transport.listen_addresses[0], data)
        else:
            data = frame()[:-3]
            reason = f"closed inside a frame ({len(data)} bytes unread)"
            await raw_connection_is_closed(b.transport.listen_addresses[0], data, hang_up=True)
            await until(lambda: reason in caplog.text)
        assert reason in caplog.text
        a.transport.send(b.id, "still flowing")
        await until(lambda: b.received.get(a.id) == ["still flowing"])
        assert a.transport.stats(b.id).connects == 1  # the good connection was never touched
        c = Member(3)  # and the listener still accepts
        await c.transport.start()
        b.transport.add_peer(c.id, [c.url])
        c.transport.add_peer(b.id, [b.url])
        c.transport.send(b.id, "new")
        await until(lambda: b.received.get(c.id) == ["new"])
        await stop(a, b, c)

    run(scenario())


def test_a_peer_that_stops_reading_gets_bounded_queues_and_drops(run: Run) -> None:
    async def scenario() -> None:
        accepted: list[asyncio.StreamWriter] = []

        async def never_read(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            accepted.append(writer)

        server = await asyncio.start_server(never_read, "127.0.0.1", 0)
        (a,) = await cluster(1, queue_limit=8)
        a.transport.add_peer(2, [f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"])
        await until(lambda: bool(accepted))
        sends = 0
        while a.transport.stats(2).dropped < 100:
            a.transport.send(2, b"\0" * 65536)
            sends += 1
            if sends % 8 == 0:
                await asyncio.sleep(0)
        stats = a.transport.stats(2)
        assert stats.sent + stats.dropped + a.transport.queued(2) == sends
        assert a.transport.queued(2) <= 8
        await stop(a)
        for writer in accepted:
            writer.close()
        server.close()
        await server.wait_closed()

    run(scenario())


def test_call_returns_the_reply_of_the_peer_request_handler(run: Run) -> None:
    async def scenario() -> None:
        a, b = await cluster(2)

        async def slow_double(sender: int, request: object) -> object:
            await asyncio.sleep(0)
            return {"from": sender, "double": 2 * request}  # type: ignore[operator]

        b.transport.set_request_handler(slow_double)
        assert await a.transport.call(b.id, 21, timeout=5) == {"from": a.id, "double": 42}
        b.transport.set_request_handler(lambda sender, request: 1 // 0)
        with pytest.raises(RemoteError, match="modulo by zero"):
            await a.transport.call(b.id, 1, timeout=5)
        asked: list[object] = []
        never = asyncio.get_running_loop().create_future()

        def no_answer(sender: int, request: object) -> object:
            asked.append(request)
            return never

        b.transport.set_request_handler(no_answer)
        with pytest.raises(TimeoutError):
            await a.transport.call(b.id, "too slow", timeout=0.05)
        with pytest.raises(PeerUnavailable):
            await a.transport.call(99, "not a peer", timeout=5)
        pending = asyncio.ensure_future(a.transport.call(b.id, "lost with its connection", timeout=5))
        await until(lambda: len(asked) == 2)
        await b.transport.stop()
        with pytest.raises(PeerUnavailable):
            await pending
        never.cancel()
        await stop(a)

    run(scenario())


def test_frames_from_a_removed_member_are_refused(run: Run, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="fastkv.transport")

    async def scenario() -> None:
        a, b = await cluster(2)
        await connected(a, b)
        a.transport.remove_peer(b.id)
        with pytest.raises(KeyError):
            a.transport.stats(b.id)
        await until(lambda: f"member {b.id:x}, which is not a member" in caplog.text,
                    lambda: b.transport.send(a.id, "ignored"))
        assert a.id not in b.received and b.id not in a.received
        await stop(a, b)

    run(scenario())


def test_round_trips_are_reported_as_etcd_reports_follower_latency(run: Run) -> None:
    async def scenario() -> None:
        a, b = await cluster(2)
        await connected(a, b)
        report = a.transport.stats(b.id).to_etcd()
        assert set(report["latency"]) == {"current", "average", "standardDeviation", "minimum", "maximum"}
        assert 0 < report["latency"]["minimum"] <= report["latency"]["maximum"] < 5000
        assert report["counts"] == {"fail": 0, "success": 0}
        await stop(a, b)

    run(scenario())


def test_latency_aggregates_follow_the_samples() -> None:
    latency = LatencyStats()
    for seconds in (0.001, 0.003, 0.002):
        latency.observe(seconds)
    assert latency.to_etcd() == pytest.approx({"current": 2.0, "average": 2.0, "minimum": 1.0, "maximum": 3.0,
                                               "standardDeviation": (2 / 3) ** 0.5})
