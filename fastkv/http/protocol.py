"""One asyncio protocol per client connection: httptools parsing, pipelining, watches, limits.

``data_received`` only feeds the parser; a request that cannot be parsed is answered with
Go's ``400 Bad Request`` and the connection is closed. httptools knows only registered
methods, while Go accepts any token: when the parser rejects a method, the request is parsed
again from its first byte by a new parser with ``GET`` standing in for the method, and the
real method is what the request carries (``MethodRecovery``). Complete requests are answered in
order: at once when the handler answers synchronously (local reads), else the connection
waits for the handler's ``Pending`` answer (writes), its coroutine or the end of the watch
before it answers the next pipelined request. No exception from a handler reaches the event loop: it becomes a
500 for that request.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from collections import deque
from functools import partial
from typing import Any

import httptools

from fastkv import metrics
from fastkv._native.plainreq import MAX_BYTES as PLAIN_PUT_MAX
from fastkv.http.endpoints import dispatch
from fastkv.http.form import FormError, path_unescape
from fastkv.http.keys import (
    KEYS_PREFIX,
    WATCHING,
    failure_response,
    plain_get,
    plain_read_flags,
)
from fastkv.http.responses import (
    BAD_REQUEST,
    BODY_TOO_LARGE,
    HEADERS_TOO_LARGE,
    INTERNAL_ERROR,
    MISSING_HOST,
    App,
    Pending,
    Response,
    http_date,
    status_line,
)
from fastkv.http.writer import AnswerWriter

__all__ = ["MAX_BODY_BYTES", "MAX_HEADER_BYTES", "REQUEST_TIMEOUT", "ConnectionSet", "HttpProtocol",
           "Request"]

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 3 * 1024 * 1024 // 2  # 1.5 MiB, etcd's request size limit
MAX_HEADER_BYTES = 1 << 20  # Go's DefaultMaxHeaderBytes
MAX_PIPELINE = 32  # queued requests before the connection stops reading
REQUEST_TIMEOUT = 10.0  # seconds from a request's first byte to its last

_CONNECTION_CLOSE = b"Connection: close\r\n"
_CONNECTION_KEEP_ALIVE = b"Connection: keep-alive\r\n"
CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
_RECEIVED: dict[bytes, Any] = {}  # etcd_http_received_total series by method
_OTHER_METHOD = b"unknown"  # the series of methods httptools does not know (any token)
_TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")  # RFC 7230 tchar+, Go's validMethod
_STAND_IN = b"GET"
MAX_KEPT_BYTES = 1 << 20  # input kept for re-parsing while no request ends at a read boundary
_HEADER_VALUE = rb"[\x21-\x7e](?:[\x20-\x7e]*[\x21-\x7e])?"
# One whole plain key read as common clients send it: no escapes, no ``.`` segment (nothing
# ServeMux would redirect), ``Host`` first, then only headers the answer does not depend on.
# Group 1 is the key below /v2/keys without a trailing slash, group 2 the query (checked by
# ``keys.plain_read_flags``). Anything else takes the parser.
_PLAIN_GET = re.compile(rb"GET /v2/keys((?:/(?!\.)[-\w.~]+)*)/?(?:\?([\w=&]*))? HTTP/1\.1\r\nHost: "
                        + _HEADER_VALUE
                        + rb"\r\n(?:(?:User-Agent|Accept|Accept-Encoding): " + _HEADER_VALUE + rb"\r\n)*\r\n")
_PLAIN_MAX = PLAIN_PUT_MAX  # bytes, for a plain read or write; far below every limit the parser enforces
_FORM = b"application/x-www-form-urlencoded"
_NO_FLAGS = (False, False)
_PLAIN_STARTS = frozenset((b"GET /v2/keys", b"PUT /v2/keys"))


def _received(method: bytes) -> Any:
    """The ``etcd_http_received_total`` series of ``method``."""
    counter = _RECEIVED.get(method)
    if counter is None:
        counter = _RECEIVED[method] = metrics.http_received.labels(method.decode("latin-1"))
    return counter



class _CompletionCounter:
    """Parser callbacks that only count complete requests."""

    __slots__ = ("count",)

    def __init__(self) -> None:
        self.count = 0

    def on_message_complete(self) -> None:
        self.count += 1


def _completed(data: bytes) -> int:
    """How many complete requests a new parser finds in ``data`` before any error."""
    counter = _CompletionCounter()
    with contextlib.suppress(httptools.HttpParserError):
        httptools.HttpRequestParser(counter).feed_data(data)
    return counter.count


def request_start(data: bytes, before: int) -> int:
    """The offset in ``data`` (which starts at a request boundary) where the request after
    the first ``before`` complete ones begins: found by bisection with new parsers."""
    lo, hi = 0, len(data)
    if before == 0:
        return 0
    while lo < hi:
        mid = (lo + hi) // 2
        if _completed(data[:mid]) >= before:
            hi = mid
        else:
            lo = mid + 1
    return lo


class MethodRecovery:
    """What a connection keeps so that a request with a method unknown to httptools can be
    parsed again: the input since the last read that ended between requests (``kept``, None
    once it would exceed ``MAX_KEPT_BYTES``) and how many requests completed in it."""

    __slots__ = ("completed", "held", "kept", "kept_bytes", "method")

    def __init__(self) -> None:
        self.kept: list[bytes] | None = []
        self.kept_bytes = 0
        self.completed = 0
        self.held: bytes | None = None  # the start of a request whose method has not fully arrived
        self.method: bytes | None = None  # the real method of the request being re-parsed

    def keep(self, data: bytes) -> None:
        kept = self.kept
        if kept is not None:
            self.kept_bytes += len(data)
            if self.kept_bytes > MAX_KEPT_BYTES:
                self.kept = None
            else:
                kept.append(data)

    def boundary(self) -> None:
        """The parser stands between requests at the end of a read: forget the input."""
        if self.kept_bytes or self.kept is None:
            self.kept = []
            self.kept_bytes = 0
        self.completed = 0

    def failed_request(self) -> bytes | None:
        """The input from the first byte of the request the parser rejected, or None when it
        was not kept."""
        if self.kept is None:
            return None
        data = b"".join(self.kept)
        return data[request_start(data, self.completed):]


class Request:
    """One complete request. ``path`` is the decoded URL path, ``query`` the raw query."""

    __slots__ = ("body", "content_type", "head", "http10", "keep_alive", "method", "origin", "path", "query",
                 "version_header")

    def __init__(self, method: bytes, path: str, query: bytes, body: bytes, content_type: bytes | None,
                 origin: bytes | None, keep_alive: bool, http_version: str) -> None:
        self.method = method
        self.path = path
        self.query = query
        self.body = body
        self.content_type = content_type
        self.origin = origin
        self.keep_alive = keep_alive
        self.head = method == b"HEAD"
        self.http10 = http_version == "1.0"
        if self.http10:
            self.version_header = _CONNECTION_KEEP_ALIVE if keep_alive else b""
        else:
            self.version_header = b"" if keep_alive else _CONNECTION_CLOSE


def split_target(target: bytes) -> tuple[str, bytes]:
    """The decoded path and raw query of a request target; ``FormError`` when Go rejects it."""
    if target[:1] != b"/":
        if not target.startswith((b"http://", b"https://")):
            raise FormError("invalid request URI")
        url = httptools.parse_url(target)
        return path_unescape(url.path or b"/"), url.query or b""
    raw_path, _, query = target.partition(b"?")
    raw_path = raw_path.partition(b"#")[0]
    if b"%" in raw_path:
        return path_unescape(raw_path), query
    return raw_path.decode("utf-8", "surrogateescape"), query


def _status_line(req: Request, status: int) -> bytes:
    """Go answers in the request's protocol version."""
    line = status_line(status)
    return b"HTTP/1.0" + line[8:] if req.http10 else line


