"""An asyncio client for the etcd v2 keys API (``/v2/keys``), over plain asyncio streams.

One ``EtcdClient`` talks to one cluster through one or more endpoints (``http://host:port``). It keeps a
pool of keep-alive HTTP/1.1 connections per endpoint and fails over to the next endpoint when one cannot
be reached; the endpoint that answered last is tried first next time.

Contracts:

* Every operation returns an ``EtcdResult`` (the response's action, node, previous node and the
  ``X-Etcd-Index`` / ``X-Raft-*`` headers) or raises:

  - an ``EtcdError`` subclass named after etcd's error code (``EtcdKeyNotFound`` 100,
    ``EtcdCompareFailed`` 101, ``EtcdNotFile`` 102, ``EtcdNotDir`` 104, ``EtcdNodeExists`` 105,
    ``EtcdRootReadOnly`` 107, ``EtcdDirNotEmpty`` 108, ``EtcdUnauthorized`` 110, ``EtcdInvalidRequest``
    2xx, ``EtcdRaftInternal`` 300/301, ``EtcdEventIndexCleared`` 401) when etcd refused the request;
  - ``EtcdUnavailable`` (``EtcdTimeout`` for timeouts) when no endpoint gave an answer;
  - ``EtcdProtocolError`` when something that is not an etcd v2 server answered.

* Failover: a request that could not be sent (connection refused, reset before a byte of the answer
  on a fresh connection) moves on to the next endpoint. A request that was sent but got no answer
  moves on only when repeating it is harmless (reads, watches and unconditional sets); otherwise
  ``EtcdUnavailable`` is raised, and the write may or may not have happened.

* ``request_timeout`` bounds connecting plus receiving the whole answer of a normal request, and
  connecting plus receiving the headers of a watch (etcd sends a watch's headers at once); the wait for
  a watch's event is bounded only by the ``timeout`` given to ``watch``. ``get(..., timeout=...)``
  replaces ``request_timeout`` for that one read (big recursive reads on a busy cluster).

* TTLs are seconds; etcd counts whole seconds, so a fractional TTL is rounded up (never below 1).
"""

from __future__ import annotations

import asyncio
import base64
import json
import math
import ssl
from collections import deque
from collections.abc import AsyncGenerator, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar
from urllib.parse import quote, urlencode, urlsplit

from fleetd.http1 import ResponseError, client_ssl_context, framed, read_body, read_head

if TYPE_CHECKING:
    from fleetd.config import FleetConfig

DEFAULT_ENDPOINTS = ("http://127.0.0.1:2379",)
DEFAULT_REQUEST_TIMEOUT = 1.0
#: Idle keep-alive connections kept per endpoint; more are closed when returned.
MAX_IDLE_PER_ENDPOINT = 8

# ---------------------------------------------------------------------------------------------------
# Errors


class EtcdException(Exception):
    """Base of every error this module raises."""


class EtcdUnavailable(EtcdException):
    """No endpoint answered (connection refused, reset, or cut before the answer was complete)."""


class EtcdTimeout(EtcdUnavailable):
    """An endpoint did not answer within the request timeout."""


class EtcdProtocolError(EtcdException):
    """The answer was not an etcd v2 keys response (e.g. a 404 page: the v2 API is off)."""


class EtcdError(EtcdException):
    """etcd refused the request: ``{"errorCode","message","cause","index"}`` with its HTTP status.

    ``EtcdError.of`` picks the subclass for the code; codes without one give a plain ``EtcdError``.
    """

    codes: ClassVar[tuple[int, ...]] = ()

    def __init__(self, code: int, message: str, cause: str = "", index: int = 0, status: int = 0) -> None:
        super().__init__(f"{code}: {message}" + (f" ({cause})" if cause else "") + f" [{index}]")
        self.code = code
        self.message = message
        self.cause = cause
        self.index = index
        self.status = status

    @staticmethod
    def of(body: Mapping[str, Any], status: int = 0) -> EtcdError:
        """The typed error for an etcd error body."""
        code = int(body.get("errorCode", 0))
        cls = _ERRORS_BY_CODE.get(code, EtcdError)
        return cls(code, str(body.get("message", "")), str(body.get("cause", "") or ""),
                   int(body.get("index", 0) or 0), status)


