"""Routing (Go ``ServeMux`` rules) and every client endpoint other than ``/v2/keys``.

``dispatch`` is the one entry point: OPTIONS is answered first (etcd's CORS wrapper), then
unclean paths are redirected (301), then the path picks a handler. Handlers return a
``Response``, a coroutine producing one, or ``keys.WATCHING``.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from fastkv import metrics
from fastkv._native.store import OP_QGET, encode_request
from fastkv.http import gojson
from fastkv.http.keys import KEYS_PREFIX, handle_keys
from fastkv.http.responses import (
    JSON,
    NOT_FOUND,
    TEXT_PLAIN,
    App,
    Response,
    method_not_allowed,
    text_error,
)

if TYPE_CHECKING:
    from fastkv.http.protocol import HttpProtocol, Request

__all__ = [
    "ETCD_CLUSTER_VERSION",
    "ETCD_VERSION",
    "HEALTH_READ_TIMEOUT_S",
    "clean_path",
    "dispatch",
    "go_duration",
    "machines_body",
    "member_json",
    "rfc3339nano",
]

ETCD_VERSION = "3.4.23"
ETCD_CLUSTER_VERSION = "3.4.0"
MEMBERS_PREFIX = "/v2/members"

Handler = Callable[[App, "Request", "HttpProtocol"], Any]

_OPTIONS_OK: Response = (200, b"", b"")
_VERSION_BODY = gojson.dumps({"etcdserver": ETCD_VERSION, "etcdcluster": ETCD_CLUSTER_VERSION})
_HEALTHY = (200, TEXT_PLAIN, b'{"health":"true"}')
_UNHEALTHY = text_error(503, '{"health":"false"}')
_HEX_ID = re.compile(r"[0-9a-fA-F]{1,16}")
_HEALTH_READ = encode_request(OP_QGET, "/")
HEALTH_READ_TIMEOUT_S = 1.0


# ---------------------------------------------------------------------------------------------
# Path cleaning (ServeMux): 301 to the cleaned path, query kept

def clean_path(path: str) -> str:
    """Go's ``cleanPath``: ``path.Clean`` of a rooted path, keeping one trailing slash."""
    if not path:
        return "/"
    if path[0] != "/":
        path = "/" + path
    parts: list[str] = []
    for part in path.split("/"):
        if part in ("", "."):
            continue
        if part == "..":
            if parts:
                parts.pop()
            continue
        parts.append(part)
    cleaned = "/" + "/".join(parts)
    if path.endswith("/") and cleaned != "/":
        cleaned += "/"
    return cleaned


