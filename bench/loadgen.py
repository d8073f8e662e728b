"""A small asyncio client for what wrk cannot measure: PUT-to-watchers latency.

``watch_fanout(host, port, watchers, samples)`` opens ``watchers`` connections once (raw sockets,
one process, on uvloop when it is installed), then for every sample sends a long-poll watch
(``GET /v2/keys/bench/watched?wait=true``) on each, waits until every one has its response head
(both etcd and fastkv write it once the watcher is registered), and times one PUT from the moment
it is written until the last watcher has received the whole event. A sample re-arms the watches
on the same keep-alive connections, as a client that keeps watching does, so 10,000 watchers need
10,000 connections (and open files) on each side, not 10,000 per sample.
"""

from __future__ import annotations

import asyncio
import time
from typing import cast

WATCH_KEY = "/v2/keys/bench/watched"
CONNECT_BATCH = 100  # connections opened at once, below any listen backlog
CHUNKED_END = b"\r\n0\r\n\r\n"


class _Sample:
    """Counts heads and completed bodies of one sample's watchers."""

    def __init__(self, watchers: int, loop: asyncio.AbstractEventLoop) -> None:
        self.watchers = watchers
        self.heads = 0
        self.done = 0
        self.all_heads = loop.create_future()
        self.all_done = loop.create_future()
        self.last_done = 0.0

    def head(self) -> None:
        self.heads += 1
        if self.heads == self.watchers:
            self.all_heads.set_result(None)

    def fail(self, reason: str) -> None:
        for future in (self.all_heads, self.all_done):
            if not future.done():
                future.set_exception(RuntimeError(reason))

    def finished(self) -> None:
        self.done += 1
        if self.done == self.watchers:
            self.last_done = time.perf_counter()
            self.all_done.set_result(None)


class _Waiter(asyncio.Protocol):
    """One watcher's connection; ``arm`` sends a long-poll watch and reports its response head and
    its complete (chunked) body to the sample."""

    def __init__(self) -> None:
        self.transport: asyncio.WriteTransport | None = None
        self.sample: _Sample | None = None
        self.buffer = b""
        self.body_start = -1

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.WriteTransport, transport)

    def arm(self, request: bytes, sample: _Sample) -> None:
        self.sample, self.buffer, self.body_start = sample, b"", -1
        assert self.transport is not None
        self.transport.write(request)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.sample is not None and self.sample.done < self.sample.watchers:
            self.sample.fail(f"a watch connection closed: {exc}")

    def data_received(self, data: bytes) -> None:
        sample = self.sample
        if sample is None:
            return
        self.buffer += data
        if self.body_start < 0:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            if not self.buffer.startswith(b"HTTP/1.1 200"):
                sample.fail(f"watch refused: {self.buffer[:200]!r}")
                return
            self.body_start = end + 4
            sample.head()
        if self.buffer.endswith(CHUNKED_END) and len(self.buffer) > self.body_start + len(CHUNKED_END):
            self.sample = None
            sample.finished()


def _request(method: str, target: str, body: bytes = b"") -> bytes:
    head = f"{method} {target} HTTP/1.1\r\nHost: bench\r\n"
    if body:
        head += f"Content-Type: application/x-www-form-urlencoded\r\nContent-Length: {len(body)}\r\n"
    return head.encode() + b"\r\n" + body


async def _connect(host: str, port: int, watchers: int) -> list[_Waiter]:
    loop = asyncio.get_running_loop()
    waiters: list[_Waiter] = []
    for first in range(0, watchers, CONNECT_BATCH):
        batch = [loop.create_connection(_Waiter, host, port)
                 for _ in range(first, min(first + CONNECT_BATCH, watchers))]
        waiters += [w for _, w in await asyncio.gather(*batch)]
    return waiters


async def _one_sample(host: str, port: int, waiters: list[_Waiter], timeout: float) -> float:
    sample = _Sample(len(waiters), asyncio.get_running_loop())
    request = _request("GET", WATCH_KEY + "?wait=true")
    for waiter in waiters:
        waiter.arm(request, sample)
    await asyncio.wait_for(sample.all_heads, timeout)
    reader, writer = await asyncio.open_connection(host, port)
    try:
        put = _request("PUT", WATCH_KEY, b"value=" + b"w" * 32)
        started = time.perf_counter()
        writer.write(put)
        await asyncio.wait_for(sample.all_done, timeout)
        await reader.readuntil(b"\r\n\r\n")
    finally:
        writer.close()
    return sample.last_done - started


async def _samples(host: str, port: int, watchers: int, samples: int, timeout: float) -> list[float]:
    waiters = await _connect(host, port, watchers)
    try:
        return [await _one_sample(host, port, waiters, timeout) for _ in range(samples)]
    finally:
        for waiter in waiters:
            if waiter.transport is not None:
                waiter.transport.close()


def watch_fanout(host: str, port: int, watchers: int, samples: int, timeout: float = 60.0) -> list[float]:
    """Seconds from a PUT to the last of ``watchers`` long-poll watchers having it, per sample.

    Needs ``watchers`` + a few open files in this process (and in the server)."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(_samples(host, port, watchers, samples, timeout))
    return uvloop.run(_samples(host, port, watchers, samples, timeout))
