"""Responses as Go's ``net/http`` writes them, and the per-listener context ``App``.

A handler answers with a ``Response``: ``(status, headers, body)`` where ``headers`` is the
handler's own header block (``Name: value\\r\\n`` lines, in Go's sorted order). The
connection adds the status line, the CORS block, ``Date``, ``Content-Length`` and
``Connection`` when it writes the response (``HttpProtocol.send``).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from email.utils import formatdate
from typing import TYPE_CHECKING, Any

from fastkv import metrics
from fastkv._native.plainreq import PlainWrites
from fastkv.http import gojson

if TYPE_CHECKING:
    from fastkv.settings import Settings

__all__ = [
    "BAD_REQUEST",
    "App",
    "Pending",
    "Response",
    "http_date",
    "method_not_allowed",
    "not_found",
    "status_line",
    "text_error",
]

Response = tuple[int, bytes, bytes]
log = logging.getLogger("fastkv.http")


class Pending:
    """An answer that comes later, without a task or an asyncio future: whoever produces the
    outcome settles it once (``set_result`` / ``set_exception``; later calls are ignored), which
    runs the one callback registered with ``when_done`` right there, synchronously. The
    connection then calls ``response()``, which must turn every outcome it expects into a
    ``Response``. The callback runs inside the producer (for a proposal: the node's apply), so it
    must do no more than write the answer."""

    __slots__ = ("_callback", "_done", "_error", "_result")

    def __init__(self) -> None:
        self._done = False
        self._result: Any = None
        self._error: BaseException | None = None
        self._callback: Callable[[], None] | None = None

    def done(self) -> bool:
        return self._done

    def set_result(self, result: Any) -> None:
        self._settle(result, None)

    def set_exception(self, error: BaseException) -> None:
        self._settle(None, error)

    def result(self) -> Any:
        """The outcome: the result, or the exception raised here."""
        if self._error is not None:
            raise self._error
        return self._result

    def when_done(self, callback: Callable[[], None]) -> None:
        """Run ``callback()`` once settled (at once when it is already)."""
        if self._done:
            callback()
        else:
            self._callback = callback

    def _settle(self, result: Any, error: BaseException | None) -> None:
        if self._done:
            return
        self._done, self._result, self._error = True, result, error
        callback, self._callback = self._callback, None
        if callback is not None:
            try:
                callback()
            except Exception:  # the producer goes on with its other waiters
                log.exception("answering a settled request failed")

    def response(self) -> Response:
        raise NotImplementedError


_REASONS = {
    200: "OK", 201: "Created", 204: "No Content", 301: "Moved Permanently", 400: "Bad Request",
    401: "Unauthorized", 403: "Forbidden", 404: "Not Found", 405: "Method Not Allowed",
    408: "Request Timeout", 409: "Conflict", 410: "Gone", 412: "Precondition Failed",
    413: "Request Entity Too Large", 415: "Unsupported Media Type",
    431: "Request Header Fields Too Large", 500: "Internal Server Error", 503: "Service Unavailable",
}
_STATUS_LINES = {code: f"HTTP/1.1 {code} {reason}\r\n".encode() for code, reason in _REASONS.items()}


def status_line(status: int) -> bytes:
    """``HTTP/1.1 <code> <reason>\\r\\n``, precomputed for every status this server sends."""
    line = _STATUS_LINES.get(status)
    return line if line is not None else f"HTTP/1.1 {status} status code {status}\r\n".encode()


def _close_response(status: int) -> bytes:
    """What Go writes, then closes, when a request cannot be read at all."""
    reason = f"{status} {_REASONS[status]}".encode()
    return (status_line(status) + b"Content-Type: text/plain; charset=utf-8\r\nConnection: close\r\n\r\n"
            + reason)


BAD_REQUEST = _close_response(400)
MISSING_HOST = (b"HTTP/1.1 400 Bad Request: missing required Host header\r\n"
                b"Content-Type: text/plain; charset=utf-8\r\nConnection: close\r\n\r\n"
                b"400 Bad Request: missing required Host header")
HEADERS_TOO_LARGE = _close_response(431)
_TOO_LARGE_TEXT = b"413 Request Entity Too Large: the request body is limited to 1.5 MiB\n"
BODY_TOO_LARGE = (status_line(413) + b"Content-Type: text/plain; charset=utf-8\r\nConnection: close\r\n"
                  + b"Content-Length: %d\r\n\r\n" % len(_TOO_LARGE_TEXT) + _TOO_LARGE_TEXT)

_TEXT = b"Content-Type: text/plain; charset=utf-8\r\nX-Content-Type-Options: nosniff\r\n"
JSON = b"Content-Type: application/json\r\n"
TEXT_PLAIN = b"Content-Type: text/plain; charset=utf-8\r\n"

_date_second = -1
_date_value = b""


def http_date(now: float | None = None) -> bytes:
    """The ``Date`` header value (``Sat, 28 Nov 2026 00:57:59 GMT``), cached per second."""
    global _date_second, _date_value
    now = time.time() if now is None else now
    second = int(now)
    if second != _date_second:
        _date_second, _date_value = second, formatdate(second, usegmt=True).encode()
    return _date_value


def text_error(status: int, text: str, headers: bytes = b"") -> Response:
    """Go's ``http.Error``: text/plain, nosniff, the text plus a newline; ``headers`` sorted in."""
    lines = sorted([*_TEXT.splitlines(keepends=True), *headers.splitlines(keepends=True)])
    return status, b"".join(lines), text.encode() + b"\n"


def not_found() -> Response:
    """ServeMux's answer for a path no handler serves."""
    return NOT_FOUND


def method_not_allowed(allow: bytes, headers: bytes = b"") -> Response:
    """405 with ``Allow`` (etcd's ``allowMethod``); ``allow`` is e.g. ``b"GET,HEAD"``."""
    return text_error(405, "Method Not Allowed", b"Allow: " + allow + b"\r\n" + headers)


NOT_FOUND = text_error(404, "404 page not found")
INTERNAL_ERROR = text_error(500, "Internal Server Error")


class App:
    """What every connection of one server shares: the node, the settings, header caches."""

    def __init__(self, node: Any, settings: Settings) -> None:
        self.node = node
        self.settings = settings
        self._cluster_id = -1
        self._cluster_header = b""
        self._json_heads: dict[int, bytes] = {}
        allowed = tuple(settings.cors)
        self.cors_any = "*" in allowed
        self.cors_origins = frozenset(o.encode() for o in allowed)
        # The plain write's compiled lane, through the node's compiled proposal queue.
        self.plain_writes = PlainWrites(node, self.json_head, node.proposals.submit_request,
                                        metrics.http_received.labels("PUT"), http_date)

    def cors_headers(self, origin: bytes | None) -> bytes:
        """The CORS block etcd adds to every response (none when the origin is not allowed)."""
        if self.cors_any:
            return CORS_ANY
        if origin is not None and origin in self.cors_origins:
            return _cors_block(origin)
        return b""

    def cluster_header(self) -> bytes:
        """``X-Etcd-Cluster-Id: <hex>\\r\\n`` for the node's current cluster id."""
        cluster_id = self.node.cluster_id
        if cluster_id != self._cluster_id:
            self._cluster_id = cluster_id
            self._cluster_header = b"X-Etcd-Cluster-Id: %x\r\n" % cluster_id
            self._json_heads = {}
        return self._cluster_header

    def json_head(self, status: int) -> bytes:
        """The start of a JSON answer with ``status`` to an HTTP/1.1 request without ``Origin``:
        status line, CORS block, ``Content-Type`` and ``X-Etcd-Cluster-Id`` (rebuilt when the
        cluster id changes)."""
        cluster = self.cluster_header()
        head = self._json_heads.get(status)
        if head is None:
            head = self._json_heads[status] = status_line(status) + self.cors_headers(None) + JSON + cluster
        return head

    def json_message(self, status: int, message: str) -> Response:
        """etcd's ``HTTPError``: ``{"message":...}`` (no newline) with the cluster id header."""
        return status, JSON + self.cluster_header(), gojson.message_body(message)


def _cors_block(origin: bytes) -> bytes:
    return (b"Access-Control-Allow-Headers: accept, content-type, authorization\r\n"
            b"Access-Control-Allow-Methods: POST, GET, OPTIONS, PUT, DELETE\r\n"
            b"Access-Control-Allow-Origin: " + origin + b"\r\n")


CORS_ANY = _cors_block(b"*")