class ConnectionSet:
    """The live connections of one server and the sweep that closes stalled requests."""

    def __init__(self, loop: asyncio.AbstractEventLoop, timeout: float = REQUEST_TIMEOUT) -> None:
        self.loop = loop
        self.timeout = timeout
        self.connections: set[HttpProtocol] = set()
        self._timer: asyncio.TimerHandle | None = None
        self.reads = 0  # reads from clients so far, on every connection
        self._reads_seen = 0
        self.writer = AnswerWriter(loop)

    def quiet(self) -> bool:
        """True when at most one read arrived from any client since the last call: nobody but
        the writer at hand is waiting to be served."""
        reads, seen = self.reads, self._reads_seen
        self._reads_seen = reads
        return reads - seen <= 1

    def add(self, conn: HttpProtocol) -> None:
        self.connections.add(conn)
        if self._timer is None:
            self._timer = self.loop.call_later(1.0, self.sweep)

    def discard(self, conn: HttpProtocol) -> None:
        self.connections.discard(conn)

    def sweep(self) -> None:
        """Close every connection whose current request started more than ``timeout`` ago."""
        self._timer = None
        deadline = self.loop.time() - self.timeout
        for conn in [c for c in self.connections if 0 < c.request_started < deadline]:
            conn.abort("request not completed in time")
        if self.connections:
            self._timer = self.loop.call_later(1.0, self.sweep)

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        for conn in list(self.connections):
            conn.abort("server shutting down")
        self.writer.close()