_PATH_SAFE = frozenset(b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.~$&+,/:;=@")
_HTML_ESCAPES = {"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&#34;", "'": "&#39;"}


def _escape_path(path: str) -> str:
    """``url.URL.EscapedPath`` for a decoded path."""
    raw = path.encode("utf-8", "surrogateescape")
    return "".join(chr(b) if b in _PATH_SAFE else f"%{b:02X}" for b in raw)


def redirect(req: Request, cleaned: str) -> Response:
    """ServeMux's 301; GET and HEAD also get Go's small HTML body."""
    location = _escape_path(cleaned)
    if req.query:
        location += "?" + req.query.decode("latin-1")
    headers = b"Location: " + location.encode("latin-1") + b"\r\n"
    if req.method not in (b"GET", b"HEAD"):
        return 301, headers, b""
    html = "".join(_HTML_ESCAPES.get(c, c) for c in location)
    body = f'<a href="{html}">Moved Permanently</a>.\n\n'.encode("latin-1")
    return 301, b"Content-Type: text/html; charset=utf-8\r\n" + headers, body


# ---------------------------------------------------------------------------------------------
# Small endpoints

def handle_version(app: App, req: Request, conn: HttpProtocol) -> Response:
    if req.method != b"GET":
        return method_not_allowed(b"GET")
    return 200, JSON, _VERSION_BODY


def handle_health(app: App, req: Request, conn: HttpProtocol) -> Response | Coroutine[Any, Any, Response]:
    """etcd's check: a leader (else 503 at once), then a quorum read of the root through the
    log that must finish within a second (it advances the raft index and counts as a get)."""
    if req.method != b"GET":
        return method_not_allowed(b"GET")
    if not app.node.is_healthy():
        return _UNHEALTHY
    return _health_read(app)


async def _health_read(app: App) -> Response:
    try:
        await asyncio.wait_for(app.node.propose(_HEALTH_READ), HEALTH_READ_TIMEOUT_S)
    except Exception:  # timed out, or the proposal failed
        return _UNHEALTHY
    return _HEALTHY


def machines_body(members: list[Any]) -> bytes:
    """``/v2/machines``: every member's client URLs, sorted, joined by ``", "``."""
    return ", ".join(sorted(url for m in members for url in m.client_urls)).encode()


def handle_machines(app: App, req: Request, conn: HttpProtocol) -> Response:
    if req.method not in (b"GET", b"HEAD"):
        return method_not_allowed(b"GET,HEAD")
    return 200, TEXT_PLAIN, machines_body(app.node.members())


def handle_metrics(app: App, req: Request, conn: HttpProtocol) -> Response:
    """Prometheus text; like etcd's handler it answers every method."""
    refresh_metrics(app.node)
    return 200, b"Content-Type: " + metrics.CONTENT_TYPE + b"\r\n", metrics.render()


_STORE_WRITE_STATS = {"setsSuccess": "set", "updateSuccess": "update", "createSuccess": "create",
                      "compareAndSwapSuccess": "compareAndSwap", "deleteSuccess": "delete",
                      "compareAndDeleteSuccess": "compareAndDelete"}


def refresh_metrics(node: Any) -> None:
    """Bring the mirrored metrics up to date from the node and the store's own statistics."""
    metrics.has_leader.set(1 if node.leader_id else 0)
    metrics.is_leader.set(1 if node.state == "StateLeader" else 0)
    metrics.proposals_committed.set_total(node.commit_index)
    watchers = node.hub.count
    metrics.store_watchers.set(watchers)
    stats = json.loads(node.store.stats_body(watchers))
    for name, action in _STORE_WRITE_STATS.items():
        metrics.store_writes.set_total(stats.get(name, 0), action)
    metrics.store_reads.set_total(stats.get("getsSuccess", 0), "get")
    metrics.store_expires.set_total(stats.get("expireCount", 0))


# ---------------------------------------------------------------------------------------------
# Stats

def rfc3339nano(ns: int) -> str:
    """Go's ``time.RFC3339Nano`` in UTC: fractional zeros trimmed."""
    seconds, frac = divmod(ns, 1_000_000_000)
    text = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds))
    if frac:
        text += "." + f"{frac:09d}".rstrip("0")
    return text + "Z"


def go_duration(ns: int) -> str:
    """Go's ``time.Duration.String``: ``3m13.402079542s``, ``1.5ms``, ``0s``."""
    if ns == 0:
        return "0s"
    sign, ns = ("-", -ns) if ns < 0 else ("", ns)
    if ns < 1_000_000_000:
        for unit, size in (("ms", 1_000_000), ("µs", 1_000), ("ns", 1)):
            if ns >= size:
                return sign + _decimal(ns, size) + unit
    hours, rest = divmod(ns, 3_600_000_000_000)
    minutes, rest = divmod(rest, 60_000_000_000)
    text = f"{hours}h{minutes}m" if hours else (f"{minutes}m" if minutes else "")
    return sign + text + _decimal(rest, 1_000_000_000) + "s"


def _decimal(value: int, unit: int) -> str:
    whole, frac = divmod(value, unit)
    if not frac:
        return str(whole)
    width = len(str(unit)) - 1
    return f"{whole}.{frac:0{width}d}".rstrip("0")


def _hex(member_id: int) -> str:
    return f"{member_id:x}"


def handle_stats_self(app: App, req: Request, conn: HttpProtocol) -> Response:
    if req.method != b"GET":
        return method_not_allowed(b"GET")
    node = app.node
    leader_since = node.leader_since_ns
    stats: dict[str, Any] = {
        "name": node.name, "id": _hex(node.member_id), "state": node.state,
        "startTime": rfc3339nano(node.start_time_ns),
        "leaderInfo": {"leader": _hex(node.leader_id),
                       "uptime": go_duration(time.time_ns() - leader_since if leader_since else 0),
                       "startTime": rfc3339nano(leader_since)},
        "recvAppendRequestCnt": node.recv_append_count, "sendAppendRequestCnt": node.send_append_count,
    }
    return 200, JSON, gojson.dumps(stats)


