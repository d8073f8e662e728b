"""etcd's discovery protocol: bootstrap a new cluster through a v2 keys directory.

``--discovery <url>`` names a directory on any etcd v2 server (a "token", e.g.
``http://host:2379/v2/keys/_etcd/registry/<token>``) whose hidden key ``_config/size``
holds the wanted cluster size N. Each new member then, exactly as etcd 3.4 does:

1. checks the cluster: reads the size, lists the directory (ordered by ``createdIndex``)
   and stops with "cluster is full" when N other members registered first;
2. registers itself: ``PUT <url>/<member id hex>?prevExist=false`` with the value
   ``name=peerURL[,name=peerURL2...]`` ("found duplicate id" when the key exists), then
   confirms the write with a ``waitIndex`` read of its own key;
3. checks the cluster again and waits, with recursive ``waitIndex`` watches, until N
   members registered;
4. joins the values of the first N registrations (in registration order) with ``,``:
   that is its ``--initial-cluster``. Two members with one name -> "found duplicate name".

Connection failures while checking or waiting are retried forever with exponential
backoff (2, 4, 8 ... 256 s, then 256 s, as etcd 3.4 does; the unit is injectable).
As in etcd, the cluster created this way uses the discovery URL as its cluster token, so
every member computes the same member and cluster ids.

Every failure is a :class:`DiscoveryError`; its text is what etcd prints inside
``failed to join discovery cluster (...)``. :func:`explain` writes etcd's messages for one.
"""

from __future__ import annotations

import dataclasses
import json
import posixpath
import re
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from fastkv.cli import parse_initial_cluster
from fastkv.identity import hex_id, member_id
from fastkv.settings import Settings

#: ``log(level, package, message)``, the shape of ``fastkv.cli.Log.line`` (levels I, N, W, E, C).
LogFn = Callable[[str, str, str], None]

#: Timeout of every request that is not a watch (the Go client's DefaultRequestTimeout).
REQUEST_TIMEOUT_S = 5.0
#: The backoff doubles up to 2**MAX_BACKOFF_EXPONENT units and stays there.
MAX_BACKOFF_EXPONENT = 8

_ERROR_NODE_EXIST = 105
_GO_INT = re.compile(r"[+-]?[0-9]+")


def _quiet(level: str, package: str, message: str) -> None:
    """A :data:`LogFn` that drops everything."""


# ---------------------------------------------------------------------------------------
# Errors, with etcd's texts


class DiscoveryError(Exception):
    """Discovery failed; ``str(err)`` is etcd's text for the cause."""

    text = "discovery: failed"

    def __init__(self, text: str | None = None) -> None:
        super().__init__(text or self.text)


class BadSizeKey(DiscoveryError):
    """``_config/size`` is not an integer."""

    text = "discovery: size key is bad"


class ClusterFull(DiscoveryError):
    """N other members registered before this one."""

    text = "discovery: cluster is full"


class DuplicateID(DiscoveryError):
    """This member id is registered already (an earlier bootstrap of this member)."""

    text = "discovery: found duplicate id"


class DuplicateName(DiscoveryError):
    """Two of the first N registrations carry the same member name."""

    text = "discovery: found duplicate name"


class InvalidURL(DiscoveryError):
    """A registration is not a valid ``name=peerURL`` list."""

    text = "discovery: invalid URL"


class BadEndpoint(DiscoveryError):
    """The size key's answer is not an etcd v2 answer (the URL is not a keys directory)."""

    text = "discovery: bad discovery endpoint"


class InvalidJSON(DiscoveryError):
    """An answer other than the size key's could not be read as etcd's JSON."""

    text = "client: response is invalid json. The endpoint is probably not valid etcd cluster endpoint."


class DeadlineExceeded(DiscoveryError):
    """A request other than a watch took longer than :data:`REQUEST_TIMEOUT_S`."""

    text = "context deadline exceeded"


class ServiceError(DiscoveryError):
    """The discovery service answered with an etcd error, printed as etcd's Go client prints it.

    A missing size key (or token directory) ends here too: etcd 3.4 means to say
    ``discovery: size key not found`` but prints the service's ``100: Key not found`` error.
    """

    def __init__(self, code: int, message: str, cause: str, index: int) -> None:
        super().__init__(f"{code}: {message} ({cause}) [{index}]")
        self.code = code


class Unreachable(DiscoveryError):
    """The service could not be reached (refused, reset, 5xx): retried where etcd retries."""

    def __init__(self, detail: str) -> None:
        super().__init__(f"client: etcd cluster is unavailable or misconfigured; error #0: {detail}")
        self.detail = f"error #0: {detail}"


class DuplicateURL(DiscoveryError):
    """Two members of the discovered cluster share a peer URL (etcd: fatal, not a join error)."""


