"""A small raw-HTTP/1.1 client over sockets for comparing two servers byte for byte.

It records exactly what came back: the status line, every header in arrival order, the
decoded body bytes and whether the body was chunked. It sends exactly what it is given, so
malformed requests (bad escapes, odd bodies, wrong content types) can be sent too. A
``Stream`` reads a chunked response incrementally, one line at a time, for watches.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

Headers = list[tuple[str, str]]


class ProtocolError(Exception):
    """The server's answer is not valid HTTP/1.1 framing, or it did not come in time."""


@dataclass
class Response:
    """One HTTP response as received: headers keep their order and spelling."""

    status: int
    reason: str
    headers: Headers
    body: bytes = b""
    chunked: bool = False
    received_at: float = field(default_factory=time.time)

    def header(self, name: str) -> str | None:
        """The first value of header ``name`` (case-insensitive), or None."""
        lname = name.lower()
        return next((v for k, v in self.headers if k.lower() == lname), None)

    def describe(self) -> str:
        """The response as it would be printed by ``curl -i`` (body decoded, framing noted)."""
        lines = [f"HTTP/1.1 {self.status} {self.reason}"]
        lines += [f"{k}: {v}" for k, v in self.headers]
        framing = "chunked" if self.chunked else "length"
        return "\n".join(lines) + f"\n\n{self.body!r} ({framing})"


def build_request(method: str, target: str, host: str, headers: Sequence[tuple[str, str]] = (),
                  body: bytes | None = None) -> bytes:
    """The bytes of one HTTP/1.1 request; Host and Content-Length are added unless given
    (no Content-Length when a Transfer-Encoding is given: the body is then sent as it is)."""
    names = {k.lower() for k, _ in headers}
    lines = [f"{method} {target} HTTP/1.1"]
    if "host" not in names:
        lines.append(f"Host: {host}")
    lines += [f"{k}: {v}" for k, v in headers]
    if body is not None and not names & {"content-length", "transfer-encoding"}:
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + (body or b"")


class Connection:
    """One TCP connection to a server; requests on it are sent one after another (keep-alive)."""

    def __init__(self, host: str, port: int, timeout: float = 10.0) -> None:
        self.host = host
        self.port = port
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.buf = b""

    def close(self) -> None:
        self.sock.close()

    def send_raw(self, data: bytes) -> None:
        self.sock.sendall(data)

    def send(self, method: str, target: str, headers: Sequence[tuple[str, str]] = (),
             body: bytes | None = None) -> None:
        self.send_raw(build_request(method, target, f"{self.host}:{self.port}", headers, body))

    def _fill(self, deadline: float) -> bool:
        """Read more bytes into the buffer; False at end of stream. Raises TimeoutError at the deadline."""
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError("no data before the deadline")
        self.sock.settimeout(remaining)
        try:
            data = self.sock.recv(65536)
        except TimeoutError:
            raise
        except OSError:  # a reset counts as the end of the stream
            return False
        if not data:
            return False
        self.buf += data
        return True

    def _read_until(self, marker: bytes, deadline: float) -> bytes:
        while marker not in self.buf:
            if not self._fill(deadline):
                raise ProtocolError(f"connection closed while waiting for {marker!r}; got {self.buf!r}")
        head, _, self.buf = self.buf.partition(marker)
        return head

    def _read_exact(self, n: int, deadline: float) -> bytes:
        while len(self.buf) < n:
            if not self._fill(deadline):
                raise ProtocolError(f"connection closed after {len(self.buf)} of {n} body bytes")
        data, self.buf = self.buf[:n], self.buf[n:]
        return data

    def _read_to_close(self, deadline: float) -> bytes:
        while self._fill(deadline):
            pass
        data, self.buf = self.buf, b""
        return data

    def read_head(self, timeout: float = 10.0) -> Response:
        """Read the status line and headers of the next response."""
        deadline = time.monotonic() + timeout
        head = self._read_until(b"\r\n\r\n", deadline).decode("latin-1")
        status_line, *header_lines = head.split("\r\n")
        parts = status_line.split(" ", 2)
        if len(parts) < 2 or not parts[0].startswith("HTTP/1."):
            raise ProtocolError(f"bad status line {status_line!r}")
        headers: Headers = []
        for line in header_lines:
            name, sep, value = line.partition(":")
            if not sep:
                raise ProtocolError(f"bad header line {line!r}")
            headers.append((name, value.strip()))
        resp = Response(int(parts[1]), parts[2] if len(parts) > 2 else "", headers)
        resp.chunked = (resp.header("Transfer-Encoding") or "").lower() == "chunked"
        return resp

    def read_chunk(self, timeout: float) -> bytes | None:
        """The data of the next chunk of a chunked body; None for the last (empty) chunk."""
        deadline = time.monotonic() + timeout
        size_line = self._read_until(b"\r\n", deadline)
        try:
            size = int(size_line.split(b";")[0].strip(), 16)
        except ValueError as e:
            raise ProtocolError(f"bad chunk size line {size_line!r}") from e
        if size == 0:
            self._read_until(b"\r\n", deadline)  # no trailers are expected
            return None
        data = self._read_exact(size, deadline)
        if self._read_exact(2, deadline) != b"\r\n":
            raise ProtocolError("chunk not followed by CRLF")
        return data

    def read_body(self, resp: Response, method: str, timeout: float = 10.0) -> Response:
        """Read the body that belongs to ``resp`` (none for HEAD, 1xx, 204, 304)."""
        deadline = time.monotonic() + timeout
        if method == "HEAD" or resp.status in (204, 304) or resp.status < 200:
            return resp
        if resp.chunked:
            parts = []
            while (chunk := self.read_chunk(max(deadline - time.monotonic(), 0.001))) is not None:
                parts.append(chunk)
            resp.body = b"".join(parts)
        elif (length := resp.header("Content-Length")) is not None:
            resp.body = self._read_exact(int(length), deadline)
        else:
            resp.body = self._read_to_close(deadline)
        return resp

    def exchange(self, method: str, target: str, headers: Sequence[tuple[str, str]] = (),
                 body: bytes | None = None, timeout: float = 10.0) -> Response:
        """Send one request and read its whole response."""
        self.send(method, target, headers, body)
        return self.read_body(self.read_head(timeout), method, timeout)