class EtcdKeyNotFound(EtcdError):
    """100: the key (or a directory on its path) does not exist; ``cause`` is the first missing path."""

    codes = (100,)


class EtcdCompareFailed(EtcdError):
    """101: ``prevValue``/``prevIndex`` did not match; ``cause`` shows both sides."""

    codes = (101,)


class EtcdNotFile(EtcdError):
    """102: a file operation on a directory."""

    codes = (102,)


class EtcdNotDir(EtcdError):
    """104: a path component is a file."""

    codes = (104,)


class EtcdNodeExists(EtcdError):
    """105: create (``prevExist=false``) of an existing key."""

    codes = (105,)


class EtcdRootReadOnly(EtcdError):
    """107: a write to ``/``."""

    codes = (107,)


class EtcdDirNotEmpty(EtcdError):
    """108: a non-recursive delete of a non-empty directory."""

    codes = (108,)


class EtcdUnauthorized(EtcdError):
    """110: authentication is on and the credentials are missing or insufficient."""

    codes = (110,)


class EtcdInvalidRequest(EtcdError):
    """2xx: a parameter was malformed (bad TTL, bad index, empty prevValue, refresh misuse, ...)."""

    codes = tuple(range(200, 213))


class EtcdRaftInternal(EtcdError):
    """300/301: the cluster could not commit the request (no quorum, leader election)."""

    codes = (300, 301)


class EtcdEventIndexCleared(EtcdError):
    """401: the watched index fell out of etcd's event history window; re-read and watch from
    ``X-Etcd-Index + 1`` (``watch_forever`` does this)."""

    codes = (401,)


_ERRORS_BY_CODE: dict[int, type[EtcdError]] = {
    code: cls for cls in EtcdError.__subclasses__() for code in cls.codes}

# ---------------------------------------------------------------------------------------------------
# Results


@dataclass(frozen=True, slots=True)
class EtcdResult:
    """One answer of the keys API.

    ``node``/``prev_node`` are etcd's JSON nodes (``key``, ``value``, ``dir``, ``nodes``, ``ttl``,
    ``expiration``, ``modifiedIndex``, ``createdIndex``); ``node`` is None only for the re-read of a
    missing key (see ``EtcdClient.watch_forever``). ``etcd_index`` is ``X-Etcd-Index``: the store's index
    after a read or write, the index when a watch started.
    """

    action: str
    node: Mapping[str, Any] | None
    prev_node: Mapping[str, Any] | None = None
    etcd_index: int = 0
    raft_index: int = 0
    raft_term: int = 0

    @property
    def key(self) -> str:
        return str((self.node or {}).get("key", "/"))

    @property
    def value(self) -> str | None:
        """The value of a file node; None for a directory or no node."""
        node = self.node or {}
        return None if node.get("dir") or "value" not in node else str(node["value"])

    @property
    def dir(self) -> bool:
        return bool((self.node or {}).get("dir"))

    @property
    def modified_index(self) -> int:
        return int((self.node or {}).get("modifiedIndex", 0))

    @property
    def created_index(self) -> int:
        return int((self.node or {}).get("createdIndex", 0))

    @property
    def ttl(self) -> int | None:
        """Seconds left before expiry, None for a permanent node."""
        ttl = (self.node or {}).get("ttl")
        return None if ttl is None and "expiration" not in (self.node or {}) else int(ttl or 0)

    @property
    def children(self) -> list[Mapping[str, Any]]:
        """The listed children of a directory node (empty for files)."""
        return list((self.node or {}).get("nodes") or [])

    def leaves(self) -> Iterator[Mapping[str, Any]]:
        """Every file node in the returned tree, depth first."""
        stack = [self.node] if self.node else []
        while stack:
            node = stack.pop()
            if node.get("dir"):
                stack.extend(reversed(node.get("nodes") or []))
            else:
                yield node


# ---------------------------------------------------------------------------------------------------
# HTTP/1.1 over asyncio streams


