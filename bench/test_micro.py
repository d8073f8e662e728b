"""Micro benchmarks of the compiled hot paths (``pytest bench --benchmark-only``).

Each benchmark checks its own result once, so a broken path cannot look fast; none asserts a time.
"""

from __future__ import annotations

import asyncio
import random
from pathlib import Path

import msgpack  # type: ignore[import-untyped]
import pytest

from bench.conftest import NOW_NS, NullTransport
from fastkv._native.logstore import LogStore
from fastkv._native.raft import Config, Entry, MemoryStorage, RawNode, StateLeader
from fastkv._native.store import OP_SET, Store, encode_request
from fastkv._native.watch import Watcher, WatchHub

VALUE = "v" * 32


# -- store ------------------------------------------------------------------------------------

def test_store_apply_set(benchmark, store: Store) -> None:  # type: ignore[no-untyped-def]
    request = encode_request(OP_SET, "/1/bench/k", VALUE)
    event = benchmark(store.apply, request, NOW_NS)
    assert event.action == "set"


def test_store_get(benchmark, store: Store) -> None:  # type: ignore[no-untyped-def]
    event = benchmark(store.get, "/1/bench/k", False, False, NOW_NS)
    assert event.action == "get"


# -- entries ----------------------------------------------------------------------------------

def _entry_bytes() -> bytes:
    return msgpack.packb(Entry(7, 12345, 0, encode_request(OP_SET, "/1/bench/k", VALUE)).to_wire())


def test_entry_encode(benchmark) -> None:  # type: ignore[no-untyped-def]
    """A store request made and wrapped as a log entry on the wire."""
    data = benchmark(_entry_bytes)
    assert Entry.from_wire(msgpack.unpackb(data)).index == 12345


def test_entry_decode(benchmark) -> None:  # type: ignore[no-untyped-def]
    data = _entry_bytes()
    entry = benchmark(lambda: Entry.from_wire(msgpack.unpackb(data)))
    assert entry.term == 7


# -- raft ---------------------------------------------------------------------------------------

class MemoryCluster:
    """Three in-memory Raft members that deliver every message at once (the Ready loop)."""

    def __init__(self, size: int = 3) -> None:
        ids = tuple(range(1, size + 1))
        self.nodes = {i: RawNode(Config(i, ids, rng=random.Random(i)), MemoryStorage()) for i in ids}
        self.leader = self.nodes[1]
        self.leader.campaign()
        self.stabilize()

    def stabilize(self) -> None:
        """Persist, send and advance until no member has anything ready."""
        moved = True
        while moved:
            moved = False
            for node in self.nodes.values():
                while node.has_ready():
                    moved = True
                    ready = node.ready()
                    node.storage.save(ready)
                    for message in ready.messages:
                        self.nodes[message.to].step(message)
                    node.advance(ready)

    def propose_batch(self, batch: list[bytes]) -> int:
        for data in batch:
            self.leader.propose(data)
        self.stabilize()
        return self.leader.committed


@pytest.mark.parametrize("batch_size", [1, 64])
def test_raft_propose_and_stabilize(benchmark, batch_size: int) -> None:  # type: ignore[no-untyped-def]
    cluster = MemoryCluster()
    assert cluster.leader.state == StateLeader
    batch = [encode_request(OP_SET, "/1/bench/k", VALUE)] * batch_size
    before = cluster.leader.committed
    committed = benchmark(cluster.propose_batch, batch)
    assert committed > before
    assert all(n.applied == committed for n in cluster.nodes.values())


# -- HTTP ---------------------------------------------------------------------------------------

@pytest.fixture
def http_client():  # type: ignore[no-untyped-def]
    from tests.http.test_protocol import Client

    client = Client()
    client.request("PUT", "/v2/keys/bench/k", b"value=" + VALUE.encode())
    yield client
    client.close()


GET_REQUEST = b"GET /v2/keys/bench/k HTTP/1.1\r\nHost: bench\r\n\r\n"
PUT_REQUEST = (b"PUT /v2/keys/bench/k HTTP/1.1\r\nHost: bench\r\n"
               b"Content-Type: application/x-www-form-urlencoded\r\nContent-Length: 38\r\n\r\nvalue=" +
               VALUE.encode())


def test_http_get(benchmark, http_client) -> None:  # type: ignore[no-untyped-def]
    """Parse, route, read the store and write the response; a local read answers synchronously."""
    def get() -> bytes:
        http_client.protocol.data_received(GET_REQUEST)
        return http_client.take()

    assert get().startswith(b"HTTP/1.1 200 OK\r\n")
    benchmark(get)


def test_http_put(benchmark, http_client) -> None:  # type: ignore[no-untyped-def]
    """The same for a write through an in-memory node that applies at once, plus the loop turns
    that run the proposal's callback."""
    def put() -> bytes:
        http_client.protocol.data_received(PUT_REQUEST)
        while not http_client.transport.buffer:
            http_client.loop.run_until_complete(asyncio.sleep(0))
        return http_client.take()

    assert put().startswith(b"HTTP/1.1 200 OK\r\n")
    benchmark(put)


# -- watch fan-out ------------------------------------------------------------------------------

@pytest.mark.parametrize("watchers", [1_000, 10_000])
def test_watch_fanout(benchmark, store: Store, watchers: int) -> None:  # type: ignore[no-untyped-def]
    """One event written to every stream watcher of its key (stream watchers stay registered)."""
    hub = WatchHub(store.history)
    transports = [NullTransport() for _ in range(watchers)]
    for transport in transports:
        assert hub.watch(Watcher("/1/bench/k", False, True, 0, transport, lambda: None), store.index) is None
    event = store.set("/1/bench/k", False, VALUE, 0, False, NOW_NS)
    benchmark(hub.notify, event)
    assert hub.count == watchers
    assert all(t.written == transports[0].written > 0 for t in transports)


# -- log ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("batch_size", [1, 100])
def test_log_append_sync(benchmark, tmp_path: Path, batch_size: int) -> None:  # type: ignore[no-untyped-def]
    """One append of a batch of 100-byte entries: one write-ahead record, one
    fdatasync (the entries move into LMDB in a synced transaction every 8,192 entries)."""
    log = LogStore(str(tmp_path / "log"))
    data = b"d" * 100

    def append() -> None:
        first = log.last_index + 1
        log.append([(i, 1, 0, data) for i in range(first, first + batch_size)], (1, 1, first - 1))

    benchmark(append)
    assert log.last_index >= batch_size
    log.close()