def request(port: int, method: str, target: str, headers: Sequence[tuple[str, str]] = (),
            body: bytes | None = None, raw: bytes | None = None, timeout: float = 10.0,
            host: str = "127.0.0.1") -> Response:
    """One request on a fresh connection (``raw`` bytes are sent verbatim instead of building one)."""
    conn = Connection(host, port, timeout)
    try:
        if raw is not None:
            conn.send_raw(raw)
            return conn.read_body(conn.read_head(timeout), method, timeout)
        return conn.exchange(method, target, headers, body, timeout)
    finally:
        conn.close()


class Stream:
    """A response read incrementally: the head at once, then the body line by line.

    Works whatever the framing: a chunked body is read chunk by chunk as it arrives; a body
    with Content-Length is read whole at once and then served line by line.
    """

    def __init__(self, port: int, target: str, headers: Sequence[tuple[str, str]] = (),
                 head_timeout: float = 5.0, host: str = "127.0.0.1") -> None:
        self.conn = Connection(host, port, head_timeout)
        self.conn.send("GET", target, headers)
        self.head = self.conn.read_head(head_timeout)
        self.pending = b""
        self.ended = False
        if not self.head.chunked:
            self.conn.read_body(self.head, "GET", head_timeout)
            self.pending, self.ended = self.head.body, True

    def read_line(self, timeout: float) -> bytes | None:
        """The next line of the body including its newline; None if the body ended first.

        A body that ends without a newline yields its remaining bytes. Raises TimeoutError.
        """
        deadline = time.monotonic() + timeout
        while b"\n" not in self.pending and not self.ended:
            chunk = self.conn.read_chunk(max(deadline - time.monotonic(), 0.001))
            if chunk is None:
                self.ended = True
            else:
                self.pending += chunk
        if b"\n" in self.pending:
            line, _, self.pending = self.pending.partition(b"\n")
            return line + b"\n"
        line, self.pending = self.pending, b""
        return line or None

    def wait_end(self, timeout: float) -> bytes:
        """Wait for the end of the body; returns any bytes that came before it."""
        deadline = time.monotonic() + timeout
        while not self.ended:
            chunk = self.conn.read_chunk(max(deadline - time.monotonic(), 0.001))
            if chunk is None:
                self.ended = True
            else:
                self.pending += chunk
        rest, self.pending = self.pending, b""
        return rest

    def close(self) -> None:
        self.conn.close()
