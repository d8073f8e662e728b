"""fleet's API v1 over HTTP/1.1 on unix sockets and TCP (``config.api_listen``), on asyncio + httptools.

``start_api`` binds every listener, answers requests through ``fleetd.api.resources.FleetApi`` and
publishes the listeners' URLs in the registry (``machines/<id>/api``) so fleetctl can reach the API of
the machine that runs a unit (``status``, ``journal``). Each connection answers its requests in order
(keep-alive, pipelining); a body that is a stream (the journal) is sent chunked until it ends or the
client goes away. Every answer carries ``Content-Type`` and ``Server: fleetd/<version>``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import stat
import time
from collections import deque
from collections.abc import Awaitable, Callable
from email.utils import formatdate
from http import HTTPStatus
from typing import Any, Protocol
from urllib.parse import unquote

import httptools

from fleetd import FLEET_VERSION
from fleetd.api.resources import ApiRequest, ApiResponse, FleetApi, error_response
from fleetd.config import FleetConfig
from fleetd.registry.registry import Registry
from fleetd.runtime.base import UnitRuntime

log = logging.getLogger(__name__)

SERVER_HEADER = f"fleetd/{FLEET_VERSION}"
#: How long a registration check of the local machine is trusted when ``machine`` cannot say itself.
PRESENCE_CACHE_SECONDS = 1.0
MAX_BODY_BYTES = 4 << 20
_PUBLISH_RETRY_SECONDS = 1.0
_background: set[asyncio.Task[Any]] = set()


class LocalMachine(Protocol):
    """What the API needs of the local machine: its ID (a ``MachineState`` has it).

    Optionally ``available`` (a bool or a function returning one): whether the machine is registered
    and the server may answer; ``public_ip``; ``runtime``: the unit runtime for ``status``/``journal``.
    """

    id: str


# ---------------------------------------------------------------------------------------------------
# Requests off the wire


class _Collector:
    """httptools callbacks: collect complete requests (with their keep-alive flag) in order."""

    def __init__(self) -> None:
        self.parser = httptools.HttpRequestParser(self)
        self.done: deque[tuple[ApiRequest, bool]] = deque()
        self.too_large = False
        self._reset()

    def _reset(self) -> None:
        self.url = b""
        self.headers: list[tuple[str, str]] = []
        self.body: list[bytes] = []
        self.size = 0

    def on_message_begin(self) -> None:
        self._reset()

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name.decode("latin-1").lower(), value.decode("latin-1")))

    def on_body(self, body: bytes) -> None:
        self.size += len(body)
        if self.size > MAX_BODY_BYTES:
            self.too_large = True
            raise httptools.HttpParserError("body too large")
        self.body.append(body)

    def on_message_complete(self) -> None:
        url = httptools.parse_url(self.url)
        path = unquote((url.path or b"/").decode("latin-1"), errors="surrogateescape")
        request = ApiRequest(self.parser.get_method().decode("latin-1"), path,
                             (url.query or b"").decode("latin-1"), tuple(self.headers), b"".join(self.body))
        self.done.append((request, self.parser.should_keep_alive()))


def _head(status: int, content_type: str, length: int | None, keep_alive: bool) -> bytes:
    reason = HTTPStatus(status).phrase if status in HTTPStatus._value2member_map_ else ""
    lines = [f"HTTP/1.1 {status} {reason}", f"Content-Type: {content_type}", f"Server: {SERVER_HEADER}",
             f"Date: {formatdate(usegmt=True)}"]
    if length is None:
        lines.append("Transfer-Encoding: chunked")
    elif status != 204:
        lines.append(f"Content-Length: {length}")
    if not keep_alive:
        lines.append("Connection: close")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


class _Connection:
    """One client connection: read, answer in order, stream bodies."""

    def __init__(self, api: FleetApi, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.api = api
        self.reader = reader
        self.writer = writer
        self.collector = _Collector()

    async def serve(self) -> None:
        try:
            while True:
                if not self.collector.done and not await self._read_request():
                    return
                request, keep_alive = self.collector.done.popleft()
                response = await self.api.handle(request)
                if not await self._send(response, keep_alive):
                    return
        except (ConnectionError, asyncio.IncompleteReadError):
            return
        finally:
            self.writer.close()

    async def _read_request(self) -> bool:
        """Read until a request is complete; False when the client is gone or sent garbage (answered 400)."""
        while not self.collector.done:
            data = await self.reader.read(65536)
            if not data:
                return False
            try:
                self.collector.parser.feed_data(data)
            except httptools.HttpParserError:
                status = 413 if self.collector.too_large else 400
                await self._send(error_response(status, HTTPStatus(status).phrase.lower()), False)
                return False
        return True

    async def _send(self, response: ApiResponse, keep_alive: bool) -> bool:
        """Write the answer; True if the connection stays usable."""
        if response.stream is None:
            self.writer.write(_head(response.status, response.content_type, len(response.body), keep_alive)
                              + response.body)
            await self.writer.drain()
            return keep_alive
        self.writer.write(_head(response.status, response.content_type, None, keep_alive))
        ended = await self._stream(response)
        if ended:
            self.writer.write(b"0\r\n\r\n")
            await self.writer.drain()
        return ended and keep_alive

    async def _stream(self, response: ApiResponse) -> bool:
        """Send the stream's chunks until it ends (True) or the client hangs up (False)."""
        assert response.stream is not None
        chunks = aiter(response.stream)
        gone = asyncio.ensure_future(self.reader.read(65536))
        try:
            while True:
                following = asyncio.ensure_future(anext(chunks))
                await asyncio.wait({following, gone}, return_when=asyncio.FIRST_COMPLETED)
                if not following.done():
                    following.cancel()
                    return False
                try:
                    chunk = following.result()
                except StopAsyncIteration:
                    return True
                if chunk:
                    self.writer.write(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
                    await self.writer.drain()
        finally:
            gone.cancel()
            with contextlib.suppress(Exception):
                await chunks.aclose()  # type: ignore[attr-defined]


# ---------------------------------------------------------------------------------------------------
# Availability and publication


def _availability(registry: Registry, machine: Any,
                  available: Callable[[], bool] | None) -> Callable[[], Awaitable[bool]]:
    """The check gating every request: ``available`` if given, else ``machine.available``, else whether
    the machine's presence key is in the registry (once seen, trusted for ``PRESENCE_CACHE_SECONDS``)."""
    flag = available if available is not None else getattr(machine, "available", None)
    if flag is not None:
        async def given() -> bool:
            return bool(flag() if callable(flag) else getattr(machine, "available", False))
        return given
    seen_at = [float("-inf")]

    async def registered() -> bool:
        if time.monotonic() - seen_at[0] <= PRESENCE_CACHE_SECONDS:
            return True
        if any(m.id == machine.id for m in await registry.machines()):
            seen_at[0] = time.monotonic()
            return True
        return False
    return registered


def listener_urls(servers: list[asyncio.AbstractServer], public_ip: str) -> list[str]:
    """The URLs the servers answer on: ``http://ip:port`` (the public IP, else loopback, for a wildcard
    bind) and ``unix:///path``."""
    urls = []
    for server in servers:
        for sock in getattr(server, "sockets", ()):
            if sock.family == socket.AF_UNIX:
                urls.append("unix://" + str(sock.getsockname()))
                continue
            host, port = sock.getsockname()[:2]
            if host in ("0.0.0.0", "::", ""):
                host = public_ip or "127.0.0.1"
            urls.append(f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}")
    return list(dict.fromkeys(urls))


async def _publish(registry: Registry, machine_id: str, urls: list[str]) -> None:
    """Write the API URLs into the registry, retrying until etcd takes them."""
    while True:
        try:
            await registry.publish_api_address(machine_id, ",".join(urls))
            return
        except Exception as err:  # any failure: try again later
            log.debug("cannot publish API address yet: %s", err)
            await asyncio.sleep(_PUBLISH_RETRY_SECONDS)


async def _bind_unix(handler: Callable[..., Awaitable[None]], path: str) -> asyncio.AbstractServer:
    """Listen on a unix socket, replacing a stale socket file (not any other file)."""
    with contextlib.suppress(FileNotFoundError):
        if stat.S_ISSOCK(os.stat(path).st_mode):
            os.unlink(path)
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    return await asyncio.start_unix_server(handler, path)


async def start_api(registry: Registry, config: FleetConfig, machine: LocalMachine, *,
                    runtime: UnitRuntime | None = None,
                    available: Callable[[], bool] | None = None) -> list[asyncio.AbstractServer]:
    """Serve fleet's API v1 on every ``config.api_listen`` address; return the listening servers.

    Requests get 503 until ``available()`` (or ``machine.available``) is true; without either, until the
    machine's presence key is in the registry. ``runtime`` (or ``machine.runtime``) answers the unit
    ``status``/``journal`` additions. Closing the returned servers stops serving. The listeners' URLs
    are published in the registry in the background.
    """
    api = FleetApi(registry, machine.id, _availability(registry, machine, available), config.token_limit,
                   runtime if runtime is not None else getattr(machine, "runtime", None))

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _Connection(api, reader, writer).serve()

    servers: list[asyncio.AbstractServer] = []
    try:
        for listen in config.api_listen:
            if listen.is_unix:
                servers.append(await _bind_unix(handler, listen.path))
            else:
                servers.append(await asyncio.start_server(handler, listen.host or None, listen.port))
    except BaseException:
        for server in servers:
            server.close()
        raise
    public_ip = getattr(machine, "public_ip", "") or config.public_ip
    task = asyncio.ensure_future(_publish(registry, machine.id, listener_urls(servers, public_ip)))
    _background.add(task)
    task.add_done_callback(_background.discard)
    return servers