class HttpProtocol(asyncio.Protocol):
    """An HTTP/1.1 connection to a client."""

    def __init__(self, app: App, connections: ConnectionSet) -> None:
        # Per-connection state
        self.app = app
        self.connections = connections
        self.loop = connections.loop
        self.transport: Any = None
        self.parser = httptools.HttpRequestParser(self)
        self.recovery = MethodRecovery()
        self.in_request = False  # the parser has begun a request it has not completed
        self.queue: deque[Request] = deque()
        self.busy = False  # a response (write, quorum read or watch) is in progress
        self.closed = False
        self.failed: bytes | None = None  # the final response once the input is unusable
        self.write_paused = False
        self.read_paused = False
        # An answer is with the connections' writer: later output waits in ``held`` (order), and
        # a close waits too (``close_pending``).
        self.sending = False
        self.held: list[bytes] = []
        self.close_pending = False
        self.fd = -1  # the socket's descriptor (the writer duplicates it)
        self.watcher: Any = None
        self.in_watch = False  # the response in progress is a watch
        self.current: Request | None = None
        self.eof = False
        # Per-request state
        self.request_started = 0.0
        self.url = b""
        self.content_type: bytes | None = None
        self.origin: bytes | None = None
        self.body: list[bytes] = []
        self.body_size = 0
        self.header_bytes = 0
        self.has_host = False

    # -- Protocol interface -------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        sock = transport.get_extra_info("socket")
        self.fd = sock.fileno() if sock is not None else -1
        self.connections.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.connections.discard(self)
        self.queue.clear()
        self._drop_watcher()

    def data_received(self, data: bytes) -> None:
        self.connections.reads += 1
        if self.failed is not None or self.closed:
            return
        recovery = self.recovery
        if (data[:12] in _PLAIN_STARTS and len(data) < _PLAIN_MAX and recovery.method is None
                and recovery.held is None and not (self.in_request or self.busy or self.queue)):
            if data[0] == 71:  # G
                match = _PLAIN_GET.fullmatch(data)
                if match is not None:
                    flags = plain_read_flags(match[2]) if match[2] else _NO_FLAGS
                    if flags is not None:
                        self._answer_plain_get(match[1], *flags)
                        return
            elif self.app.plain_writes.take(data, self):
                return
        if recovery.held is not None:
            self._reparse(recovery.held + data)
            return
        recovery.keep(data)
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserInvalidMethodError:
            self._reparse(recovery.failed_request())
            return
        except httptools.HttpParserUpgrade:
            self.fail(BAD_REQUEST)
            return
        except httptools.HttpParserError:
            self.fail(BAD_REQUEST)
            return
        if not self.in_request:
            recovery.boundary()

    def _reparse(self, data: bytes | None) -> None:
        """Parse ``data``, which starts with a request whose method httptools rejected, with a
        new parser and ``GET`` standing in for the method; Go's 400 when it is no token."""
        recovery = self.recovery
        recovery.held = None
        if data is None:
            self.fail(BAD_REQUEST)
            return
        data = data.lstrip(b"\r\n")  # empty lines before a request line are skipped
        end = data.find(b" ")
        method = data[:end] if end >= 0 else data
        if (method or end == 0) and _TOKEN.fullmatch(method) is None:
            self.fail(BAD_REQUEST)
            return
        if end < 0:
            if len(data) > MAX_HEADER_BYTES:
                self.fail(HEADERS_TOO_LARGE)
            else:
                recovery.held = data  # wait for the rest of the method
            return
        self.parser = httptools.HttpRequestParser(self)
        self.in_request = False
        recovery.boundary()
        recovery.method = method
        self.data_received(_STAND_IN + data[end:])

    def eof_received(self) -> bool | None:
        """The client will send nothing more: end a watch, else answer what is pending first."""
        self.eof = True
        if self.in_watch or not (self.busy or self.queue or self.sending):
            return None  # the transport closes itself
        return True

    def pause_writing(self) -> None:
        self.write_paused = True
        self._pause_reading()

    def resume_writing(self) -> None:
        self.write_paused = False
        self._maybe_resume_reading()

    # -- Parser callbacks ---------------------------------------------------------------------

    def on_message_begin(self) -> None:
        self.in_request = True
        self.request_started = self.loop.time()
        self.url = b""
        self.content_type = None
        self.origin = None
        self.body = []
        self.body_size = 0
        self.header_bytes = 0
        self.has_host = False

    def on_url(self, url: bytes) -> None:
        self.url += url
        self.header_bytes += len(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self.header_bytes += len(name) + len(value) + 4
        if self.header_bytes > MAX_HEADER_BYTES:
            self.fail(HEADERS_TOO_LARGE)
            return
        size = len(name)
        if size == 12 and name.lower() == b"content-type":
            self.content_type = value
        elif size == 4 and name.lower() == b"host":
            self.has_host = True
        elif size == 6:
            lower = name.lower()
            if lower == b"origin":
                self.origin = value
            elif lower == b"expect" and value.lower() == b"100-continue":
                self._continue()
        elif (size == 14 and name.lower() == b"content-length" and value.strip().isdigit()
              and int(value) > MAX_BODY_BYTES):
            self.fail(BODY_TOO_LARGE)

    def _continue(self) -> None:
        """Answer ``Expect: 100-continue`` as Go does when a handler reads the body, but only
        while nothing else is being written on this connection (else the client sends the
        body after its own short delay)."""
        if self.failed is None and not self.busy and not self.queue:
            self.out(CONTINUE)

    def on_body(self, body: bytes) -> None:
        self.body_size += len(body)
        if self.body_size > MAX_BODY_BYTES:
            self.fail(BODY_TOO_LARGE)
            return
        self.body.append(body)

    def on_message_complete(self) -> None:
        self.in_request = False
        self.request_started = 0.0
        recovery = self.recovery
        recovery.completed += 1
        if self.failed is not None:
            return
        parser = self.parser
        method = recovery.method
        if method is None:
            method = label = parser.get_method()
        else:
            recovery.method = None
            label = _OTHER_METHOD
        _received(label).inc()
        if not self.has_host and parser.get_http_version() == "1.1":
            self.fail(MISSING_HOST)
            return
        if self.url == b"*" and method == b"OPTIONS":
            path, query = "*", b""
        else:
            try:
                path, query = split_target(self.url)
            except FormError:
                self.fail(BAD_REQUEST)
                return
        request = Request(method, path, query, b"".join(self.body), self.content_type, self.origin,
                          parser.should_keep_alive(), parser.get_http_version())
        if self.busy or self.queue:
            self.queue.append(request)
            if len(self.queue) >= MAX_PIPELINE:
                self._pause_reading()
            return
        self._answer(request)

    # -- Answering ----------------------------------------------------------------------------

    def _answer_plain_get(self, key: bytes, recursive: bool, sorted: bool) -> None:
        """Answer a read that ``_PLAIN_GET`` recognised as the parser and ``dispatch`` would:
        counted, then ``keys.plain_get`` (``key`` is the URL path below ``/v2/keys``)."""
        _received(b"GET").inc()
        path = "/1" + key.decode("ascii")
        try:
            response = plain_get(self.app, path, recursive, sorted)
        except Exception:
            log.exception("request GET %s failed", KEYS_PREFIX + path[2:])
            response = INTERNAL_ERROR
        if isinstance(response, bytes):
            self._write_answer(response)
        else:
            self.send(Request(b"GET", KEYS_PREFIX + path[2:], b"", b"", None, None, True, "1.1"), response)

    def plain_written(self, answer: bytes | None, key: str, error: BaseException | None) -> None:
        """The plain write of ``key`` (below ``/v2/keys``), which ``App.plain_writes`` took, is
        settled, inside the node's apply (or at once, refused): write ``answer``, its whole
        answer, else the answer to ``error``; whatever else the connection has to do waits."""
        self.busy = False
        if self.closed:
            return
        if answer is not None:
            self._write_answer(answer)
        else:
            req = Request(b"PUT", KEYS_PREFIX + key, b"", b"", _FORM, None, True, "1.1")
            self.send(req, failure_response(self.app, error))
        self._drain_later()

    def _answer(self, req: Request) -> None:
        """Answer ``req`` now, or start the work that will answer it (then ``busy``)."""
        self.current = req
        try:
            result = dispatch(self.app, req, self)
        except Exception:
            log.exception("request %s %s failed", req.method, req.path)
            result = INTERNAL_ERROR
        self._handle(req, result)

    def _handle(self, req: Request, result: Any) -> None:
        """Write a handler's answer, or wait for it (then ``busy``)."""
        if type(result) is tuple:
            self.send(req, result)
        elif result is None:
            self._finished(req)
        elif result is WATCHING:
            self.busy = True
        elif isinstance(result, Pending):
            self.busy = True
            result.when_done(partial(self._pending_done, req, result))
        else:
            self.busy = True
            self.loop.create_task(self._answer_later(req, result))

    def _pending_done(self, req: Request, pending: Pending) -> None:
        """``pending`` is settled, for a proposal inside the node's apply: write the answer here
        and leave whatever else the connection has to do to a later loop pass."""
        try:
            response = pending.response()
        except Exception:
            log.exception("request %s %s failed", req.method, req.path)
            response = INTERNAL_ERROR
        self.busy = False
        if self.closed:
            return
        self.send(req, response)
        self._drain_later()

    def _drain_later(self) -> None:
        """``_drain`` in a later loop pass, when there is anything for it to do."""
        if self.queue or self.eof or self.failed is not None or self.read_paused:
            self.loop.call_soon(self._drain)

    async def _answer_later(self, req: Request, work: Any) -> None:
        try:
            response = await work
        except Exception:
            log.exception("request %s %s failed", req.method, req.path)
            response = INTERNAL_ERROR
        self._complete(req, response)

    def _complete(self, req: Request, response: Response) -> None:
        """The answer to ``req``, which kept the connection busy, is ready: write it, go on."""
        self.busy = False
        if self.closed:
            return
        self.send(req, response)
        self._drain()

    def send(self, req: Request, response: Response) -> None:
        """Write one complete response (no body for HEAD); close unless kept alive."""
        status, headers, body = response
        data = b"".join((
            _status_line(req, status), self.app.cors_headers(req.origin), headers,
            b"Date: ", http_date(), b"\r\nContent-Length: %d\r\n" % len(body) if status != 204 else b"\r\n",
            req.version_header, b"\r\n", b"" if req.head else body))
        if req.keep_alive:
            self._write_answer(data)
        else:
            self.out(data)
            self._finished(req)

    def out(self, data: bytes) -> None:
        """Write ``data`` after everything written before it on this connection."""
        if self.sending:
            self.held.append(data)
        else:
            self.transport.write(data)

    def _write_answer(self, data: bytes) -> None:
        """Write the whole answer to a kept-alive request: with this loop pass's batch when the
        writer takes it, else through the transport (after an answer still with the writer)."""
        if self.sending:
            self.held.append(data)
        elif self.connections.writer.write(self, data):
            self.sending = True
        else:
            self.transport.write(data)

    def written(self, data: bytes, sent: int) -> None:
        """The writer is done with ``data``: ``sent`` bytes left (or ``-errno``). The transport
        takes the rest and what was held meanwhile; then a pending close."""
        if not self.sending:
            return
        self.sending = False
        held = self.held
        if held:
            self.held = []
        if self.closed and not self.close_pending:  # aborted or lost: nobody reads any more
            return
        if sent < len(data):
            rest = data[sent:] if sent > 0 else data
            self.transport.write(b"".join((rest, *held)) if held else rest)
        elif held:
            self.transport.write(b"".join(held))
        if self.close_pending:
            self.close_pending = False
            self.transport.close()
        elif self.eof and not (self.busy or self.queue):
            self.close()

    def write(self, data: bytes) -> None:
        """The watch hub's write: a long-poll watch's last chunk is a whole answer; a stream
        watch's chunks go out as they come."""
        req, watcher = self.current, self.watcher
        if req is not None and req.keep_alive and watcher is not None and not watcher.stream:
            self._write_answer(data)
        else:
            self.out(data)

    def is_closing(self) -> bool:
        return self.closed or self.transport.is_closing()

    def _finished(self, req: Request) -> None:
        if not req.keep_alive:
            self.queue.clear()
            self.close()

    def _drain(self) -> None:
        """Answer queued requests until one has to wait; then the final answer or EOF close."""
        while self.queue and not self.busy and not self.closed:
            self._answer(self.queue.popleft())
        if self.busy or self.closed:
            return
        self._maybe_resume_reading()
        if self.failed is not None:
            self.out(self.failed)
            self.close()
        elif self.eof:
            self.close()

    def start_chunked(self, status: int, headers: bytes) -> None:
        """Write the head of a chunked response (a watch) at once."""
        req = self.current
        assert req is not None
        self.out(b"".join((
            _status_line(req, status), self.app.cors_headers(req.origin), headers,
            b"Date: ", http_date(), b"\r\n", req.version_header, b"Transfer-Encoding: chunked\r\n\r\n")))

    def watching(self, watcher: Any) -> None:
        """The current request is a watch; ``watcher`` is registered with the hub (or None)."""
        self.watcher = watcher
        self.in_watch = True

    def watch_done(self, *args: Any) -> None:
        """The hub ended a non-stream watch (last chunk written): go on with the connection."""
        self.watcher = None
        self.in_watch = False
        req = self.current
        if self.closed or req is None:
            return
        if not req.keep_alive:
            self.close()
            return
        self.busy = False
        self._drain_later()  # not from inside the hub's notify

    # -- Failure and closing ------------------------------------------------------------------

    def fail(self, response: bytes) -> None:
        """The input is unusable: answer what is queued, then ``response``, then close."""
        if self.failed is not None:
            return
        self.failed = response
        self.request_started = 0.0
        self._pause_reading()
        if not self.busy and not self.queue:
            self._drain()

    def abort(self, reason: str) -> None:
        """Drop the connection without an answer (stalled request, shutdown)."""
        log.debug("closing connection: %s", reason)
        self.request_started = 0.0
        if self.transport is not None and not self.closed:
            self.closed = True
            self._drop_watcher()
            self.transport.abort()

    def close(self) -> None:
        """Close once everything written so far is out (after the answer with the writer)."""
        if not self.closed:
            self.closed = True
            self._drop_watcher()
            if self.sending:
                self.close_pending = True
            else:
                self.transport.close()

    def _drop_watcher(self) -> None:
        watcher, self.watcher = self.watcher, None
        if watcher is not None:
            try:
                self.app.node.hub.remove(watcher)
            except Exception:
                log.exception("removing a watcher failed")

    def _pause_reading(self) -> None:
        if not self.read_paused and not self.closed:
            self.read_paused = True
            self.transport.pause_reading()

    def _maybe_resume_reading(self) -> None:
        if (self.read_paused and not self.write_paused and self.failed is None and not self.closed
                and len(self.queue) < MAX_PIPELINE):
            self.read_paused = False
            self.transport.resume_reading()
