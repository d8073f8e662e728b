"""A small asyncio client for what wrk cannot measure: PUT-to-watchers latency.

``watch_fanout(host, port, watchers, samples)`` opens ``watchers`` long-poll connections
(``GET /v2/keys/bench/watched?wait=true``), waits until every one has its response head (both
etcd and fastkv write it once the watcher is registered), then times one PUT from the moment
it is written until the last watcher has received the whole event. Each sample uses fresh
connections. The client runs on uvloop when it is installed.
"""

from __future__ import annotations

import asyncio
import time
from typing import cast

WATCH_KEY = "/v2/keys/bench/watched"
CONNECT_BATCH = 100  # connections opened at once, below any listen backlog


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
    """One long-poll watch request; reports its response head and its complete body."""

    def __init__(self, request: bytes, sample: _Sample) -> None:
        self.request = request
        self.sample = sample
        self.buffer = b""
        self.body_start = -1

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        cast(asyncio.WriteTransport, transport).write(self.request)

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        if self.body_start < 0:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            if not self.buffer.startswith(b"HTTP/1.1 200"):
                self.sample.fail(f"watch refused: {self.buffer[:200]!r}")
                return
            self.body_start = end + 4
            self.sample.head()
        if self.buffer.endswith(b"\r\n0\r\n\r\n") and len(self.buffer) > self.body_start + 5:
            self.sample.finished()


def _request(method: str, target: str, body: bytes = b"") -> bytes:
    head = f"{method} {target} HTTP/1.1\r\nHost: bench\r\n"
    if body:
        head += f"Content-Type: application/x-www-form-urlencoded\r\nContent-Length: {len(body)}\r\n"
    return head.encode() + b"\r\n" + body


async def _one_sample(host: str, port: int, watchers: int, timeout: float) -> float:
    loop = asyncio.get_running_loop()
    sample = _Sample(watchers, loop)
    request = _request("GET", WATCH_KEY + "?wait=true")
    transports: list[asyncio.BaseTransport] = []
    try:
        for first in range(0, watchers, CONNECT_BATCH):
            batch = [loop.create_connection(lambda: _Waiter(request, sample), host, port)
                     for _ in range(first, min(first + CONNECT_BATCH, watchers))]
            transports += [t for t, _ in await asyncio.gather(*batch)]
        await asyncio.wait_for(sample.all_heads, timeout)
        reader, writer = await asyncio.open_connection(host, port)
        put = _request("PUT", WATCH_KEY, b"value=" + b"w" * 32)
        started = time.perf_counter()
        writer.write(put)
        await asyncio.wait_for(sample.all_done, timeout)
        elapsed = sample.last_done - started
        await reader.readuntil(b"\r\n\r\n")
        writer.close()
        return elapsed
    finally:
        for transport in transports:
            transport.close()


async def _samples(host: str, port: int, watchers: int, samples: int, timeout: float) -> list[float]:
    return [await _one_sample(host, port, watchers, timeout) for _ in range(samples)]


def watch_fanout(host: str, port: int, watchers: int, samples: int, timeout: float = 30.0) -> list[float]:
    """Seconds from a PUT to the last of ``watchers`` long-poll watchers having it, per sample."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(_samples(host, port, watchers, samples, timeout))
    return uvloop.run(_samples(host, port, watchers, samples, timeout))
