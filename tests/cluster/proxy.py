"""A TCP proxy in front of each member's peer port that can cut links between members.

Every member advertises its proxy's address, so every peer connection passes through the proxy of
the member it goes to. A peer connection opens with a frame whose fixed header names its sender
and recipient (``fastkv.transport.framing``); the proxy reads them and refuses (or later cuts) a
connection between two members that are partitioned from each other.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Iterable

_SENDER = slice(14, 22)
_RECIPIENT = slice(22, 30)
_HEADER_NEEDED = 30


class PeerProxies:
    """One forwarding listener per member: ``listen_ports[i]`` -> ``127.0.0.1:target_ports[i]``.

    Runs its own event loop in a daemon thread; ``partition`` and ``heal`` are thread-safe.
    """

    def __init__(self, listen_ports: list[int], target_ports: list[int]) -> None:
        self.routes = list(zip(listen_ports, target_ports, strict=True))
        self._blocked: set[frozenset[int]] = set()
        self._links: set[tuple[int, int, asyncio.StreamWriter, asyncio.StreamWriter]] = set()
        self._loop = asyncio.new_event_loop()
        self._servers: list[asyncio.base_events.Server] = []
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)

    def start(self) -> PeerProxies:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._listen(), self._loop).result(10)
        return self

    def stop(self) -> None:
        async def close() -> None:
            for server in self._servers:
                server.close()
            for *_, a, b in list(self._links):
                a.close()
                b.close()
        asyncio.run_coroutine_threadsafe(close(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    def partition(self, group: Iterable[int], others: Iterable[int]) -> None:
        """Cut every link between a member of ``group`` and a member of ``others`` (by member id)."""
        pairs = {frozenset((a, b)) for a in group for b in others}

        def apply() -> None:
            self._blocked |= pairs
            for link in list(self._links):
                if frozenset(link[:2]) in self._blocked:
                    link[2].close()
                    link[3].close()
        self._loop.call_soon_threadsafe(apply)

    def heal(self) -> None:
        self._loop.call_soon_threadsafe(self._blocked.clear)

    async def _listen(self) -> None:
        for listen, target in self.routes:
            server = await asyncio.start_server(
                lambda r, w, t=target: self._forward(r, w, t), "127.0.0.1", listen)
            self._servers.append(server)

    async def _forward(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, target: int) -> None:
        try:
            head = await reader.readexactly(_HEADER_NEEDED)
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()
            return
        sender = int.from_bytes(head[_SENDER], "big")
        recipient = int.from_bytes(head[_RECIPIENT], "big")
        if frozenset((sender, recipient)) in self._blocked:
            writer.close()
            return
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", target)
        except OSError:
            writer.close()
            return
        link = (sender, recipient, writer, up_writer)
        self._links.add(link)
        up_writer.write(head)
        try:
            await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))
        finally:
            self._links.discard(link)
            writer.close()
            up_writer.close()


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(ConnectionError, OSError):
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    writer.close()