class SrvNotSupported(DiscoveryError):
    """``--discovery-srv`` needs DNS SRV lookups, which fastkv does not make."""

    text = ("--discovery-srv (DNS SRV discovery) is not supported by fastkv; "
            "use --discovery or --initial-cluster")


# ---------------------------------------------------------------------------------------
# The v2 keys client the protocol needs


@dataclass(frozen=True)
class Node:
    """One node of a v2 answer."""

    key: str
    value: str
    created_index: int
    modified_index: int

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Node:
        return cls(str(data.get("key", "")), str(data.get("value", "")),
                   int(data.get("createdIndex", 0)), int(data.get("modifiedIndex", 0)))


@dataclass(frozen=True)
class Answer:
    """A successful v2 answer: its node, child nodes and ``X-Etcd-Index``."""

    node: Node
    children: tuple[Node, ...]
    index: int


class KeysClient:
    """The few v2 keys requests discovery makes, against ``scheme://host[:port]``.

    Raises :class:`Unreachable` for connection failures and 5xx answers,
    :class:`DeadlineExceeded` when a non-watch request times out, :class:`ServiceError`
    for etcd errors and :class:`InvalidJSON` for anything else.
    """

    def __init__(self, endpoint: str, proxy: str = "") -> None:
        self.endpoint = endpoint
        handler = urllib.request.ProxyHandler({"http": proxy, "https": proxy} if proxy else {})
        self._opener = urllib.request.build_opener(handler)

    def get(self, path: str, **params: str) -> Answer:
        return self._call("GET", path, params, None)

    def create(self, path: str, value: str) -> Answer:
        """``PUT path?prevExist=false`` with ``value`` as a form field."""
        body = urllib.parse.urlencode({"value": value}).encode()
        return self._call("PUT", path, {"prevExist": "false"}, body)

    def _url(self, path: str, params: dict[str, str]) -> str:
        url = self.endpoint + urllib.parse.quote(posixpath.normpath("/" + path.lstrip("/")))
        return url + ("?" + urllib.parse.urlencode(params) if params else "")

    def _call(self, method: str, path: str, params: dict[str, str], body: bytes | None) -> Answer:
        request = urllib.request.Request(self._url(path, params), data=body, method=method)
        if body is not None:
            request.add_header("Content-Type", "application/x-www-form-urlencoded")
        timeout = None if params.get("wait") == "true" else REQUEST_TIMEOUT_S
        while True:
            status, index, raw = self._send(request, timeout)
            if status // 100 == 5:
                raise Unreachable(f"client: etcd member {self.endpoint} returns server error [{status}]")
            if raw or status // 100 != 2 or timeout is not None:
                return _answer(status, index, raw)
            # an empty 2xx body is a watch the server ended without an event: ask again

    def _send(self, request: urllib.request.Request, timeout: float | None) -> tuple[int, int, bytes]:
        try:
            with self._opener.open(request, timeout=timeout) as response:
                return response.status, _index(response.headers), response.read()
        except urllib.error.HTTPError as err:
            with err:
                return err.code, _index(err.headers), err.read()
        except TimeoutError:
            raise DeadlineExceeded() from None
        except urllib.error.URLError as err:
            if isinstance(err.reason, TimeoutError):
                raise DeadlineExceeded() from None
            raise Unreachable(_dial_error(self.endpoint, err.reason)) from None
        except OSError as err:
            raise Unreachable(_dial_error(self.endpoint, err)) from None


def _index(headers: Any) -> int:
    try:
        return int(headers.get("X-Etcd-Index", "0"))
    except ValueError:
        return 0


def _dial_error(endpoint: str, reason: object) -> str:
    host = urllib.parse.urlsplit(endpoint).netloc
    if isinstance(reason, OSError) and reason.strerror:
        return f"dial tcp {host}: connect: {reason.strerror.lower()}"
    return f"dial tcp {host}: {reason}"


def _answer(status: int, index: int, raw: bytes) -> Answer:
    """Decode a v2 answer; an etcd error body becomes :class:`ServiceError`."""
    try:
        data = json.loads(raw)
        if status // 100 != 2:
            raise ServiceError(int(data["errorCode"]), str(data.get("message", "")),
                               str(data.get("cause", "")), int(data.get("index", 0)))
        node = data["node"]
        children = tuple(Node.from_json(child) for child in node.get("nodes") or ())
        return Answer(Node.from_json(node), children, index)
    except (ValueError, KeyError, TypeError, AttributeError):
        raise InvalidJSON() from None


# ---------------------------------------------------------------------------------------
# The protocol


def registration_value(name: str, peer_urls: Sequence[str]) -> str:
    """What a member registers: ``name=url`` for each peer URL, sorted, comma-joined."""
    return ",".join(sorted(f"{name}={url}" for url in peer_urls))


