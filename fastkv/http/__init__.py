"""The client-port HTTP front end: etcd's v2 API over uvloop and httptools.

``start_client_listeners(node, settings)`` opens one listener per
``settings.listen_client_urls`` entry (``http://host:port`` or ``unix://path``).
"""

from __future__ import annotations

import asyncio
import contextlib
import resource
from typing import Any
from urllib.parse import urlsplit

from fastkv.http.endpoints import machines_body
from fastkv.http.protocol import ConnectionSet, HttpProtocol
from fastkv.http.responses import App
from fastkv.settings import Settings

__all__ = ["machines_body", "parse_listen_url", "start_client_listeners"]


def parse_listen_url(url: str) -> tuple[str, str, int]:
    """``("tcp", host, port)`` or ``("unix", path, 0)`` for one listen URL; ``localhost`` is 127.0.0.1."""
    parts = urlsplit(url)
    if parts.scheme in ("unix", "unixs"):
        return "unix", parts.netloc + parts.path, 0
    if parts.scheme not in ("http", "https"):
        raise ValueError(f"unsupported listen URL {url!r}: use http://host:port or unix://path")
    if parts.port is None:
        raise ValueError(f"listen URL {url!r} has no port")
    host = parts.hostname or "0.0.0.0"
    if host == "localhost":
        host = "127.0.0.1"
    return "tcp", host, parts.port


def raise_open_file_limit() -> None:
    """Lift the soft open-file limit to the hard one, as Go programs do, so that thousands of
    clients can connect."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY:
        hard = max(soft, 1 << 20)
    if soft < hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


async def start_client_listeners(node: Any, settings: Settings,
                                 start_serving: bool = True) -> list[asyncio.AbstractServer]:
    """Listen on every client URL; each connection gets its own ``HttpProtocol``.

    With ``start_serving`` false the sockets listen (clients may connect and wait) but nothing is
    accepted until the caller calls ``start_serving()`` on each server. The caller closes the
    returned servers on shutdown.
    """
    raise_open_file_limit()
    loop = asyncio.get_running_loop()
    app = App(node, settings)
    connections = ConnectionSet(loop)
    if hasattr(node, "quiet_hint"):
        node.quiet_hint = connections.quiet
    if hasattr(node, "hub"):
        node.hub.deliver = connections.writer.write_all  # the answers of a fan-out leave together

    def factory() -> HttpProtocol:
        return HttpProtocol(app, connections)

    servers: list[asyncio.AbstractServer] = []
    try:
        for url in settings.listen_client_urls:
            kind, host, port = parse_listen_url(url)
            if kind == "unix":
                servers.append(await loop.create_unix_server(factory, host, backlog=1024,
                                                             start_serving=start_serving))
            else:
                servers.append(await loop.create_server(factory, host, port, backlog=1024,
                                                        reuse_address=True, start_serving=start_serving))
    except BaseException:
        for server in servers:
            server.close()
        raise
    return servers