@dataclass(frozen=True, slots=True)
class Endpoint:
    """One client URL of the cluster."""

    url: str
    host: str
    port: int
    tls: bool

    @staticmethod
    def parse(url: str) -> Endpoint:
        """``http://host:port`` or ``https://host:port`` (default ports 80/443; a bare ``host:port``
        means http). Raises ``ValueError`` otherwise."""
        url = url.strip().rstrip("/")
        parts = urlsplit(url if "://" in url else "http://" + url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not an etcd endpoint URL: {url!r}")
        tls = parts.scheme == "https"
        port = parts.port or (443 if tls else 80)
        return Endpoint(f"{parts.scheme}://{parts.netloc}", parts.hostname, port, tls)


class _NotSent(Exception):
    """The request certainly did not reach the server (connect failed, stale keep-alive connection)."""

    timed_out = False


class _NoAnswer(Exception):
    """The request was sent but no complete answer came back."""

    def __init__(self, text: str, timed_out: bool = False) -> None:
        super().__init__(text)
        self.timed_out = timed_out


@dataclass(slots=True, eq=False)
class _Connection:
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    reused: bool = False

    def usable(self) -> bool:
        return not (self.writer.is_closing() or self.reader.at_eof())

    def close(self) -> None:
        self.writer.close()


@dataclass(slots=True)
class _Response:
    status: int
    headers: dict[str, str]
    body: bytes
    keep_alive: bool


@dataclass(frozen=True, slots=True)
class _Request:
    method: str
    target: str
    body: bytes = b""
    repeatable: bool = True
    watch: bool = False
    #: Seconds for this request instead of the client's ``request_timeout`` (None: the client's).
    timeout: float | None = None


class _Pool:
    """Idle keep-alive connections of one endpoint, and every connection it opened (to close them)."""

    def __init__(self, endpoint: Endpoint, ssl_context: ssl.SSLContext | None) -> None:
        self.endpoint = endpoint
        self.ssl_context = ssl_context
        self.idle: deque[_Connection] = deque()
        self.open: set[_Connection] = set()

    async def acquire(self) -> _Connection:
        """A live idle connection, else a new one (raises ``_NotSent`` if connecting fails)."""
        while self.idle:
            conn = self.idle.pop()
            if conn.usable():
                conn.reused = True
                return conn
            self.discard(conn)
        ep = self.endpoint
        try:
            reader, writer = await asyncio.open_connection(
                ep.host, ep.port, ssl=(self.ssl_context or ssl.create_default_context()) if ep.tls else None)
        except (OSError, ssl.SSLError) as err:
            raise _NotSent(f"cannot connect: {err}") from None
        conn = _Connection(reader, writer)
        self.open.add(conn)
        return conn

    def release(self, conn: _Connection) -> None:
        """Return a connection whose last answer was read completely."""
        if conn.usable() and len(self.idle) < MAX_IDLE_PER_ENDPOINT:
            self.idle.append(conn)
        else:
            self.discard(conn)

    def discard(self, conn: _Connection) -> None:
        conn.close()
        self.open.discard(conn)

    def close_idle(self) -> None:
        while self.idle:
            self.discard(self.idle.pop())

    def close(self) -> None:
        for conn in list(self.open):
            self.discard(conn)
        self.idle.clear()


# ---------------------------------------------------------------------------------------------------
# The client


def _ttl_param(ttl: float) -> str:
    """etcd's whole-second TTL: rounded up, at least 1."""
    return str(max(1, math.ceil(ttl)))


def _bool(flag: bool) -> str:
    return "true" if flag else "false"


@dataclass
class EtcdClient:
    """An etcd v2 client over one or more endpoints of the same cluster.

    Use as ``async with EtcdClient([...]) as client:`` or call ``close()``; one client serves any number
    of concurrent requests on one event loop.
    """

    endpoints: Sequence[str] | str = DEFAULT_ENDPOINTS
    request_timeout: float = DEFAULT_REQUEST_TIMEOUT
    username: str = ""
    password: str = ""
    ssl_context: ssl.SSLContext | None = None
    _endpoints: list[Endpoint] = field(init=False, repr=False)
    _pools: dict[Endpoint, _Pool] = field(init=False, repr=False)
    _preferred: int = field(init=False, default=0, repr=False)
    _auth: str = field(init=False, default="", repr=False)

    def __post_init__(self) -> None:
        urls = self.endpoints.split(",") if isinstance(self.endpoints, str) else list(self.endpoints)
        self._endpoints = [Endpoint.parse(u) for u in urls if u.strip()]
        if not self._endpoints:
            raise ValueError("no etcd endpoint given")
        self._pools = {ep: _Pool(ep, self.ssl_context) for ep in self._endpoints}
        if self.username:
            token = base64.b64encode(f"{self.username}:{self.password}".encode()).decode()
            self._auth = f"Authorization: Basic {token}\r\n"

    @classmethod
    def from_config(cls, config: FleetConfig) -> EtcdClient:
        """A client for fleetd's ``etcd_*`` settings (servers, timeout, basic auth, TLS files)."""
        context = client_ssl_context(config.etcd_cafile, config.etcd_certfile, config.etcd_keyfile)
        return cls(config.etcd_servers, config.etcd_request_timeout, config.etcd_username,
                   config.etcd_password, context)

    async def __aenter__(self) -> EtcdClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        """Close every connection; requests in flight fail with ``EtcdUnavailable``."""
        for pool in self._pools.values():
            pool.close()
        await asyncio.sleep(0)

    @property
    def current_endpoint(self) -> str:
        """The endpoint tried first by the next request (the last one that answered)."""
        return self._endpoints[self._preferred].url

    # -- reads -----------------------------------------------------------------------------------------

    async def get(self, key: str, *, recursive: bool = False, sort: bool = False,
                  quorum: bool = False, timeout: float | None = None) -> EtcdResult:
        """Read a key or a directory (``recursive``: the whole subtree; ``sort``: children by key;
        ``quorum``: linearizable, through raft). ``timeout`` (seconds) replaces ``request_timeout``
        for this read only (None: the client's). Raises ``EtcdKeyNotFound`` when absent."""
        params = {"recursive": recursive, "sorted": sort, "quorum": quorum}
        return await self._keys("GET", key, {k: _bool(v) for k, v in params.items() if v}, timeout=timeout)

    # -- writes ----------------------------------------------------------------------------------------

    async def set(self, key: str, value: str = "", *, ttl: float | None = None, directory: bool = False,
                  prev_exist: bool | None = None, prev_value: str | None = None,
                  prev_index: int | None = None, refresh: bool = False) -> EtcdResult:
        """PUT a key with any of etcd's preconditions (see ``create``, ``update``, ``compare_and_swap``).

        ``ttl`` None makes the key permanent (clears an existing TTL); ``prev_exist`` False = create
        (``EtcdNodeExists``), True = update (``EtcdKeyNotFound``); ``prev_value``/``prev_index`` = compare
        and swap (``EtcdCompareFailed``); ``refresh`` resets the TTL without a value or watch event.
        """
        params: dict[str, str] = {}
        if not refresh and not directory:
            params["value"] = value
        if directory:
            params["dir"] = "true"
        if ttl is not None:
            params["ttl"] = _ttl_param(ttl)
        if prev_exist is not None:
            params["prevExist"] = _bool(prev_exist)
        if prev_value is not None:
            params["prevValue"] = prev_value
        if prev_index is not None:
            params["prevIndex"] = str(prev_index)
        if refresh:
            params["refresh"] = "true"
        repeatable = prev_exist is None and prev_value is None and prev_index is None
        return await self._keys("PUT", key, params, repeatable=repeatable)

    async def create(self, key: str, value: str = "", *, ttl: float | None = None,
                     directory: bool = False) -> EtcdResult:
        """Create a key that must not exist yet (``EtcdNodeExists`` otherwise)."""
        return await self.set(key, value, ttl=ttl, directory=directory, prev_exist=False)

    async def update(self, key: str, value: str = "", *, ttl: float | None = None) -> EtcdResult:
        """Change an existing key (``EtcdKeyNotFound`` otherwise); keeps ``createdIndex``."""
        return await self.set(key, value, ttl=ttl, prev_exist=True)

    async def compare_and_swap(self, key: str, value: str, *, prev_value: str | None = None,
                               prev_index: int | None = None, ttl: float | None = None) -> EtcdResult:
        """Set ``key`` only if its value is ``prev_value`` and/or its modifiedIndex is ``prev_index``."""
        if prev_value is None and prev_index is None:
            raise ValueError("compare_and_swap needs prev_value or prev_index")
        return await self.set(key, value, ttl=ttl, prev_value=prev_value, prev_index=prev_index)

    async def refresh(self, key: str, ttl: float) -> EtcdResult:
        """Reset an existing key's TTL, keeping its value and waking no watcher (``EtcdKeyNotFound``)."""
        return await self.set(key, ttl=ttl, prev_exist=True, refresh=True)

    async def delete(self, key: str, *, recursive: bool = False, directory: bool = False,
                     prev_value: str | None = None, prev_index: int | None = None) -> EtcdResult:
        """Delete a key; ``directory`` allows an empty directory, ``recursive`` any directory;
        ``prev_value``/``prev_index`` make it a compare-and-delete (files only)."""
        params: dict[str, str] = {}
        if recursive:
            params["recursive"] = "true"
        if directory:
            params["dir"] = "true"
        if prev_value is not None:
            params["prevValue"] = prev_value
        if prev_index is not None:
            params["prevIndex"] = str(prev_index)
        return await self._keys("DELETE", key, params, repeatable=False)

    async def compare_and_delete(self, key: str, *, prev_value: str | None = None,
                                 prev_index: int | None = None) -> EtcdResult:
        """Delete ``key`` only if it still has ``prev_value`` and/or ``prev_index``."""
        if prev_value is None and prev_index is None:
            raise ValueError("compare_and_delete needs prev_value or prev_index")
        return await self.delete(key, prev_value=prev_value, prev_index=prev_index)

    # -- watches ---------------------------------------------------------------------------------------

    async def watch(self, key: str, *, recursive: bool = False, wait_index: int | None = None,
                    timeout: float | None = None) -> EtcdResult:
        """Long-poll for the first event on ``key`` (and below it with ``recursive``) whose index is at
        least ``wait_index`` (None/0: the next event). Returns at once if history already holds one.

        Raises ``EtcdEventIndexCleared`` when ``wait_index`` is older than etcd's history window,
        ``TimeoutError`` when ``timeout`` seconds pass without an event. A watch the server ends without
        an event is simply repeated.
        """
        params = {"wait": "true"}
        if recursive:
            params["recursive"] = "true"
        if wait_index:
            params["waitIndex"] = str(wait_index)
        async with asyncio.timeout(timeout):
            while True:
                result = await self._keys("GET", key, params, watch=True)
                if result.node is not None:
                    return result

    async def watch_forever(self, key: str, *, recursive: bool = False, wait_index: int | None = None,
                            retry_delay: float = 1.0) -> AsyncGenerator[EtcdResult, None]:
        """Every event on ``key`` from ``wait_index`` on, in index order, resuming at ``modifiedIndex + 1``.

        Start from a read's ``etcd_index + 1`` to miss nothing after it. When etcd's history no longer
        holds the next index (error 401), the key is read again and that read is yielded (action
        ``get``; ``node`` None if the key is gone) before watching from its ``X-Etcd-Index + 1``: treat
        it as "anything may have changed". While no endpoint answers, it retries every ``retry_delay``
        seconds. Other errors end the iteration by raising.
        """
        index = wait_index or 0
        while True:
            try:
                event = await self.watch(key, recursive=recursive, wait_index=index)
            except EtcdEventIndexCleared:
                event = await self._reread(key, recursive)
                index = event.etcd_index + 1
            except EtcdUnavailable:
                await asyncio.sleep(retry_delay)
                continue
            else:
                index = event.modified_index + 1
            yield event

    async def _reread(self, key: str, recursive: bool) -> EtcdResult:
        try:
            return await self.get(key, recursive=recursive, sort=True)
        except EtcdKeyNotFound as err:
            return EtcdResult("get", None, etcd_index=err.index)

    # -- transport -------------------------------------------------------------------------------------

    async def _keys(self, method: str, key: str, params: Mapping[str, str], *, repeatable: bool = True,
                    watch: bool = False, timeout: float | None = None) -> EtcdResult:
        """One keys-API request; ``timeout`` None uses ``request_timeout``."""
        path = "/v2/keys" + quote("/" + key.lstrip("/"), safe="/")
        if method == "PUT":
            request = _Request(method, path, urlencode(params).encode(), repeatable, watch, timeout)
        else:
            target = path + ("?" + urlencode(params) if params else "")
            request = _Request(method, target, b"", repeatable or method == "GET", watch, timeout)
        response = await self._send(request)
        return self._decode(response, watch)

    async def _send(self, request: _Request) -> _Response:
        """Send on the preferred endpoint, failing over as the module docstring says."""
        failures: list[_NotSent | _NoAnswer] = []
        count, first = len(self._endpoints), self._preferred
        for position in [(first + step) % count for step in range(count)]:
            endpoint = self._endpoints[position]
            try:
                response = await self._send_to(self._pools[endpoint], request)
            except (_NotSent, _NoAnswer) as err:
                err.args = (f"{endpoint.url}: {err}",)
                failures.append(err)
                if position == self._preferred:
                    self._preferred = (position + 1) % count
                if isinstance(err, _NoAnswer) and not request.repeatable:
                    raise self._unavailable(failures) from None
                continue
            self._preferred = position
            return response
        raise self._unavailable(failures)

    def _timeout(self, request: _Request) -> float:
        """The seconds ``request`` may take: its own timeout, else the client's ``request_timeout``."""
        return self.request_timeout if request.timeout is None else request.timeout

    @staticmethod
    def _unavailable(failures: Sequence[_NotSent | _NoAnswer]) -> EtcdUnavailable:
        text = "; ".join(str(f) for f in failures)
        cls = EtcdTimeout if failures and all(f.timed_out for f in failures) else EtcdUnavailable
        return cls(f"etcd unavailable: {text}")

    async def _send_to(self, pool: _Pool, request: _Request) -> _Response:
        """One exchange on ``pool``'s endpoint; a stale reused connection is replaced once."""
        for _ in range(2):
            try:
                async with asyncio.timeout(self._timeout(request)):
                    conn = await pool.acquire()
            except TimeoutError:
                raise _NotSent("timed out connecting") from None
            try:
                return await self._exchange(pool, conn, request)
            except _NotSent:
                pool.discard(conn)
                if not conn.reused:
                    raise
                pool.close_idle()  # the server closed them all (restart): reconnect once
            except BaseException:
                pool.discard(conn)
                raise
        raise _NotSent("connection closed")

    async def _exchange(self, pool: _Pool, conn: _Connection, request: _Request) -> _Response:
        endpoint = pool.endpoint
        head = (f"{request.method} {request.target} HTTP/1.1\r\nHost: {endpoint.host}:{endpoint.port}\r\n"
                f"Accept: application/json\r\n{self._auth}")
        if request.method == "PUT":
            head += (f"Content-Type: application/x-www-form-urlencoded\r\n"
                     f"Content-Length: {len(request.body)}\r\n")
        got_head = False
        try:
            async with asyncio.timeout(self._timeout(request)) as deadline:
                conn.writer.write(head.encode("latin-1") + b"\r\n" + request.body)
                await conn.writer.drain()
                status, headers, keep_alive = await read_head(conn.reader)
                got_head = True
                if request.watch:
                    deadline.reschedule(None)
                body, reusable = await read_body(conn.reader, headers), framed(headers)
        except TimeoutError:
            raise _NoAnswer("timed out", timed_out=True) from None
        except ResponseError as err:
            raise EtcdProtocolError(str(err)) from None
        except (OSError, EOFError, asyncio.IncompleteReadError) as err:
            if not got_head and conn.reused:
                raise _NotSent(f"stale connection: {err}") from None
            raise _NoAnswer(f"connection lost: {err or type(err).__name__}") from None
        if keep_alive and reusable:
            pool.release(conn)
        else:
            pool.discard(conn)
        return _Response(status, headers, body, keep_alive and reusable)

    @staticmethod
    def _decode(response: _Response, watch: bool) -> EtcdResult:
        headers = response.headers

        def header_int(name: str) -> int:
            try:
                return int(headers.get(name, "0"))
            except ValueError:
                return 0

        if watch and response.status == 200 and not response.body.strip():
            return EtcdResult("", None, etcd_index=header_int("x-etcd-index"))
        try:
            body = json.loads(response.body)
        except ValueError:
            body = None
        if not isinstance(body, dict):
            text = response.body[:200].decode("utf-8", "replace").strip()
            if response.status >= 500:
                raise EtcdUnavailable(f"etcd answered {response.status}: {text}")
            raise EtcdProtocolError(f"not an etcd v2 answer ({response.status}): {text}")
        if "errorCode" in body:
            raise EtcdError.of(body, response.status)
        return EtcdResult(str(body.get("action", "")), body.get("node"), body.get("prevNode"),
                          header_int("x-etcd-index"), header_int("x-raft-index"), header_int("x-raft-term"))