def handle_stats_store(app: App, req: Request, conn: HttpProtocol) -> Response:
    if req.method != b"GET":
        return method_not_allowed(b"GET")
    return 200, JSON, app.node.store.stats_body(app.node.hub.count)


_ZERO_FOLLOWER = {"latency": {"current": 0, "average": 0, "standardDeviation": 0, "minimum": 0, "maximum": 0},
                  "counts": {"fail": 0, "success": 0}}


def handle_stats_leader(app: App, req: Request, conn: HttpProtocol) -> Response:
    if req.method != b"GET":
        return method_not_allowed(b"GET")
    node = app.node
    if node.state != "StateLeader":
        return app.json_message(403, "not current leader")
    leader_stats = getattr(node, "leader_stats", None)
    if leader_stats is not None:
        return 200, JSON, gojson.dumps(leader_stats())
    followers = {_hex(m.id): _ZERO_FOLLOWER for m in node.members() if m.id != node.member_id}
    return 200, JSON, gojson.dumps({"leader": _hex(node.member_id), "followers": followers})


# ---------------------------------------------------------------------------------------------
# Members

def member_json(member: Any) -> dict[str, Any]:
    """One member as etcd's ``httptypes.Member``."""
    return {"id": _hex(member.id), "name": member.name, "peerURLs": list(member.peer_urls),
            "clientURLs": list(member.client_urls)}


class _BadRequest(Exception):
    """A member request answered with ``{"message": ...}`` and ``status``."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def _json_type(value: Any) -> str:
    if isinstance(value, str):
        return "string"
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int | float):
        return "number"
    return "object" if isinstance(value, dict) else "array"


def _check_url(url: str) -> None:
    """``types.NewURLs`` checks for one URL."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise _BadRequest(400, f"parse {gojson.dumps(url).decode()}: {exc}") from None
    if parts.scheme not in ("http", "https", "unix", "unixs"):
        raise _BadRequest(400, f"URL scheme must be http, https, unix, or unixs: {url}")
    if port is None and not parts.netloc.endswith(":"):
        raise _BadRequest(400, f'URL address does not have the form "host:port": {url}')
    if parts.path:
        raise _BadRequest(400, f"URL must not contain a path: {url}")


_GO_SYNTAX = (("Expecting property name", "looking for beginning of object key string"),
              ("Expecting ':'", "after object key"),
              ("Expecting ','", "after object key:value pair" ),
              ("Extra data", "after top-level value"))


def _go_json_error(exc: json.JSONDecodeError, text: str) -> str:
    """Go's ``encoding/json`` syntax error text for what Python's decoder reported."""
    if exc.pos >= len(text.rstrip()):
        return "unexpected end of JSON input"
    context = next((go for py, go in _GO_SYNTAX if exc.msg.startswith(py)), "looking for beginning of value")
    if context == "after object key:value pair" and text.lstrip().startswith("["):
        context = "after array element"
    return f"invalid character {text[exc.pos]!r} {context}"


def peer_urls_from(req: Request) -> list[str]:
    """The ``peerURLs`` of a member POST/PUT body, validated as etcd validates them, sorted."""
    content_type = (req.content_type or b"").decode("latin-1")
    if ";" in content_type:
        content_type = content_type.split(";", 1)[0].strip().lower()
    if content_type != "application/json":
        raise _BadRequest(415, f"Bad Content-Type {content_type}, accept application/json")
    text = req.body.decode("utf-8", "replace")
    if not text.strip():
        raise _BadRequest(400, "unexpected end of JSON input")
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise _BadRequest(400, _go_json_error(exc, text)) from None
    urls = data.get("peerURLs") if isinstance(data, dict) else None
    if not isinstance(data, dict | type(None)):
        raise _BadRequest(400, f"json: cannot unmarshal {_json_type(data)} into Go value of type struct "
                               '{ PeerURLs []string "json:\\"peerURLs\\"" }')
    if urls is not None and not isinstance(urls, list):
        raise _BadRequest(400, f"json: cannot unmarshal {_json_type(urls)} into Go struct field "
                               ".peerURLs of type []string")
    for url in urls or ():
        if not isinstance(url, str):
            raise _BadRequest(400, f"json: cannot unmarshal {_json_type(url)} into Go struct field "
                                   ".peerURLs of type string")
    if not urls:
        raise _BadRequest(400, "no valid URLs given")
    for url in urls:
        _check_url(url)
    return sorted(urls)


