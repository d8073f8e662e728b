"""The HTTP half of ``fastkvctl``: etcd's v2 client behaviour on ``http.client``.

Like etcd's Go client, a :class:`Client` first syncs (``GET /v2/members``, then uses the
members' client URLs), tries the endpoints in order, and reports a request that reached
no endpoint as a :class:`ClusterError` with one line per endpoint. ``--debug`` prints
each request as the equivalent ``curl`` command line on stderr.
"""

from __future__ import annotations

import base64
import http.client
import json
import posixpath
import re
import socket
import sys
import time
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, TextIO

from fastkv.gostrings import go_quote

#: Characters Go's URL path escaping leaves alone (besides letters and digits).
PATH_SAFE = "-_.~$&+,/:;=@"


class CtlError(Exception):
    """Any failure a command reports; ``str()`` is the text etcdctl shows."""


class ServerError(CtlError):
    """An etcd v2 error body (``{"errorCode": ...}``)."""

    def __init__(self, body: Mapping[str, Any]) -> None:
        self.code = int(body.get("errorCode", 0))
        self.message = str(body.get("message", ""))
        self.cause = str(body.get("cause", ""))
        self.index = int(body.get("index", 0))
        super().__init__(f"{self.code}: {self.message} ({self.cause}) [{self.index}]")


class MemberError(CtlError):
    """A members-API error body (``{"message": ...}``) or an unexpected status."""


@dataclass
class ClusterError(CtlError):
    """No endpoint answered; ``errors`` holds one text per endpoint tried."""

    errors: list[str]
    connection: bool = True

    def __str__(self) -> str:
        return "client: etcd cluster is unavailable or misconfigured" + "".join(
            f"; error #{i}: {e}\n" for i, e in enumerate(self.errors)
        )

    def detail(self) -> str:
        return "".join(f"error #{i}: {e}\n" for i, e in enumerate(self.errors))


@dataclass
class Response:
    """One HTTP answer: status, the headers etcdctl uses, and the decoded JSON body (if any)."""

    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body) if self.body.strip() else None

    @property
    def etcd_index(self) -> int:
        return int(self.headers.get("x-etcd-index", "0") or 0)


def canonical_key_path(key: str) -> str:
    """``/v2/keys`` + key as the Go client builds it: cleaned, trailing slash kept."""
    raw = "/v2/keys" + ("" if key.startswith("/") else "/") + key
    cleaned = posixpath.normpath(re.sub("/+", "/", raw))
    if raw.endswith("/") and not cleaned.endswith("/"):
        cleaned += "/"
    return urllib.parse.quote(cleaned, safe=PATH_SAFE)


def encode_form(params: Mapping[str, str]) -> str:
    """Go's ``url.Values.Encode``: sorted names, ``+`` for spaces."""
    return "&".join(
        f"{urllib.parse.quote_plus(k, safe='')}={urllib.parse.quote_plus(v, safe='')}"
        for k, v in sorted(params.items())
    )


def describe_os_error(host: str, port: int, err: OSError) -> str:
    """An OS error as Go's dialer words it (``dial tcp 127.0.0.1:1: connect: connection refused``)."""
    if isinstance(err, ConnectionRefusedError):
        reason = "connect: connection refused"
    elif isinstance(err, socket.timeout | TimeoutError):
        reason = "i/o timeout"
    elif isinstance(err, socket.gaierror):
        reason = f"lookup {host}: no such host"
    else:
        reason = (err.strerror or str(err)).lower()
    return f"dial tcp {host}:{port}: {reason}"


