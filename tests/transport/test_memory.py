"""The in-memory transport: faults drawn from a seed, time passed in, the same contract as TCP."""

from __future__ import annotations

import asyncio
import functools
import random
from typing import Any

import pytest

from fastkv.transport import PeerUnavailable
from fastkv.transport.memory import MemoryNetwork, MemoryTransport

MEMBERS = (1, 2, 3)


Delivery = tuple[float, int, int, Any]


def network(seed: int = 1, **faults: Any) -> tuple[MemoryNetwork, dict[int, MemoryTransport], list[Delivery]]:
    """Three members that know each other; every delivery is logged as (time, from, to, message)."""
    net = MemoryNetwork(random.Random(seed), **faults)
    log: list[Delivery] = []
    transports = {}
    for member in MEMBERS:
        transport = transports[member] = net.transport(member, [m for m in MEMBERS if m != member])
        transport.set_handler(functools.partial(record, log, net, member))
    return net, transports, log


def record(log: list[Delivery], net: MemoryNetwork, to: int, sender: int, message: Any) -> None:
    log.append((net.now, sender, to, message))


def chatter(net: MemoryNetwork, transports: dict[int, MemoryTransport], rounds: int = 50) -> None:
    """Every member sends one numbered message to every other each millisecond."""
    for seq in range(rounds):
        for sender, transport in transports.items():
            for to in MEMBERS:
                if to != sender:
                    transport.send(to, seq)
        net.advance(0.001)
    net.deliver_all()


FAULTS = {"loss": 0.2, "duplication": 0.2, "min_delay": 0.001, "max_delay": 0.02, "reorder": 0.1}


def test_one_seed_gives_one_schedule() -> None:
    schedules = []
    for seed in (7, 7, 8):
        net, transports, log = network(seed, **FAULTS)
        chatter(net, transports)
        schedules.append(log)
    assert schedules[0] == schedules[1]
    assert schedules[0] != schedules[2]


def test_without_faults_every_message_arrives_once_in_order_at_once() -> None:
    net, transports, log = network()
    chatter(net, transports)
    for sender in MEMBERS:
        for to in MEMBERS:
            if to != sender:
                assert [m for _, s, t, m in log if (s, t) == (sender, to)] == list(range(50))
                assert transports[sender].stats(to).sent == 50
    assert all(abs(time - (seq + 1) * 0.001) < 1e-9 for time, _, _, seq in log)  # at the next step


def test_delays_keep_the_order_of_a_link_unless_messages_are_reordered() -> None:
    for reorder, in_order in ((0.0, True), (0.3, False)):
        net, transports, log = network(3, min_delay=0.001, max_delay=0.05, reorder=reorder)
        chatter(net, transports)
        received = [m for _, s, t, m in log if (s, t) == (1, 2)]
        assert sorted(received) == list(range(50))
        assert (received == list(range(50))) is in_order


def test_loss_and_duplication_are_counted_and_visible() -> None:
    net, transports, log = network(loss=1.0)
    chatter(net, transports)
    assert log == []
    assert transports[1].stats(2).failed == 50
    net, transports, log = network(duplication=1.0)
    chatter(net, transports)
    assert [m for _, s, t, m in log if (s, t) == (1, 2)] == [n for n in range(50) for _ in (0, 1)]


def test_partitions_cut_links_until_healed_including_messages_in_flight() -> None:
    net, transports, log = network(min_delay=0.01, max_delay=0.01)
    transports[1].send(2, "in flight when cut")
    net.partition([1], [2, 3])
    transports[1].send(3, "across")
    transports[2].send(3, "inside")
    net.deliver_all()
    assert [(s, t, m) for _, s, t, m in log] == [(2, 3, "inside")]
    assert transports[1].stats(2).failed == 1 and not net.connected(1, 3)
    net.heal()
    transports[1].send(3, "healed")
    net.deliver_all()
    assert log[-1][1:] == (1, 3, "healed")


def test_stopped_and_unknown_members_receive_nothing() -> None:
    net, transports, log = network()
    asyncio.run(transports[2].stop())
    transports[1].send(2, "to a stopped member")
    transports[1].remove_peer(3)
    transports[1].send(3, "to a member no longer known")
    transports[3].send(1, "from a member no longer known")
    net.deliver_all()
    assert log == []
    with pytest.raises(TypeError):
        transports[1].send(2, object())  # as on TCP, a message must be msgpack-serialisable


def test_messages_are_copies_made_through_msgpack() -> None:
    net, transports, log = network()
    message: dict[str, Any] = {"entries": [1, 2], "data": b"\x00"}
    transports[1].send(2, message)
    message["entries"].append(3)
    net.deliver_all()
    assert log[0][3] == {"entries": [1, 2], "data": b"\x00"}


def test_in_flight_messages_per_recipient_are_bounded() -> None:
    net, transports, log = network(queue_limit=10)
    for i in range(25):
        transports[1].send(2, i)
    assert net.in_flight == 10 and transports[1].stats(2).failed == 15
    net.deliver_all()
    assert [m for *_, m in log] == list(range(10))


def test_on_an_event_loop_the_network_delivers_by_itself_and_calls_are_answered() -> None:
    async def scenario() -> None:
        net, transports, log = network(min_delay=0.001, max_delay=0.003)
        for transport in transports.values():
            await transport.start()
        transports[2].set_request_handler(lambda sender, request: {"echo": request, "by": 2})
        assert await transports[1].call(2, "hi", timeout=5) == {"echo": "hi", "by": 2}
        transports[1].send(3, "by the loop's timers")
        while not log:
            await asyncio.sleep(0.001)
        assert log[0][1:] == (1, 3, "by the loop's timers")
        net.partition([1], [2, 3])
        with pytest.raises(TimeoutError):
            await transports[1].call(2, "unheard", timeout=0.02)
        with pytest.raises(PeerUnavailable):
            await transports[1].call(9, "not a peer", timeout=5)

    asyncio.run(scenario())
