"""How fleetctl talks to the cluster: the API's requests over HTTP (``--driver=API``) or answered in
process by the API's own code over the registry (``--driver=etcd``), so both drivers behave alike.

``FleetClient`` offers the calls fleetctl makes, returning the API's JSON objects (``Unit``,
``UnitState``, ``Machine``). A non-2xx answer raises ``ClientError`` with fleet's text
``googleapi: Error <code>: <message>``; a server that cannot be reached raises ``ClientError`` too.
"""

from __future__ import annotations

import asyncio
import json
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, unquote, urlencode, urlsplit

from fleetd.api.resources import ApiRequest, FleetApi
from fleetd.etcd import EtcdClient, EtcdException
from fleetd.http1 import ResponseError, body_chunks, read_head
from fleetd.registry.layout import Layout
from fleetd.registry.registry import Registry

USER_AGENT = "google-api-go-client/0.5"
API_BASE = "/fleet/v1"


class ClientError(Exception):
    """A request failed; ``str()`` is what fleetctl prints. ``status`` is the HTTP status (0 if none)."""

    def __init__(self, message: str, status: int = 0) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class Answer:
    """A response: status and body."""

    status: int
    body: bytes


Transport = Callable[[str, str, str, bytes], Awaitable[Answer]]


# ---------------------------------------------------------------------------------------------------
# HTTP


@dataclass(frozen=True)
class HttpEndpoint:
    """Where an API answers: ``http(s)://host:port`` or ``unix:///path``."""

    scheme: str
    host: str = ""
    port: int = 0
    path: str = ""

    @staticmethod
    def parse(url: str) -> HttpEndpoint:
        """Parse one endpoint URL; ``ClientError`` when it cannot be used."""
        parts = urlsplit(url.strip())
        if parts.scheme == "unix":
            if parts.netloc or not parts.path.startswith("/"):
                raise ClientError(f"unable to use endpoint {url}: unix socket path must be absolute "
                                  "(unix:///path)")
            return HttpEndpoint("unix", path=parts.path)
        if parts.scheme in ("http", "https") and parts.hostname:
            default = 443 if parts.scheme == "https" else 80
            return HttpEndpoint(parts.scheme, parts.hostname, parts.port or default)
        raise ClientError(f"unable to use endpoint {url}: unsupported scheme or missing host")

    @property
    def host_header(self) -> str:
        return "domain-sock" if self.scheme == "unix" else f"{self.host}:{self.port}"


async def _open(endpoint: HttpEndpoint, context: ssl.SSLContext | None,
                timeout: float) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    try:
        async with asyncio.timeout(timeout):
            if endpoint.scheme == "unix":
                return await asyncio.open_unix_connection(endpoint.path)
            return await asyncio.open_connection(
                endpoint.host, endpoint.port, ssl=(context or ssl.create_default_context())
                if endpoint.scheme == "https" else None)
    except (OSError, TimeoutError) as err:
        where = endpoint.path or f"{endpoint.host}:{endpoint.port}"
        reason = getattr(err, "strerror", None) or err or "timeout"
        raise ClientError(f"unable to connect to {where}: {reason}") from None