@dataclass
class Client:
    """Endpoints plus the global options that shape every request."""

    endpoints: list[str]
    timeout: float = 2.0
    total_timeout: float = 5.0
    debug: bool = False
    username: str = ""
    password: str = ""
    err: TextIO = field(default_factory=lambda: sys.stderr)

    # -- requests -------------------------------------------------------------------

    def request(
        self,
        method: str,
        path: str,
        query: Mapping[str, str] | None = None,
        body: str | None = None,
        content_type: str = "application/x-www-form-urlencoded",
        wait: bool = False,
    ) -> Response:
        """Send to the first endpoint that accepts a connection; raises :class:`ClusterError`."""
        target = path + (f"?{encode_form(query)}" if query else "")
        errors: list[str] = []
        connection_only = True
        deadline = None if wait else time.monotonic() + self.total_timeout
        for endpoint in self.endpoints:
            if self.debug:
                line = f"cURL Command: curl -X {method} {endpoint}{target}"
                if body is not None:
                    line += f" -d {go_quote(body)}"
                self.err.write(line + "\n")
            try:
                return self._send(endpoint, method, target, body, content_type, wait, deadline)
            except _HeaderTimeout:
                errors.append(f"client: endpoint {endpoint} exceeded header timeout")
                connection_only = False
            except OSError as exc:
                parts = urllib.parse.urlsplit(endpoint)
                errors.append(describe_os_error(parts.hostname or "", parts.port or 80, exc))
        raise ClusterError(errors, connection_only)

    def _send(
        self,
        endpoint: str,
        method: str,
        target: str,
        body: str | None,
        content_type: str,
        wait: bool,
        deadline: float | None,
    ) -> Response:
        parts = urllib.parse.urlsplit(endpoint)
        timeout = None
        if not wait:
            assert deadline is not None
            timeout = max(0.001, min(self.timeout, deadline - time.monotonic()))
        conn = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port or 80, timeout=timeout)
        headers = {}
        if body is not None:
            headers["Content-Type"] = content_type
        if self.username:
            token = base64.b64encode(f"{self.username}:{self.password}".encode()).decode()
            headers["Authorization"] = f"Basic {token}"
        try:
            conn.connect()
        except OSError:
            conn.close()
            raise
        try:
            conn.request(
                method,
                parts.path.rstrip("/") + target,
                body=body.encode() if body is not None else None,
                headers=headers,
            )
            raw = conn.getresponse()
            data = raw.read()
        except TimeoutError:
            raise _HeaderTimeout() from None
        finally:
            conn.close()
        return Response(raw.status, {k.lower(): v for k, v in raw.getheaders()}, data)

    # -- cluster sync ---------------------------------------------------------------

    def sync(self) -> None:
        """Replace the endpoints by the client URLs the cluster publishes (``GET /v2/members``).

        Raises :class:`ClusterError` only when no endpoint could be reached; a cluster
        that publishes no client URL raises :class:`NoEndpoints`.
        """
        if self.debug:
            self.err.write(f"start to sync cluster using endpoints({','.join(self.endpoints)})\n")
        try:
            members = self.members()
        except ClusterError as exc:
            if exc.connection:
                raise
            members = None
        except CtlError:
            members = None
        if members is not None:
            urls = [u for m in members for u in m.get("clientURLs") or []]
            if not urls:
                raise NoEndpoints(self.endpoints)
            self.endpoints = urls
        if self.debug:
            self.err.write(f"got endpoints({','.join(self.endpoints)}) after sync\n")

    # -- members API ----------------------------------------------------------------

    def members(self) -> list[dict[str, Any]]:
        resp = self.request("GET", "/v2/members")
        if resp.status != 200:
            raise MemberError(f"unexpected status code {resp.status}")
        data = resp.json() or {}
        return list(data.get("members") or [])

    def leader(self) -> dict[str, Any]:
        resp = self.request("GET", "/v2/members/leader")
        if resp.status != 200:
            raise MemberError(_member_message(resp))
        return dict(resp.json() or {})

    def member_call(
        self, method: str, path: str, peer_urls: list[str] | None, ok: tuple[int, ...]
    ) -> Response:
        body = None if peer_urls is None else json.dumps({"peerURLs": peer_urls}, separators=(",", ":"))
        resp = self.request(method, path, body=body, content_type="application/json")
        if resp.status not in ok:
            raise MemberError(_member_message(resp))
        return resp


class NoEndpoints(CtlError):
    """The cluster answered but publishes no client URL."""

    def __init__(self, endpoints: list[str]) -> None:
        super().__init__("client: no endpoints available")
        self.endpoints = endpoints


class _HeaderTimeout(Exception):
    pass


def _member_message(resp: Response) -> str:
    try:
        data = resp.json()
    except ValueError:
        data = None
    if isinstance(data, dict) and "message" in data:
        return str(data["message"])
    return f"unexpected status code {resp.status}"
