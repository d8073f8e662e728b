"""``/v2/keys``: parameters validated in etcd's order, mapped to one store operation.

``handle_keys`` answers local reads at once (a ``Response``; HEAD is always local, as in
etcd), returns a ``Proposal`` (a ``Pending`` answer) for everything that goes through the log
(writes, ``quorum=true`` GETs), and starts watches on the connection itself (returning
``WATCHING``). Like etcd, every request whose parameters are valid first reads the store's auth
flag (``Store.auth_enabled``), which shows in ``/v2/stats/store``.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any

from fastkv._native.store import (
    OP_CAD,
    OP_CAS,
    OP_CREATE,
    OP_DELETE,
    OP_QGET,
    OP_SET,
    OP_UNIQUE,
    OP_UPDATE,
    V2Error,
    encode_request,
)
from fastkv._native.watch import Watcher
from fastkv.http.form import FormError, is_form_content_type, parse_bool, parse_form, parse_uint
from fastkv.http.responses import JSON, App, Pending, Response, http_date, method_not_allowed

if TYPE_CHECKING:
    from fastkv.http.protocol import HttpProtocol, Request

__all__ = ["KEYS_PREFIX", "WATCHING", "KeyRequest", "Proposal", "handle_keys", "internal_path",
           "parse_key_request", "plain_get", "plain_read_flags"]

log = logging.getLogger(__name__)

KEYS_PREFIX = "/v2/keys"
WATCHING = object()  # the connection answers this request itself (a watch)

_ALLOW = b"HEAD,GET,PUT,POST,DELETE"
_METHODS = frozenset((b"HEAD", b"GET", b"PUT", b"POST", b"DELETE"))
_BODY_METHODS = frozenset((b"PUT", b"POST", b"PATCH"))
_NO_VALUE_ACTIONS = frozenset(("set", "create", "update", "compareAndSwap"))
_INT64_MAX = (1 << 63) - 1
_TIMEOUT_CAUSE = "etcdserver: request timed out"
_BOOL_FLAGS = ("recursive", "sorted", "wait", "dir", "quorum", "stream")


class KeyRequest:
    """One parsed ``/v2/keys`` request (etcd's ``parseKeyRequest`` result)."""

    __slots__ = ("dir", "expire_ns", "method", "no_value", "path", "prev_exist", "prev_index",
                 "prev_value", "quorum", "recursive", "refresh", "sorted", "stream", "value", "wait",
                 "wait_index")

    def __init__(self, method: bytes, path: str) -> None:
        self.method = method
        self.path = path
        self.value = ""
        self.prev_value = ""
        self.prev_index = 0
        self.wait_index = 0
        self.prev_exist: bool | None = None
        self.refresh = False
        self.expire_ns = 0
        self.no_value = False
        self.recursive = self.sorted = self.wait = self.dir = self.quorum = self.stream = False


def internal_path(url_path: str) -> str:
    """``/v2/keys/foo/`` -> ``/1/foo``; ``/v2/keys`` and ``/v2/keys/`` -> ``/1``.

    ``url_path`` is already clean (ServeMux redirected ``//``, ``.`` and ``..``).
    """
    key = url_path[len(KEYS_PREFIX):]
    if key.endswith("/"):
        key = key[:-1]
    return "/1" + key


def _invalid(code: int, cause: str) -> V2Error:
    return V2Error(code, cause, 0)


def _flag(form: dict[str, str], name: str, cause: str | None = None) -> bool:
    """``getBool``: absent is false; present must be a Go bool (error 209)."""
    text = form.get(name)
    if text is None:
        return False
    try:
        return parse_bool(text)
    except ValueError:
        raise _invalid(209, cause or f'invalid value for "{name}"') from None


def _index(form: dict[str, str], name: str) -> int:
    """``getUint64``: absent is 0; present must be an unsigned decimal (error 203)."""
    text = form.get(name)
    if text is None:
        return 0
    try:
        return parse_uint(text)
    except ValueError:
        raise _invalid(203, f'invalid value for "{name}"') from None


def parse_key_request(method: bytes, url_path: str, form: dict[str, str], now_ns: int) -> KeyRequest:
    """Validate ``form`` in etcd's order; raises ``V2Error`` (index 0) on the first problem."""
    r = KeyRequest(method, internal_path(url_path))
    r.prev_index = _index(form, "prevIndex")
    r.wait_index = _index(form, "waitIndex")
    r.recursive, r.sorted, r.wait, r.dir, r.quorum, r.stream = (_flag(form, n) for n in _BOOL_FLAGS)
    if r.wait and method != b"GET":
        raise _invalid(209, '"wait" can only be used with GET requests')
    prev_value = form.get("prevValue")
    if prev_value == "":
        raise _invalid(201, '"prevValue" cannot be empty')
    r.prev_value = prev_value or ""
    r.no_value = _flag(form, "noValueOnSuccess")
    ttl = form.get("ttl")
    if ttl:
        try:
            seconds = parse_uint(ttl)
        except ValueError:
            raise _invalid(202, 'invalid value for "ttl"') from None
        r.expire_ns = min(now_ns + seconds * 1_000_000_000, _INT64_MAX)
    if "prevExist" in form:
        r.prev_exist = _flag(form, "prevExist", "invalid value for prevExist")
    r.value = form.get("value", "")
    if "refresh" in form:
        r.refresh = _flag(form, "refresh", "invalid value for refresh")
        if r.refresh and r.value:
            raise _invalid(211, "A value was provided on a refresh")
        if r.refresh and not ttl:
            raise _invalid(212, "No TTL value set")
    return r


def encode_write(r: KeyRequest) -> bytes:
    """The store request for a PUT, POST or DELETE (etcd's ``applierV2store`` choice)."""
    conditional = r.prev_index > 0 or r.prev_value != ""
    prev_value = r.prev_value or None
    if r.method == b"POST":
        return encode_request(OP_UNIQUE, r.path, r.value, r.dir, r.expire_ns)
    if r.method == b"DELETE":
        if conditional:
            return encode_request(OP_CAD, r.path, prev_value=prev_value, prev_index=r.prev_index)
        return encode_request(OP_DELETE, r.path, dir=r.dir, recursive=r.recursive)
    if r.prev_exist is False:
        return encode_request(OP_CREATE, r.path, r.value, r.dir, r.expire_ns, refresh=r.refresh)
    if conditional:
        return encode_request(OP_CAS, r.path, r.value, False, r.expire_ns, prev_value, r.prev_index,
                              r.refresh)
    if r.prev_exist:
        return encode_request(OP_UPDATE, r.path, r.value, False, r.expire_ns, refresh=r.refresh)
    return encode_request(OP_SET, r.path, r.value, r.dir, r.expire_ns, refresh=r.refresh)


def event_headers(app: App, etcd_index: int) -> bytes:
    """Headers of a successful keys response (and of a watch)."""
    node = app.node
    return (JSON + app.cluster_header()
            + b"X-Etcd-Index: %d\r\nX-Raft-Index: %d\r\nX-Raft-Term: %d\r\n"
            % (etcd_index, node.raft_index, node.raft_term))


def error_response(app: App, error: V2Error) -> Response:
    """A v2 error: its status and body, ``X-Etcd-Index`` from the error, no ``X-Raft-*``."""
    return (error.status, JSON + app.cluster_header() + b"X-Etcd-Index: %d\r\n" % error.index,
            error.body)


class Proposal(Pending):
    """One request on its way through the log, and the node's waiter for it: settled with the
    Event, the V2Error the store raised or why it failed; ``response()`` answers it."""

    __slots__ = ("app", "no_value")

    def __init__(self, app: App, no_value: bool) -> None:
        super().__init__()
        self.app = app
        self.no_value = no_value

    def response(self) -> Response:
        app = self.app
        try:
            event = self.result()
        except Exception as exc:
            return failure_response(app, exc)
        body = event.body
        if self.no_value and event.action in _NO_VALUE_ACTIONS:
            body = b'{"action":"%s"}\n' % event.action.encode()
        return (201 if event.created else 200), event_headers(app, event.etcd_index), body


def failure_response(app: App, exc: BaseException) -> Response:
    """The answer to a write that did not apply: the store's V2Error, or etcd's error 300 for a
    proposal that timed out or failed below the store."""
    if isinstance(exc, V2Error):
        return error_response(app, exc)
    log.warning("proposal failed: %r", exc)
    return error_response(app, V2Error(300, str(exc) or _TIMEOUT_CAUSE, 0))


def propose(app: App, request: bytes, no_value: bool) -> Proposal | Response:
    """Send one request through the log; its answer comes with the ``Proposal`` (or at once,
    when this member is stopping)."""
    proposal = Proposal(app, no_value)
    try:
        app.node.submit_request(request, proposal)
    except V2Error as error:
        return error_response(app, error)
    return proposal


def read_form(req: Request) -> dict[str, str]:
    """Go's ``ParseForm`` for this request; ``V2Error(210)`` when it cannot be parsed."""
    body = req.body if req.method in _BODY_METHODS and is_form_content_type(req.content_type) else None
    if not req.query and not body:
        return {}
    try:
        return parse_form(req.query, body)
    except FormError as exc:
        raise _invalid(210, str(exc)) from None


def handle_keys(app: App, req: Request, conn: HttpProtocol) -> Response | Pending | Any:
    """Answer one ``/v2/keys`` request (see the module docstring for the three kinds of answer)."""
    if req.method not in _METHODS:
        return method_not_allowed(_ALLOW)
    now_ns = time.time_ns()
    store = app.node.store
    if not req.query and (req.method == b"GET" or req.method == b"HEAD"):
        store.auth_enabled()
        return local_get(app, internal_path(req.path), False, False, now_ns)  # the hot path
    try:
        r = parse_key_request(req.method, req.path, read_form(req), now_ns)
        store.auth_enabled()  # etcd's access check reads the store once parameters are valid
        if req.method == b"GET" or req.method == b"HEAD":
            if r.quorum and req.method == b"GET":  # etcd serves HEAD locally even with quorum
                return propose(app, encode_request(OP_QGET, r.path, recursive=r.recursive,
                                                   sorted=r.sorted), False)
            if r.wait:
                return start_watch(app, r, conn)
            return local_get(app, r.path, r.recursive, r.sorted, now_ns)
    except V2Error as error:
        return error_response(app, error)
    return propose(app, encode_write(r), r.no_value)


def local_get(app: App, path: str, recursive: bool, sorted: bool, now_ns: int) -> Response:
    """A read from this member's store (not through the log)."""
    try:
        event = app.node.store.get(path, recursive, sorted, now_ns)
    except V2Error as error:
        return error_response(app, error)
    return 200, event_headers(app, event.etcd_index), event.body


_PLAIN_PAIRS = {b"%s=%s" % (name, text): (name, value) for name in (b"recursive", b"sorted", b"quorum")
                for text, value in ((b"true", True), (b"false", False)) if name != b"quorum" or not value}


def plain_read_flags(query: bytes) -> tuple[bool, bool] | None:
    """``(recursive, sorted)`` of a query made only of ``recursive``, ``sorted`` (``true`` or
    ``false``) and ``quorum=false`` pairs, read as ``parse_key_request`` reads them (the first
    of a repeated name wins, empty pairs are skipped); None for any other query."""
    flags: dict[bytes, bool] = {}
    for pair in query.split(b"&"):
        if pair:
            known = _PLAIN_PAIRS.get(pair)
            if known is None:
                return None
            flags.setdefault(*known)
    return flags.get(b"recursive", False), flags.get(b"sorted", False)


def plain_get(app: App, path: str, recursive: bool, sorted: bool) -> bytes | Response:
    """The hot path: a local ``GET /v2/keys/...`` of the internal ``path`` without body or
    ``Origin``, over HTTP/1.1 kept alive. A key that reads is answered with the complete
    response bytes (exactly what ``HttpProtocol.send`` writes for ``local_get``'s answer); an
    error with its ``Response``."""
    node = app.node
    store = node.store
    store.auth_enabled()
    try:
        return store.get_response(path, recursive, sorted, time.time_ns(), app.json_head(200),
                                  node.raft_index, node.raft_term, http_date())
    except V2Error as error:
        return error_response(app, error)


def start_watch(app: App, r: KeyRequest, conn: HttpProtocol) -> Response | object:
    """Register a watch (or answer it from history): headers now, the event as a chunk.

    etcd quirk kept: a stream watch answered from history gets that one event and then
    nothing more (the watcher is never registered).
    """
    node = app.node
    watcher = Watcher(r.path, r.recursive, r.stream, r.wait_index, conn, conn.watch_done)
    start_index = node.store.index
    event = node.hub.watch(watcher, start_index)  # may raise V2Error(401): answered normally
    conn.start_chunked(200, event_headers(app, start_index))
    if event is None:
        conn.watching(watcher)
        return WATCHING
    body = event.body
    conn.out(b"%x\r\n%b\r\n" % (len(body), body))
    if r.stream:
        conn.watching(None)  # never ends: etcd's behaviour for a stream answered from history
        return WATCHING
    conn.out(b"0\r\n\r\n")
    return None