class HttpTransport:
    """One request per connection to an API endpoint, as fleet's client: ``?alt=json`` and its User-Agent."""

    def __init__(self, endpoint: HttpEndpoint, timeout: float = 10.0, context: ssl.SSLContext | None = None,
                 debug: Callable[[str], None] | None = None) -> None:
        self.endpoint = endpoint
        self.timeout = timeout
        self.context = context
        self.debug = debug

    def _request_bytes(self, method: str, path: str, query: str, body: bytes) -> bytes:
        target = path + "?" + (query + "&" if query else "") + "alt=json"
        if self.debug:
            base = "http://domain-sock" if self.endpoint.scheme == "unix" else \
                f"{self.endpoint.scheme}://{self.endpoint.host_header}"
            self.debug(f"HTTP {method} {base}{target}")
        head = [f"{method} {target} HTTP/1.1", f"Host: {self.endpoint.host_header}",
                f"User-Agent: {USER_AGENT}", "Connection: close", f"Content-Length: {len(body)}"]
        if body:
            head.append("Content-Type: application/json")
        return ("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + body

    async def stream(self, method: str, path: str, query: str = "",
                     body: bytes = b"") -> tuple[int, AsyncIterator[bytes]]:
        """Send a request; return its status and its body as it arrives (no timeout on the body)."""
        reader, writer = await _open(self.endpoint, self.context, self.timeout)
        writer.write(self._request_bytes(method, path, query, body))
        try:
            async with asyncio.timeout(self.timeout):
                status, headers, _ = await read_head(reader)
        except (OSError, TimeoutError, EOFError, ResponseError) as err:
            writer.close()
            raise ClientError(f"request to the fleet API failed: {err or 'timeout'}") from None

        async def chunks() -> AsyncIterator[bytes]:
            try:
                async for chunk in body_chunks(reader, headers):
                    yield chunk
            finally:
                writer.close()
        return status, chunks()

    async def __call__(self, method: str, path: str, query: str, body: bytes) -> Answer:
        status, chunks = await self.stream(method, path, query, body)
        try:
            async with asyncio.timeout(self.timeout):
                data = b"".join([chunk async for chunk in chunks])
        except (OSError, TimeoutError, EOFError, ResponseError) as err:
            raise ClientError(f"request to the fleet API failed: {err or 'timeout'}") from None
        return Answer(status, data)


class LocalTransport:
    """The API's logic run in process over the registry (``--driver=etcd``)."""

    def __init__(self, registry: Registry, token_limit: int = 100) -> None:
        self.api = FleetApi(registry, "", self._available, token_limit)

    @staticmethod
    async def _available() -> bool:
        return True

    async def __call__(self, method: str, path: str, query: str, body: bytes) -> Answer:
        headers = (("content-type", "application/json"),) if body else ()
        response = await self.api.handle(ApiRequest(method, unquote(path), query, headers, body))
        return Answer(response.status, response.body)


# ---------------------------------------------------------------------------------------------------
# The calls


def _quote(name: str) -> str:
    return quote(name, safe="")


class FleetClient:
    """fleetctl's view of the cluster through a transport (see the module docstring)."""

    def __init__(self, transport: Transport, close: Callable[[], Awaitable[None]] | None = None) -> None:
        self.transport = transport
        self._close = close

    async def close(self) -> None:
        if self._close is not None:
            await self._close()

    async def _call(self, method: str, path: str, query: str = "", body: Any = None,
                    missing_ok: bool = False) -> Any:
        data = b"" if body is None else json.dumps(body, separators=(",", ":")).encode()
        try:
            answer = await self.transport(method, API_BASE + path, query, data)
        except EtcdException as err:
            raise ClientError(f"unable to reach etcd: {err}", 503) from None
        if answer.status == 404 and missing_ok:
            return None
        if not 200 <= answer.status < 300:
            raise ClientError(_error_text(answer), answer.status)
        return json.loads(answer.body) if answer.body.strip() else {}

    async def _pages(self, path: str, key: str, params: dict[str, str] | None = None) -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = []
        token = ""
        while True:
            query = dict(params or {})
            if token:
                query["nextPageToken"] = token
            page = await self._call("GET", path, urlencode(query))
            items += page.get(key, [])
            token = page.get("nextPageToken", "")
            if not token:
                return items

    async def units(self) -> list[dict[str, Any]]:
        """Every unit (``GET /units``, all pages)."""
        return await self._pages("/units", "units")

    async def unit(self, name: str) -> dict[str, Any] | None:
        """One unit, None if it does not exist."""
        return await self._call("GET", f"/units/{_quote(name)}", missing_ok=True)

    async def create_unit(self, name: str, options: list[dict[str, str]], desired: str = "") -> None:
        """Create or replace a unit (``PUT`` with options)."""
        body: dict[str, Any] = {"name": name, "options": options}
        if desired:
            body["desiredState"] = desired
        await self._call("PUT", f"/units/{_quote(name)}", body=body)

    async def set_desired_state(self, name: str, state: str) -> None:
        """Change a unit's desired state."""
        await self._call("PUT", f"/units/{_quote(name)}", body={"desiredState": state, "name": name})

    async def destroy_unit(self, name: str) -> bool:
        """Delete a unit; False if it did not exist."""
        return await self._call("DELETE", f"/units/{_quote(name)}", missing_ok=True) is not None

    async def unit_states(self) -> list[dict[str, Any]]:
        """Every published unit state (``GET /state``, all pages)."""
        return await self._pages("/state", "states")

    async def unit_state(self, name: str) -> dict[str, Any] | None:
        """The first published state of a unit, None if there is none."""
        return await self._call("GET", f"/state/{_quote(name)}", missing_ok=True)

    async def machines(self) -> list[dict[str, Any]]:
        """Every live machine."""
        return await self._pages("/machines", "machines")

    async def placement_reason(self, name: str) -> str | None:
        """Why the engine could not place the unit, None if it said nothing (or the API predates it)."""
        try:
            found = await self._call("GET", f"/ext/units/{_quote(name)}/placement", missing_ok=True)
        except ClientError:
            return None
        return str(found.get("reason") or "") or None if found else None

    async def api_urls(self, machine_id: str) -> list[str]:
        """Where the API of ``machine_id`` answers, ``[]`` if unknown."""
        found = await self._call("GET", f"/ext/machines/{_quote(machine_id)}/api", missing_ok=True)
        return [str(u) for u in found.get("urls", [])] if found else []


def _error_text(answer: Answer) -> str:
    try:
        error = json.loads(answer.body)["error"]
        return f"googleapi: Error {int(error['code'])}: {error.get('message', '')}"
    except (ValueError, KeyError, TypeError):
        text = answer.body.decode("utf-8", "replace").strip()
        return f"googleapi: got HTTP response code {answer.status} with body: {text}"


def api_client(endpoint: str, timeout: float, context: ssl.SSLContext | None = None,
               debug: Callable[[str], None] | None = None) -> FleetClient:
    """A client of the API at the first URL of ``endpoint`` (a comma list)."""
    first = endpoint.split(",")[0]
    return FleetClient(HttpTransport(HttpEndpoint.parse(first), timeout, context, debug))


def etcd_client(endpoints: str, prefix: str, timeout: float,
                context: ssl.SSLContext | None = None) -> FleetClient:
    """A client working on the registry in etcd (``--driver=etcd``)."""
    etcd = EtcdClient([e for e in endpoints.split(",") if e.strip()], timeout, ssl_context=context)
    return FleetClient(LocalTransport(Registry(etcd, Layout(prefix))), etcd.close)

