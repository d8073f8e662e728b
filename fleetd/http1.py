"""What fleetd's HTTP clients (the etcd client and fleetctl's API client) share: the TLS settings
(``client_ssl_context``) and reading HTTP/1.x responses from asyncio streams.

``read_head`` returns the status, the headers (names lower-cased) and whether the server keeps the
connection open; ``body_chunks`` yields the body as it arrives (de-chunked, by ``Content-Length``, or
until the connection closes); ``read_body`` collects it. A connection closed early raises ``EOFError``
(or ``asyncio.IncompleteReadError``, a subclass); a response that is not HTTP raises ``ResponseError``.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator, Mapping


def client_ssl_context(ca_file: str, cert_file: str, key_file: str) -> ssl.SSLContext | None:
    """A TLS client context trusting ``ca_file`` (else the system's CAs) and presenting ``cert_file``
    with ``key_file`` (when given); None when neither a CA nor a certificate is given."""
    if not (ca_file or cert_file):
        return None
    context = ssl.create_default_context(cafile=ca_file or None)
    if cert_file:
        context.load_cert_chain(cert_file, key_file or None)
    return context


class ResponseError(ValueError):
    """The server's answer is not an HTTP/1.x response."""


async def read_head(reader: asyncio.StreamReader) -> tuple[int, dict[str, str], bool]:
    """Status, lower-cased headers and keep-alive of a response; ``EOFError`` at once on EOF."""
    status_line = await reader.readline()
    if not status_line:
        raise EOFError("connection closed before the response")
    version, _, rest = status_line.decode("latin-1").partition(" ")
    try:
        status = int(rest.split(" ", 1)[0])
    except ValueError:
        raise ResponseError(f"malformed HTTP response {status_line.strip()!r}") from None
    headers: dict[str, str] = {}
    while True:
        line = await reader.readline()
        if not line.endswith(b"\n"):
            raise EOFError("connection closed in the headers")
        if line in (b"\r\n", b"\n"):
            break
        name, _, value = line.decode("latin-1").partition(":")
        headers[name.strip().lower()] = value.strip()
    connection = headers.get("connection", "").lower()
    keep_alive = (version == "HTTP/1.1" and connection != "close") or connection == "keep-alive"
    return status, headers, keep_alive


def framed(headers: Mapping[str, str]) -> bool:
    """True when the body's end is marked (chunked or ``Content-Length``): the connection may be reused."""
    return "chunked" in headers.get("transfer-encoding", "").lower() or "content-length" in headers


async def body_chunks(reader: asyncio.StreamReader, headers: Mapping[str, str]) -> AsyncIterator[bytes]:
    """The body as it arrives: chunk by chunk, in one piece by length, or everything until EOF."""
    if "chunked" in headers.get("transfer-encoding", "").lower():
        while True:
            size_line = await reader.readline()
            if not size_line.endswith(b"\n"):
                raise EOFError("connection closed in a chunked body")
            try:
                size = int(size_line.split(b";", 1)[0].strip() or b"0", 16)
            except ValueError:
                raise ResponseError(f"bad chunk size {size_line!r}") from None
            if size == 0:
                while (await reader.readline()) not in (b"\r\n", b"\n", b""):
                    pass  # trailers
                return
            yield await reader.readexactly(size)
            await reader.readexactly(2)
    elif "content-length" in headers:
        yield await reader.readexactly(int(headers["content-length"]))
    else:
        yield await reader.read()


async def read_body(reader: asyncio.StreamReader, headers: Mapping[str, str]) -> bytes:
    """The whole body (see ``body_chunks``)."""
    return b"".join([chunk async for chunk in body_chunks(reader, headers)])