def backoff_seconds(retry: int, unit: float = 1.0) -> float:
    """The wait before retry number ``retry`` (1-based): 2, 4, 8 ... 256 units, then 256."""
    return unit * (1 << min(retry, MAX_BACKOFF_EXPONENT))


def go_duration(seconds: float) -> str:
    """``seconds`` as Go prints a ``time.Duration`` (``2s``, ``4m16s``, ``500ms``)."""
    if seconds < 1:
        return f"{seconds * 1000:g}ms"
    minutes, rest = divmod(seconds, 60)
    hours, minutes = divmod(int(minutes), 60)
    text = f"{rest:g}s"
    if minutes or hours:
        text = f"{minutes}m{text}"
    return f"{hours}h{text}" if hours else text


def is_full(nodes: Sequence[Node], self_key: str, size: int) -> bool:
    """Whether ``size`` other members come before this one in registration order."""
    for position, node in enumerate(nodes):
        if posixpath.basename(node.key) == posixpath.basename(self_key):
            return False
        if position >= size - 1:
            return True
    return False


def cluster_text(nodes: Sequence[Node], size: int) -> str:
    """The ``--initial-cluster`` the first ``size`` registrations describe.

    Raises :class:`InvalidURL` for a malformed registration, :class:`DuplicateName` when
    they do not name ``size`` distinct members, :class:`DuplicateURL` when two members
    share a peer URL.
    """
    text = ",".join(node.value for node in nodes)
    try:
        members = parse_initial_cluster(text)
    except ValueError:
        raise InvalidURL() from None
    if len(members) != size:
        raise DuplicateName()
    urls = [url for _, member_urls in members for url in member_urls]
    if len(set(urls)) != len(urls):
        listed = ",".join(sorted(f"{name}={url}" for name, member_urls in members for url in member_urls))
        raise DuplicateURL(f"discovery cluster {listed} has duplicate url")
    return text


class Discovery:
    """One member's run of the protocol against the token directory at ``url``.

    ``sleep`` and ``backoff_unit`` (seconds) are injectable so that the retry schedule can
    be checked without waiting.
    """

    def __init__(self, url: str, own_id: int, *, proxy: str = "", log: LogFn = _quiet,
                 sleep: Callable[[float], None] = time.sleep, backoff_unit: float = 1.0) -> None:
        parts = urllib.parse.urlsplit(url)
        self.endpoint = f"{parts.scheme}://{parts.netloc}"
        self.token = parts.path
        self.self_key = posixpath.join("/", self.token, hex_id(own_id))
        self.log = log
        self.sleep = sleep
        self.backoff_unit = backoff_unit
        self.retries = 0
        self.client = KeysClient(self.endpoint, _proxy_url(proxy, log))

    def join(self, registration: str) -> str:
        """Register ``registration`` (see :func:`registration_value`) and return the cluster text."""
        self.check()
        self.register(registration)
        nodes, size, index = self.check()
        return cluster_text(self.wait(nodes, size, index), size)

    def register(self, registration: str) -> None:
        """Create this member's key, then read it back through a watch."""
        try:
            created = self.client.create(self.self_key, registration)
        except ServiceError as err:
            if err.code == _ERROR_NODE_EXIST:
                raise DuplicateID() from None
            raise
        self.client.get(self.self_key, wait="true", waitIndex=str(created.node.created_index))

    def check(self) -> tuple[list[Node], int, int]:
        """Size, registrations in order and the listing's index; retries unreachable services.

        Raises :class:`ClusterFull` when N other members registered first.
        """
        while True:
            try:
                return self._check_once()
            except Unreachable as err:
                self._backoff("cluster status check", err)

    def _check_once(self) -> tuple[list[Node], int, int]:
        try:
            size_text = self.client.get(posixpath.join(self.token, "_config", "size")).node.value
        except InvalidJSON:
            raise BadEndpoint() from None
        if not _GO_INT.fullmatch(size_text):
            raise BadSizeKey()
        size = int(size_text)
        listing = self.client.get(self.token)
        nodes = sorted((n for n in listing.children if posixpath.basename(n.key) != "_config"),
                       key=lambda n: n.created_index)
        if is_full(nodes, self.self_key, size):
            raise ClusterFull()
        return nodes, size, listing.index

    def wait(self, nodes: list[Node], size: int, index: int) -> list[Node]:
        """Watch the token directory from ``index + 1`` until ``size`` members registered."""
        while True:
            try:
                return self._wait_once(nodes, size, index)
            except Unreachable as err:
                self._backoff("waiting for other nodes", err)
                nodes, size, index = self.check()

    def _wait_once(self, nodes: list[Node], size: int, index: int) -> list[Node]:
        found = nodes[:size]
        for node in found:
            if posixpath.basename(node.key) == posixpath.basename(self.self_key):
                self.log("N", "discovery", f"found self {posixpath.basename(self.self_key)} in the cluster")
            else:
                self.log("N", "discovery", f"found peer {posixpath.basename(node.key)} in the cluster")
        next_index = index + 1
        while len(found) < size:
            self.log("N", "discovery", f"found {len(found)} peer(s), waiting for {size - len(found)} more")
            event = self.client.get(self.token, wait="true", recursive="true", waitIndex=str(next_index))
            next_index = event.node.modified_index + 1
            self.log("N", "discovery", f"found peer {posixpath.basename(event.node.key)} in the cluster")
            found.append(event.node)
        self.log("N", "discovery", f"found {len(found)} needed peer(s)")
        return found

    def _backoff(self, step: str, err: Unreachable) -> None:
        self.retries += 1
        delay = backoff_seconds(self.retries, self.backoff_unit)
        self.log("E", "discovery", err.detail)
        self.log("I", "discovery",
                 f"{step}: error connecting to {self.endpoint}, retrying in {go_duration(delay)}")
        self.sleep(delay)


