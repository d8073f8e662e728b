"""The node with a real LMDB log and the real store: group commit, apply order, bootstrap indices,
restart by replay, snapshots with compaction, TTL expiry through the log, membership changes."""

from __future__ import annotations

import asyncio
import dataclasses
import os
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from fastkv._native.logstore import ENTRY_CONF, ENTRY_EMPTY, ENTRY_NORMAL, ENTRY_SYNC, LogStore
from fastkv._native.store import OP_CREATE, OP_SET, V2Error, encode_request
from fastkv.server.membership import MembershipError
from fastkv.server.node import Node, NodeConfig, ProposalTimeout
from fastkv.storage.snapshot import Snapshotter

SELF_ID = 0x9E737FEBB6B99EEE
PEER = ("http://127.0.0.1:2380",)
T0 = 1_800_000_000 * 10**9


class Clock:
    """A clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> int:
        return self.now


def config(**changes: Any) -> NodeConfig:
    base = NodeConfig(name="a", member_id=SELF_ID, cluster_id=0xC8730D66636FF140, peer_urls=PEER,
                      client_urls=("http://127.0.0.1:2379",), initial_members=((SELF_ID, PEER),))
    return dataclasses.replace(base, **changes)


def open_node(tmp: Path, clock: Clock, map_size: int = 1 << 26, **changes: Any) -> Node:
    return Node(LogStore(str(tmp / "log"), map_size), Snapshotter(tmp / "snap"), config(**changes), clock)


def run(tmp: Path, body: Callable[[Node], Awaitable[Any]], clock: Clock | None = None, **changes: Any) -> Any:
    """Start a node on ``tmp``, run ``body`` with it, stop it; returns what ``body`` returned."""
    async def main() -> Any:
        node = open_node(tmp, clock or Clock(), **changes)
        await node.start()
        try:
            return await body(node)
        finally:
            await node.stop()
    return asyncio.run(main())


def put(key: str, value: str, expire_ns: int = 0) -> bytes:
    return encode_request(OP_SET, "/1/" + key, value, False, expire_ns)


def history(node: Node) -> list[tuple[int, bytes]]:
    return [(e.index, e.body) for e in node.store.history.events()]


def test_a_fresh_member_bootstraps_like_etcd(tmp_path: Path) -> None:
    async def body(node: Node) -> None:
        assert (node.store.index, node.raft_index, node.raft_term) == (3, 4, 2)
        [member] = node.members()
        assert (member.id, member.name, member.peer_urls) == (SELF_ID, "a", PEER)
        assert member.client_urls == ("http://127.0.0.1:2379",)
        assert node.store.node("/0/version").value == "3.4.0"
        event = await node.propose(put("foo", "bar"))
        assert event.body == (b'{"action":"set","node":{"key":"/foo","value":"bar",'
                              b'"modifiedIndex":4,"createdIndex":4}}\n')
        assert (event.etcd_index, node.raft_index) == (4, 5)
        types = [e[2] for e in node.log.entries(1, 6)]
        assert types == [ENTRY_CONF, ENTRY_EMPTY, ENTRY_NORMAL, ENTRY_NORMAL, ENTRY_NORMAL]
        assert node.log.term(1) == 1 and node.log.term(5) == 2
    run(tmp_path, body)


def test_concurrent_proposals_share_syncs(tmp_path: Path) -> None:
    async def body(node: Node) -> None:
        before = node.sync_count
        events = await asyncio.gather(*(node.propose(put(f"k{i}", str(i))) for i in range(200)))
        syncs = node.sync_count - before
        assert 1 <= syncs < 200
        assert [e.index for e in events] == list(range(4, 204))
        assert node.store.index == 203
    run(tmp_path, body)


def test_a_lone_proposal_is_written_at_once(tmp_path: Path) -> None:
    async def body(node: Node) -> None:
        before = node.sync_count
        await node.propose(put("solo", "1"))
        assert node.sync_count == before + 1
    run(tmp_path, body)


def test_apply_order_is_log_order(tmp_path: Path) -> None:
    async def body(node: Node) -> list[int]:
        results = await asyncio.gather(
            *(node.propose(encode_request(OP_CREATE, "/1/once", str(i))) for i in range(20)),
            return_exceptions=True)
        winners = [r for r in results if not isinstance(r, BaseException)]
        assert len(winners) == 1 and winners[0].body.count(b'"value":"0"') == 1
        assert all(isinstance(r, V2Error) and r.code == 105 for r in results[1:])
        return [e[0] for e in node.log.entries(5, node.log.last_index + 1) if e[2] == ENTRY_NORMAL]
    indices = run(tmp_path, body)
    assert indices == list(range(5, 25))


def test_restart_replays_to_the_same_store(tmp_path: Path) -> None:
    clock = Clock()

    async def write(node: Node) -> tuple[int, int, int, list[tuple[int, bytes]]]:
        await node.propose(put("a", "1"))
        await node.propose(put("t", "x", T0 + 60 * 10**9))
        with pytest.raises(V2Error):
            await node.propose(encode_request(OP_CREATE, "/1/a", "again"))
        await node.propose(put("a", "2"))
        return node.store.index, node.raft_index, node.raft_term, history(node)

    index, raft_index, term, events = run(tmp_path, write, clock)

    async def reopen(node: Node) -> None:
        assert (node.store.index, node.raft_index, node.raft_term) == (index + 1, raft_index + 2, term + 1)
        assert history(node)[: len(events)] == events
        assert node.store.node("/1/t").expire_ns == T0 + 60 * 10**9
        assert node.store.get("/1/a", False, False, clock()).body.count(b'"value":"2"') == 1
        assert len(node.members()) == 1
    run(tmp_path, reopen, clock)


def test_ttl_expiry_goes_through_the_log_and_replays_the_same(tmp_path: Path) -> None:
    clock = Clock()

    async def expire(node: Node) -> list[tuple[int, bytes]]:
        await node.propose(put("ttl", "v", T0 + 10**9))
        node.tick()
        assert node.store.node("/1/ttl") is not None  # not due yet: nothing proposed
        clock.now = T0 + 2 * 10**9
        node.tick()
        await node.propose(put("after", "1"))
        assert node.store.node("/1/ttl") is None
        syncs = [e for e in node.log.entries(1, node.log.last_index + 1) if e[2] == ENTRY_SYNC]
        assert len(syncs) == 1
        expired = [h for h in history(node) if b'"action":"expire"' in h[1]]
        assert len(expired) == 1
        return history(node)

    events = run(tmp_path, expire, clock)
    clock.now = T0  # a replay must not depend on the clock at restart

    async def reopen(node: Node) -> None:
        assert history(node)[: len(events)] == events
        assert node.store.node("/1/ttl") is None
    run(tmp_path, reopen, clock)


def test_snapshot_compaction_and_restart(tmp_path: Path) -> None:
    async def write(node: Node) -> list[tuple[int, bytes]]:
        for i in range(40):
            await node.propose(put(f"s{i % 7}", str(i)))
        while node._snapshot_task is not None:
            await asyncio.sleep(0.01)
        assert node.snapshot_index >= 40
        return history(node)

    events = run(tmp_path, write, snapshot_count=10)
    snaps = Snapshotter(tmp_path / "snap")
    assert len(snaps.names()) == 2
    log = LogStore(str(tmp_path / "log"))
    assert log.first_index > 1
    log.close()

    async def reopen(node: Node) -> None:
        assert history(node)[: len(events)] == events
        assert node.store.get("/1/s4", False, False, T0).body.count(b'"value":"39"') == 1
    run(tmp_path, reopen, snapshot_count=1000)

    newest = tmp_path / "snap" / snaps.names()[-1]
    newest.write_bytes(newest.read_bytes()[:-1] + b"?")
    run(tmp_path, reopen, snapshot_count=1000)  # the older snapshot and a longer replay
    assert snaps.load_latest() is not None and snaps.skipped


def test_a_full_log_fails_the_batch_and_the_member_goes_on(tmp_path: Path) -> None:
    async def body(node: Node) -> None:
        with pytest.raises(V2Error) as info:
            await node.propose(put("big", "x" * 4_000_000))
        assert info.value.code == 300 and info.value.status == 500
        event = await node.propose(put("small", "1"))
        assert event.index == 4
    run(tmp_path, body, map_size=1 << 20)


def test_a_full_disk_under_the_write_ahead_file_fails_the_writes_then_the_member_goes_on(
        tmp_path: Path) -> None:
    async def body(node: Node) -> None:
        await node.propose(put("before", "1"))
        wal = node.log.wal_fd
        kept = os.dup(wal)
        full = os.open("/dev/full", os.O_WRONLY)  # every write there fails with ENOSPC
        os.dup2(full, wal)
        os.close(full)
        try:
            results = await asyncio.gather(*(node.propose(put(f"lost{i}", "x")) for i in range(20)),
                                           return_exceptions=True)
        finally:
            os.dup2(kept, wal)
            os.close(kept)
        assert all(isinstance(r, V2Error) and r.code == 300 for r in results), results
        for _ in range(50):  # as a client would: error 300 says try again
            try:
                await node.propose(put("after", "2"))
                break
            except V2Error:
                await asyncio.sleep(0.1)
        assert node.store.node("/1/after").value == "2"

    run(tmp_path, body)

    async def reopened(node: Node) -> None:
        assert node.store.node("/1/before").value == "1"
        assert node.store.node("/1/after").value == "2"
        assert all(node.store.node(f"/1/lost{i}") is None for i in range(20))  # never acknowledged

    run(tmp_path, reopened)


def test_membership_changes_go_through_the_log(tmp_path: Path) -> None:
    other = 0x1234

    async def body(node: Node) -> None:
        with pytest.raises(MembershipError) as info:
            await node.remove_member(other)
        assert (info.value.status, info.value.message) == (404, "No such member: 1234")
        with pytest.raises(MembershipError) as info:
            await node.remove_member(SELF_ID)
        assert info.value.status == 500
        await node.update_member(SELF_ID, ["http://127.0.0.1:2390"])
        assert node.members()[0].peer_urls == ("http://127.0.0.1:2390",)
        with pytest.raises(MembershipError) as info:
            await node.update_member(SELF_ID + 1, ["http://127.0.0.1:2391"])
        assert info.value.status == 404
    run(tmp_path, body)


def test_adding_a_second_member_loses_quorum(tmp_path: Path) -> None:
    async def body(node: Node) -> None:
        with pytest.raises(MembershipError) as info:
            await node.add_member(["http://127.0.0.1:2380"])
        assert (info.value.status, info.value.message) == (409, "membership: peerURL exists")
        added = await node.add_member(["http://127.0.0.1:9999"])
        assert (added.name, added.peer_urls, added.client_urls) == ("", ("http://127.0.0.1:9999",), ())
        assert [m.id for m in node.members()] == sorted([SELF_ID, added.id])
        assert not node.is_healthy()
        with pytest.raises(MembershipError) as info:
            await node.add_member(["http://127.0.0.1:9998"])
        assert info.value.status == 500
        node.config = dataclasses.replace(node.config, proposal_timeout_s=0.0)
        waiting = asyncio.ensure_future(node.propose(put("k", "v")))
        await asyncio.sleep(0.05)  # let the entry reach the disk; it cannot commit alone
        node.tick()
        with pytest.raises(ProposalTimeout):
            await waiting
    run(tmp_path, body)

    async def reopen(node: Node) -> None:
        assert len(node.members()) == 2 and node.leader_id == 0
        assert node.store.node("/1/k") is None  # durable but never committed: not applied
    run(tmp_path, reopen)