def _member_id(app: App, suffix: str) -> int:
    if not suffix:
        raise _BadRequest(405, "")
    if not _HEX_ID.fullmatch(suffix):
        raise _BadRequest(404, f"No such member: {suffix}")
    return int(suffix, 16)


def handle_members(app: App, req: Request, conn: HttpProtocol) -> Any:
    """``/v2/members[/<id>|/leader]``: GET, POST, PUT and DELETE as etcd 3.4 answers them."""
    method = req.method
    if method not in (b"GET", b"POST", b"DELETE", b"PUT"):
        return method_not_allowed(b"GET,POST,DELETE,PUT")
    if method != b"GET":
        app.node.store.auth_enabled()  # etcd's root access check reads the store before anything else
    suffix = req.path[len(MEMBERS_PREFIX):].removeprefix("/")
    try:
        if method == b"GET":
            return _members_get(app, suffix)
        if method == b"POST":
            return _members_change(app, app.node.add_member(peer_urls_from(req)), created=True)
        member_id = _member_id(app, suffix)
        if method == b"DELETE":
            return _members_change(app, app.node.remove_member(member_id), created=False)
        return _members_change(app, app.node.update_member(member_id, peer_urls_from(req)), created=False)
    except _BadRequest as exc:
        if exc.status == 405:
            return text_error(405, "Method Not Allowed", app.cluster_header())
        return app.json_message(exc.status, exc.message)


def _members_get(app: App, suffix: str) -> Response:
    node = app.node
    if suffix == "":
        members = sorted(node.members(), key=lambda m: m.id)
        return 200, JSON + app.cluster_header(), gojson.dumps({"members": [member_json(m) for m in members]},
                                                              newline=True)
    if suffix == "leader":
        leader = next((m for m in node.members() if node.leader_id and m.id == node.leader_id), None)
        if leader is None:
            return app.json_message(503, "During election")
        return 200, JSON + app.cluster_header(), gojson.dumps(member_json(leader), newline=True)
    return app.json_message(404, "Not found")


async def _members_change(app: App, change: Coroutine[Any, Any, Any], created: bool) -> Response:
    """Await a membership change: 201 with the new member, or 204; etcd's error answers."""
    try:
        member = await change
    except Exception as exc:  # MembershipError(status, message) carries etcd's answer
        status, message = getattr(exc, "status", None), getattr(exc, "message", None)
        if isinstance(status, int) and isinstance(message, str):
            return app.json_message(status, message)
        return app.json_message(500, "Internal Server Error")
    if created:
        return 201, JSON + app.cluster_header(), gojson.dumps(member_json(member), newline=True)
    return 204, app.cluster_header(), b""


# ---------------------------------------------------------------------------------------------
# Routing

_EXACT: dict[str, Handler] = {
    KEYS_PREFIX: handle_keys,
    MEMBERS_PREFIX: handle_members,
    "/version": handle_version,
    "/health": handle_health,
    "/metrics": handle_metrics,
    "/v2/machines": handle_machines,
    "/v2/stats/self": handle_stats_self,
    "/v2/stats/store": handle_stats_store,
    "/v2/stats/leader": handle_stats_leader,
}
_SUBTREES: tuple[tuple[str, Handler], ...] = ((KEYS_PREFIX + "/", handle_keys),
                                              (MEMBERS_PREFIX + "/", handle_members))


def _not_found(app: App, req: Request, conn: HttpProtocol) -> Response:
    return NOT_FOUND


def route(path: str) -> Handler:
    """The handler ServeMux would pick for a clean ``path``."""
    handler = _EXACT.get(path)
    if handler is not None:
        return handler
    for prefix, subtree_handler in _SUBTREES:
        if path.startswith(prefix):
            return subtree_handler
    return _not_found


def dispatch(app: App, req: Request, conn: HttpProtocol) -> Any:
    """Answer one request: a ``Response``, a coroutine producing one, ``WATCHING`` or None."""
    if req.method == b"OPTIONS":
        return _OPTIONS_OK
    path = req.path
    if "//" in path or "/." in path:
        cleaned = clean_path(path)
        if cleaned != path:
            return redirect(req, cleaned)
    return route(path)(app, req, conn)