def _proxy_url(proxy: str, log: LogFn) -> str:
    """``--discovery-proxy`` as a URL (``host:port`` gets ``http://``), logged as etcd logs it."""
    if not proxy:
        return ""
    url = proxy if urllib.parse.urlsplit(proxy).scheme.startswith("http") else "http://" + proxy
    log("I", "discovery", f'using proxy "{url}"')
    return url


# ---------------------------------------------------------------------------------------
# The member's side: Settings in, Settings with the discovered cluster out


def bootstrap(settings: Settings, log: LogFn = _quiet, *, sleep: Callable[[float], None] = time.sleep,
              backoff_unit: float = 1.0) -> Settings:
    """Run discovery for a member with a new data directory; ``settings`` with its initial cluster.

    The member registers its name and ``initial_advertise_peer_urls`` under its id,
    computed (as etcd does) with the discovery URL as the cluster token. Raises
    :class:`DiscoveryError` (see :func:`explain`).
    """
    if settings.discovery_srv and not settings.discovery:
        raise SrvNotSupported()
    token = settings.discovery
    own_id = member_id(settings.initial_advertise_peer_urls, token)
    log("I", "embed", f"discovery URL= {token}")
    run = Discovery(token, own_id, proxy=settings.discovery_proxy, log=log, sleep=sleep,
                    backoff_unit=backoff_unit)
    text = run.join(registration_value(settings.name, settings.initial_advertise_peer_urls))
    return dataclasses.replace(settings, initial_cluster=parse_initial_cluster(text),
                               initial_cluster_token=token)


def explain(err: DiscoveryError, settings: Settings, log: LogFn) -> None:
    """Write etcd's messages for a failed discovery (the member then exits with 1).

    A full cluster with ``--discovery-fallback=proxy`` would make etcd run as a v2 proxy;
    fastkv has no proxy mode, so it says so and exits instead.
    """
    durl = settings.discovery
    if isinstance(err, DuplicateID):
        log("E", "etcdmain", f'member "{settings.name}" has previously registered with discovery '
                             f"service token ({durl}).")
        log("E", "etcdmain", "But etcd could not find valid cluster configuration in the given data dir "
                             f"({settings.data_dir}).")
        log("I", "etcdmain", "Please check the given data dir path if the previous bootstrap succeeded")
        log("I", "etcdmain", "or use a new discovery token if the previous bootstrap failed.")
    elif isinstance(err, DuplicateName):
        log("E", "etcdmain",
            f"member with duplicated name has registered with discovery service token({durl}).")
        log("E", "etcdmain", "please check (cURL) the discovery token for more information.")
        log("E", "etcdmain", "please do not reuse the discovery token and generate a new one to bootstrap "
                             "the cluster.")
    elif isinstance(err, SrvNotSupported | DuplicateURL):
        prefix = "error setting up initial cluster: " if isinstance(err, SrvNotSupported) else ""
        log("C", "etcdmain", f"{prefix}{err}")
    elif isinstance(err, ClusterFull) and settings.discovery_fallback == "proxy":
        log("E", "etcdmain", f"failed to join discovery cluster ({err})")
        log("E", "etcdmain", "discovery cluster full; fastkv cannot fall back to proxy as etcd does (it has "
                             "no proxy mode), so this member exits (--discovery-fallback=exit asks for that)")
    else:
        log("E", "etcdmain", f"failed to join discovery cluster ({err})")
        log("I", "etcdmain", f"discovery token {durl} was used, but failed to bootstrap the cluster.")
        log("I", "etcdmain", "please generate a new discovery token and try to bootstrap again.")
