"""The HTTP front end without sockets: bytes in through ``data_received``, bytes out collected.

A small in-memory node runs the real compiled store and watch hub; writes go through
``store.apply`` as the log would apply them.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import httptools
import pytest

from fastkv._native.proposals import HEAD_SIZE, Proposals
from fastkv._native.store import Store, V2Error
from fastkv._native.watch import WatchHub
from fastkv.http.protocol import MAX_BODY_BYTES, ConnectionSet, HttpProtocol
from fastkv.http.responses import App
from fastkv.settings import Settings

CLUSTER_ID = 0xC8730D66636FF140
MEMBER_ID = 0x9E737FEBB6B99EEE


@dataclass
class Member:
    id: int
    name: str
    peer_urls: list[str]
    client_urls: list[str]


class MembershipError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass
class RaftStatus:
    """What the HTTP layer reads of the node's Raft core."""

    committed: int
    term: int


@dataclass
class FakeNode:
    """A single member whose log applies every proposal in the next loop pass: the node's own
    proposal queue (``Proposals``), with the batch applied when the queue kicks."""

    store: Store = field(default_factory=Store)
    raw: RaftStatus = field(default_factory=lambda: RaftStatus(committed=3, term=2))
    commit_index: int = 3
    cluster_id: int = CLUSTER_ID
    member_id: int = MEMBER_ID
    name: str = "a"
    state: str = "StateLeader"
    leader_id: int = MEMBER_ID
    start_time_ns: int = 1_700_000_000_123_456_789
    leader_since_ns: int = 1_700_000_001_000_000_000
    send_append_count: int = 0
    recv_append_count: int = 0
    healthy: bool = True
    fail_proposals: bool = False
    member_list: list[Member] = field(default_factory=lambda: [
        Member(MEMBER_ID, "a", ["http://127.0.0.1:2380"], ["http://127.0.0.1:2379"])])
    loop: asyncio.AbstractEventLoop | None = None  # the loop proposals settle on (else the running one)

    def __post_init__(self) -> None:
        self.hub = WatchHub(self.store.history)
        self.proposals = Proposals(1, time.time_ns, 5.0, self._kick)

    def _kick(self) -> None:
        (self.loop or asyncio.get_running_loop()).call_soon(self._apply_batch)

    @property
    def raft_index(self) -> int:
        return self.raw.committed

    @property
    def raft_term(self) -> int:
        return self.raw.term

    async def propose(self, request: bytes):  # type: ignore[no-untyped-def]
        return await self.submit_request(request)

    def submit_request(self, request: bytes, waiter: Any = None) -> Any:
        """As the node's: ``waiter`` (a new future when None) is settled once the batch applies."""
        future = waiter if waiter is not None else (self.loop or asyncio.get_running_loop()).create_future()
        return self.proposals.submit_request(request, future)

    def _apply_batch(self) -> None:
        """Commit and apply every proposal of the batch, in order, and settle its waiter."""
        for key, payload in self.proposals.take():
            waiter, _ = self.proposals.waiters.pop(key)
            outcome: Any
            if self.fail_proposals:
                outcome = TimeoutError("etcdserver: request timed out")
            else:
                self.raw.committed += 1
                try:
                    outcome = self.store.apply(payload[HEAD_SIZE:], time.time_ns())
                except V2Error as error:
                    outcome = error
                else:
                    if outcome.action != "get":
                        self.hub.notify(outcome)
            if waiter.done():
                continue
            if isinstance(outcome, BaseException):
                waiter.set_exception(outcome)
            else:
                waiter.set_result(outcome)

    def members(self) -> list[Member]:
        return list(self.member_list)

    def is_healthy(self) -> bool:
        return self.healthy

    async def add_member(self, peer_urls: list[str]) -> Member:
        if any(u in m.peer_urls for m in self.member_list for u in peer_urls):
            raise MembershipError(409, "membership: peerURL exists")
        member = Member(0x90F00E25D8B1B042, "", peer_urls, [])
        self.member_list.append(member)
        return member

    async def remove_member(self, member_id: int) -> None:
        if member_id not in [m.id for m in self.member_list]:
            raise MembershipError(404, f"No such member: {member_id:x}")
        self.member_list = [m for m in self.member_list if m.id != member_id]

    async def update_member(self, member_id: int, peer_urls: list[str]) -> None:
        raise MembershipError(404, f"No such member: {member_id:x}")


class FakeTransport:
    """Collects what the protocol writes."""

    def __init__(self) -> None:
        self.buffer = bytearray()
        self.closed = False
        self.reading = True

    def write(self, data: bytes) -> None:
        assert not self.closed, "write after close"
        self.buffer += data

    def close(self) -> None:
        self.closed = True

    abort = close

    def is_closing(self) -> bool:
        return self.closed

    def pause_reading(self) -> None:
        self.reading = False

    def resume_reading(self) -> None:
        self.reading = True

    def get_extra_info(self, name: str, default: object = None) -> object:
        return default

    def get_write_buffer_size(self) -> int:
        return 0


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes
    header_names: list[str]

    def json(self) -> dict:  # type: ignore[type-arg]
        return json.loads(self.body)


class _ReplyParser:
    def __init__(self) -> None:
        self.replies: list[Reply] = []
        self.parser = httptools.HttpResponseParser(self)
        self._headers: list[tuple[str, str]] = []
        self._body = b""

    def on_message_begin(self) -> None:
        self._headers, self._body = [], b""

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers.append((name.decode(), value.decode()))

    def on_body(self, body: bytes) -> None:
        self._body += body

    def on_message_complete(self) -> None:
        self.replies.append(Reply(self.parser.get_status_code(), dict(self._headers), self._body,
                                  [n for n, _ in self._headers]))


def parse_replies(data: bytes) -> list[Reply]:
    """Every complete response in ``data`` (HEAD responses excepted: see ``head``)."""
    p = _ReplyParser()
    p.parser.feed_data(bytes(data))
    return p.replies


class Client:
    """A protocol on a fake transport, with a loop to run the proposals it starts."""

    def __init__(self, node: FakeNode | None = None, settings: Settings | None = None) -> None:
        self.loop = asyncio.new_event_loop()
        self.node = node or FakeNode()
        self.node.loop = self.loop
        self.connections = ConnectionSet(self.loop)
        self.transport = FakeTransport()
        self.protocol = HttpProtocol(App(self.node, settings or Settings()), self.connections)
        self.protocol.connection_made(self.transport)  # type: ignore[arg-type]

    def feed(self, data: bytes) -> None:
        self.protocol.data_received(data)
        self.settle()

    def settle(self) -> None:
        for _ in range(5):
            self.loop.run_until_complete(asyncio.sleep(0))

    def take(self) -> bytes:
        data = bytes(self.transport.buffer)
        self.transport.buffer.clear()
        return data

    def request(self, method: str, target: str, body: bytes = b"", headers: dict[str, str] | None = None,
                form: bool = True) -> Reply:
        head = [f"{method} {target} HTTP/1.1", "Host: test"]
        if body and form:
            head.append("Content-Type: application/x-www-form-urlencoded")
        head += [f"{k}: {v}" for k, v in (headers or {}).items()]
        if body or method in ("PUT", "POST"):
            head.append(f"Content-Length: {len(body)}")
        self.feed(("\r\n".join(head) + "\r\n\r\n").encode() + body)
        replies = parse_replies(self.take())
        assert len(replies) == 1, replies
        return replies[0]

    def close(self) -> None:
        self.protocol.connection_lost(None)
        self.connections.close()
        self.loop.close()


@pytest.fixture
def client() -> Iterator[Client]:
    c = Client()
    yield c
    c.close()


def error(reply: Reply) -> tuple[int, int, str]:
    body = reply.json()
    return reply.status, body["errorCode"], body.get("cause", "")


# -- keys: reads and writes -------------------------------------------------------------------

def test_set_then_get_with_etcd_headers(client: Client) -> None:
    put = client.request("PUT", "/v2/keys/foo", b"value=bar")
    assert put.status == 201
    assert put.body == (b'{"action":"set","node":{"key":"/foo","value":"bar",'
                        b'"modifiedIndex":1,"createdIndex":1}}\n')
    assert put.headers["X-Etcd-Index"] == "1"
    get = client.request("GET", "/v2/keys/foo")
    assert get.status == 200
    assert get.json()["node"]["value"] == "bar"
    assert get.header_names == ["Access-Control-Allow-Headers", "Access-Control-Allow-Methods",
                                "Access-Control-Allow-Origin", "Content-Type", "X-Etcd-Cluster-Id",
                                "X-Etcd-Index", "X-Raft-Index", "X-Raft-Term", "Date", "Content-Length"]
    assert get.headers["Content-Type"] == "application/json"
    assert get.headers["X-Etcd-Cluster-Id"] == "c8730d66636ff140"
    assert get.headers["X-Raft-Index"] == str(client.node.raft_index)
    assert get.headers["X-Raft-Term"] == "2"
    assert get.headers["Access-Control-Allow-Origin"] == "*"
    assert get.headers["Content-Length"] == str(len(get.body))


def test_second_set_is_200_with_prev_node(client: Client) -> None:
    client.request("PUT", "/v2/keys/foo?value=a")
    again = client.request("PUT", "/v2/keys/foo?value=b")
    assert again.status == 200
    assert again.json()["prevNode"]["value"] == "a"


def test_body_value_wins_over_query(client: Client) -> None:
    reply = client.request("PUT", "/v2/keys/foo?value=fromquery", b"value=frombody")
    assert reply.json()["node"]["value"] == "frombody"


def test_bodies_ignored_unless_form_encoded_put_or_post(client: Client) -> None:
    json_body = client.request("PUT", "/v2/keys/j", b'{"value":"x"}', {"Content-Type": "application/json"},
                               form=False)
    assert json_body.json()["node"]["value"] == ""
    client.request("PUT", "/v2/keys/d", b"value=v")
    deleted = client.request("DELETE", "/v2/keys/d", b"prevValue=wrong")
    assert deleted.json()["action"] == "delete"


def test_operation_choice(client: Client) -> None:
    assert client.request("PUT", "/v2/keys/c?prevExist=false", b"value=1").json()["action"] == "create"
    assert error(client.request("PUT", "/v2/keys/c?prevExist=false", b"value=1"))[:2] == (412, 105)
    assert client.request("PUT", "/v2/keys/c?prevExist=true", b"value=2").json()["action"] == "update"
    cas = client.request("PUT", "/v2/keys/c?prevValue=2", b"value=3")
    assert cas.json()["action"] == "compareAndSwap"
    assert error(client.request("PUT", "/v2/keys/c?prevValue=zzz", b"value=4")) == (412, 101, "[zzz != 3]")
    assert client.request("PUT", "/v2/keys/c?prevIndex=0", b"value=5").json()["action"] == "set"
    posted = client.request("POST", "/v2/keys/q", b"value=job")
    assert posted.status == 201
    assert posted.json()["node"]["key"].startswith("/q/0000000000000000")
    cad = client.request("DELETE", "/v2/keys/c?prevValue=5")
    assert cad.json()["action"] == "compareAndDelete"


def test_no_value_on_success(client: Client) -> None:
    reply = client.request("PUT", "/v2/keys/n?noValueOnSuccess=true", b"value=x")
    assert (reply.status, reply.body) == (201, b'{"action":"set"}\n')
    deleted = client.request("DELETE", "/v2/keys/n?noValueOnSuccess=true")
    assert deleted.json()["node"]["key"] == "/n"


def test_ttl_sets_expiration(client: Client) -> None:
    node = client.request("PUT", "/v2/keys/t?ttl=5", b"value=x").json()["node"]
    assert node["ttl"] == 5
    assert node["expiration"].endswith("Z")


def test_store_error_headers(client: Client) -> None:
    reply = client.request("GET", "/v2/keys/missing")
    assert reply.status == 404
    assert reply.body == b'{"errorCode":100,"message":"Key not found","cause":"/missing","index":0}\n'
    assert "X-Raft-Index" not in reply.headers
    assert reply.headers["X-Etcd-Index"] == "0"
    assert reply.headers["X-Etcd-Cluster-Id"] == "c8730d66636ff140"


def test_root_and_trailing_slash(client: Client) -> None:
    assert client.request("GET", "/v2/keys").body == b'{"action":"get","node":{"dir":true}}\n'
    assert client.request("GET", "/v2/keys/").body == b'{"action":"get","node":{"dir":true}}\n'
    client.request("PUT", "/v2/keys/foo", b"value=1")
    assert client.request("GET", "/v2/keys/foo/").json()["node"]["key"] == "/foo"
    assert client.request("GET", "/v2/keys/enc%2Fslash").json()["errorCode"] == 100
    assert client.request("PUT", "/v2/keys/enc%2Fslash", b"value=1").json()["node"]["key"] == "/enc/slash"


def test_quorum_get_goes_through_the_log_even_with_wait(client: Client) -> None:
    client.request("PUT", "/v2/keys/foo", b"value=1")
    before = client.node.raft_index
    reply = client.request("GET", "/v2/keys/foo?quorum=true&wait=true")
    assert reply.json()["action"] == "get"
    assert client.node.raft_index == before + 1


def test_proposal_failure_is_error_300(client: Client) -> None:
    client.node.fail_proposals = True
    reply = client.request("PUT", "/v2/keys/foo", b"value=1")
    assert reply.status == 500
    assert reply.body == (b'{"errorCode":300,"message":"Raft Internal Error",'
                          b'"cause":"etcdserver: request timed out","index":0}\n')


# -- keys: validation in etcd's order ------------------------------------------------------------

@pytest.mark.parametrize(("query", "method", "expected"), [
    ("prevIndex=x&waitIndex=y&recursive=z", "GET", (203, 'invalid value for "prevIndex"')),
    ("waitIndex=-1&recursive=z", "GET", (203, 'invalid value for "waitIndex"')),
    ("recursive=&sorted=z", "GET", (209, 'invalid value for "recursive"')),
    ("sorted=yes&wait=z", "GET", (209, 'invalid value for "sorted"')),
    ("wait=2&dir=z", "GET", (209, 'invalid value for "wait"')),
    ("dir=z&quorum=z", "GET", (209, 'invalid value for "dir"')),
    ("quorum=z&stream=z", "GET", (209, 'invalid value for "quorum"')),
    ("stream=z&prevValue=", "GET", (209, 'invalid value for "stream"')),
    ("wait=true&prevValue=", "PUT", (209, '"wait" can only be used with GET requests')),
    ("wait=true", "HEAD", (209, '"wait" can only be used with GET requests')),
    ("prevValue=&noValueOnSuccess=z", "PUT", (201, '"prevValue" cannot be empty')),
    ("noValueOnSuccess=z&ttl=x", "PUT", (209, 'invalid value for "noValueOnSuccess"')),
    ("ttl=x&prevExist=z", "PUT", (202, 'invalid value for "ttl"')),
    ("ttl=-1", "PUT", (202, 'invalid value for "ttl"')),
    ("prevExist=z&refresh=z", "PUT", (209, "invalid value for prevExist")),
    ("refresh=z", "PUT", (209, "invalid value for refresh")),
    ("refresh=true&value=x&ttl=5", "PUT", (211, "A value was provided on a refresh")),
    ("refresh=true", "PUT", (212, "No TTL value set")),
    ("refresh=true&ttl=", "PUT", (212, "No TTL value set")),
    ("value=%zz", "GET", (210, 'invalid URL escape "%zz"')),
    ("x=%zz&a;b=1", "GET", (210, "invalid semicolon separator in query")),
])
def test_validation_errors_in_etcd_order(client: Client, query: str, method: str,
                                         expected: tuple[int, str]) -> None:
    raw = client.request(method, f"/v2/keys/foo?{query}") if method != "HEAD" else None
    if raw is None:
        client.feed(f"HEAD /v2/keys/foo?{query} HTTP/1.1\r\nHost: t\r\n\r\n".encode())
        head = client.take()
        assert head.startswith(b"HTTP/1.1 400 Bad Request\r\n")
        assert b"X-Etcd-Index: 0\r\n" in head and head.endswith(b"\r\n\r\n")
        return
    assert raw.status == 400
    body = raw.json()
    assert (body["errorCode"], body["cause"], body["index"]) == (*expected, 0)
    assert raw.headers["X-Etcd-Index"] == "0"


def test_empty_ttl_is_no_ttl(client: Client) -> None:
    node = client.request("PUT", "/v2/keys/foo?ttl=", b"value=x").json()["node"]
    assert "ttl" not in node


# -- generic HTTP --------------------------------------------------------------------------------

def test_head_has_get_headers_and_no_body(client: Client) -> None:
    client.request("PUT", "/v2/keys/foo", b"value=bar")
    get = client.request("GET", "/v2/keys/foo")
    client.feed(b"HEAD /v2/keys/foo HTTP/1.1\r\nHost: t\r\n\r\n")
    head = client.take()
    assert head.startswith(b"HTTP/1.1 200 OK\r\n")
    assert head.endswith(b"\r\n\r\n")
    assert f"Content-Length: {len(get.body)}\r\n".encode() in head
    assert b"X-Raft-Term: 2\r\n" in head


def test_options_any_path(client: Client) -> None:
    for target in ("/v2/keys/foo", "/nothing", "//x"):
        reply = client.request("OPTIONS", target)
        assert (reply.status, reply.body) == (200, b"")
        assert reply.headers["Content-Length"] == "0"
        assert reply.headers["Access-Control-Allow-Methods"] == "POST, GET, OPTIONS, PUT, DELETE"
        assert reply.headers["Access-Control-Allow-Headers"] == "accept, content-type, authorization"


def test_cors_with_an_origin_list() -> None:
    c = Client(settings=Settings(cors=("http://ok.example",)))
    try:
        allowed = c.request("GET", "/v2/keys/", headers={"Origin": "http://ok.example"})
        assert allowed.headers["Access-Control-Allow-Origin"] == "http://ok.example"
        other = c.request("GET", "/v2/keys/", headers={"Origin": "http://evil.example"})
        assert "Access-Control-Allow-Origin" not in other.headers
    finally:
        c.close()


@pytest.mark.parametrize(("method", "target", "location", "body"), [
    ("GET", "//foo", "/foo", b'<a href="/foo">Moved Permanently</a>.\n\n'),
    ("GET", "/v2/keys//foo?x=1&y=2", "/v2/keys/foo?x=1&y=2",
     b'<a href="/v2/keys/foo?x=1&amp;y=2">Moved Permanently</a>.\n\n'),
    ("GET", "/v2/keys/a/../b", "/v2/keys/b", b'<a href="/v2/keys/b">Moved Permanently</a>.\n\n'),
    ("GET", "/v2/keys/./b/", "/v2/keys/b/", b'<a href="/v2/keys/b/">Moved Permanently</a>.\n\n'),
    ("GET", "/v2/keys/a%2F%2Fb", "/v2/keys/a/b", b'<a href="/v2/keys/a/b">Moved Permanently</a>.\n\n'),
    ("PUT", "//foo?x=1", "/foo?x=1", b""),
])
def test_unclean_paths_redirect(client: Client, method: str, target: str, location: str, body: bytes) -> None:
    reply = client.request(method, target)
    assert reply.status == 301
    assert reply.headers["Location"] == location
    assert reply.body == body
    assert ("Content-Type" in reply.headers) == (method == "GET")


@pytest.mark.parametrize("target", ["/", "/v2/nothing", "/v2/keysfoo", "/version/", "/v2/stats/", "/v2/auth"])
def test_unknown_paths_404(client: Client, target: str) -> None:
    reply = client.request("GET", target)
    assert (reply.status, reply.body) == (404, b"404 page not found\n")
    assert reply.headers["Content-Type"] == "text/plain; charset=utf-8"
    assert reply.headers["X-Content-Type-Options"] == "nosniff"


@pytest.mark.parametrize(("method", "target", "allow"), [
    ("PATCH", "/v2/keys/x", "HEAD,GET,PUT,POST,DELETE"),
    ("POST", "/version", "GET"),
    ("POST", "/health", "GET"),
    ("POST", "/v2/machines", "GET,HEAD"),
    ("PUT", "/v2/stats/self", "GET"),
    ("DELETE", "/v2/stats/store", "GET"),
    ("HEAD", "/v2/members", "GET,POST,DELETE,PUT"),
])
def test_wrong_method_405(client: Client, method: str, target: str, allow: str) -> None:
    if method == "HEAD":
        client.feed(f"HEAD {target} HTTP/1.1\r\nHost: t\r\n\r\n".encode())
        head = client.take()
        assert head.startswith(b"HTTP/1.1 405 Method Not Allowed\r\n")
        assert f"Allow: {allow}\r\n".encode() in head
        return
    reply = client.request(method, target)
    assert (reply.status, reply.body) == (405, b"Method Not Allowed\n")
    assert reply.headers["Allow"] == allow
    assert "X-Etcd-Cluster-Id" not in reply.headers


def test_pipelined_requests_answered_in_order(client: Client) -> None:
    requests = b"".join(f"PUT /v2/keys/k{i}?value={i} HTTP/1.1\r\nHost: t\r\nContent-Length: 0\r\n\r\n"
                        f"GET /v2/keys/k{i} HTTP/1.1\r\nHost: t\r\n\r\n".encode() for i in range(5))
    client.feed(requests)
    replies = parse_replies(client.take())
    assert [r.status for r in replies] == [201, 200] * 5
    assert [r.json()["node"]["value"] for r in replies] == [str(i // 2) for i in range(10)]


def test_http10_closes_and_keep_alive(client: Client) -> None:
    client.feed(b"GET /v2/keys/ HTTP/1.0\r\n\r\n")
    data = client.take()
    assert data.startswith(b"HTTP/1.0 200 OK\r\n") and b"Connection" not in data
    assert client.transport.closed
    other = Client()
    try:
        other.feed(b"GET /v2/keys/ HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
        assert b"Connection: keep-alive\r\n" in other.take()
        assert not other.transport.closed
        other.feed(b"GET /v2/keys/ HTTP/1.1\r\nConnection: close\r\n\r\n")
        assert b"Connection: close\r\n" in other.take()
        assert other.transport.closed
    finally:
        other.close()


def test_malformed_request_is_go_400_and_close(client: Client) -> None:
    client.feed(b"GARBAGE\x00\x01 nonsense\r\n\r\n")
    assert client.take() == (b"HTTP/1.1 400 Bad Request\r\nContent-Type: text/plain; charset=utf-8\r\n"
                             b"Connection: close\r\n\r\n400 Bad Request")
    assert client.transport.closed


def test_missing_host_is_400(client: Client) -> None:
    client.feed(b"GET /v2/keys/ HTTP/1.1\r\n\r\n")
    assert client.take().startswith(b"HTTP/1.1 400 Bad Request: missing required Host header\r\n")
    assert client.transport.closed


def test_broken_path_escape_is_400(client: Client) -> None:
    client.feed(b"GET /v2/keys/a%zz HTTP/1.1\r\nHost: t\r\n\r\n")
    assert client.take().startswith(b"HTTP/1.1 400 Bad Request\r\n")
    assert client.transport.closed


def test_body_over_limit_is_413_after_earlier_answers(client: Client) -> None:
    client.feed(b"GET /v2/keys/ HTTP/1.1\r\nHost: t\r\n\r\n"
                b"PUT /v2/keys/big HTTP/1.1\r\nHost: t\r\nContent-Type: application/x-www-form-urlencoded\r\n"
                + f"Content-Length: {MAX_BODY_BYTES + 1}\r\n\r\nvalue=".encode())
    data = client.take()
    assert data.startswith(b"HTTP/1.1 200 OK\r\n")
    assert b"HTTP/1.1 413 Request Entity Too Large\r\n" in data
    assert client.transport.closed


def test_chunked_body_over_limit_is_413(client: Client) -> None:
    client.feed(b"PUT /v2/keys/big HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n")
    chunk = b"x" * 65536
    for _ in range(MAX_BODY_BYTES // len(chunk) + 2):
        client.feed(b"%x\r\n%b\r\n" % (len(chunk), chunk))
        if client.transport.closed:
            break
    assert client.take().startswith(b"HTTP/1.1 413 ")


def test_invalid_utf8_value_is_replaced(client: Client) -> None:
    reply = client.request("PUT", "/v2/keys/u", b"value=%ff%3Ca%3E")
    assert reply.json()["node"]["value"] == "\ufffd<a>"
    assert b'"\\ufffd\\u003ca\\u003e"' in reply.body


def test_handler_bug_answers_500_and_keeps_serving(client: Client) -> None:
    client.node.store = None  # type: ignore[assignment]  # every local read now fails
    reply = client.request("GET", "/v2/keys/foo")
    assert reply.status == 500
    assert client.request("GET", "/version").status == 200


def test_stalled_request_is_closed_by_the_sweep() -> None:
    c = Client()
    try:
        c.feed(b"GET /v2/keys/ HTTP/1.1\r\nHost: t\r\n")
        c.connections.timeout = 0.0
        c.protocol.request_started -= 1.0
        c.connections.sweep()
        assert c.transport.closed
    finally:
        c.close()


def test_idle_connection_survives_the_sweep(client: Client) -> None:
    client.connections.timeout = 0.0
    client.connections.sweep()
    assert not client.transport.closed


# -- watches -------------------------------------------------------------------------------------

def test_watch_headers_at_once_then_one_event_then_next_request(client: Client) -> None:
    client.request("PUT", "/v2/keys/w", b"value=0")
    client.feed(b"GET /v2/keys/w?wait=true HTTP/1.1\r\nHost: t\r\n\r\n"
                b"GET /v2/keys/w HTTP/1.1\r\nHost: t\r\n\r\n")
    head = client.take()
    assert head.startswith(b"HTTP/1.1 200 OK\r\n")
    assert b"Transfer-Encoding: chunked\r\n" in head and b"X-Etcd-Index: 1\r\n" in head
    assert head.endswith(b"\r\n\r\n")
    assert client.node.hub.count == 1
    other = Client(client.node)
    try:
        other.request("PUT", "/v2/keys/w", b"value=1")
    finally:
        other.close()
    client.settle()
    replies = parse_replies(head + client.take())
    assert len(replies) == 2
    assert replies[0].json()["node"]["value"] == "1" and replies[0].json()["action"] == "set"
    assert replies[1].json()["action"] == "get"
    assert client.node.hub.count == 0


def test_watch_from_history_answers_at_once(client: Client) -> None:
    client.request("PUT", "/v2/keys/h", b"value=0")
    client.request("PUT", "/v2/keys/h", b"value=1")
    reply = client.request("GET", "/v2/keys/h?wait=true&waitIndex=2")
    assert reply.json()["node"]["modifiedIndex"] == 2
    assert reply.headers["X-Etcd-Index"] == "2"
    assert reply.headers["Transfer-Encoding"] == "chunked"


def test_stream_watch_gets_every_event(client: Client) -> None:
    client.feed(b"GET /v2/keys/s?wait=true&stream=true&recursive=true HTTP/1.1\r\nHost: t\r\n\r\n")
    writer = Client(client.node)
    try:
        for i in range(3):
            writer.request("PUT", f"/v2/keys/s/{i}", b"value=x")
    finally:
        writer.close()
    data = client.take()
    lines = [json.loads(line) for line in data.split(b"\r\n") if line.startswith(b"{")]
    assert [e["node"]["key"] for e in lines] == ["/s/0", "/s/1", "/s/2"]
    assert not data.endswith(b"0\r\n\r\n")


def test_closing_a_watching_connection_removes_the_watcher(client: Client) -> None:
    client.feed(b"GET /v2/keys/gone?wait=true HTTP/1.1\r\nHost: t\r\n\r\n")
    assert client.node.hub.count == 1
    client.protocol.connection_lost(None)
    assert client.node.hub.count == 0


def test_outdated_wait_index_is_401(client: Client) -> None:
    for i in range(1002):
        client.node.store.set("/1/k", False, str(i), 0, False, 0)
    reply = client.request("GET", "/v2/keys/k?wait=true&waitIndex=1")
    assert error(reply) == (400, 401, "the requested history has been cleared [3/1]")


# -- other endpoints -----------------------------------------------------------------------------

def test_version_health_machines(client: Client) -> None:
    version = client.request("GET", "/version")
    assert version.body == b'{"etcdserver":"3.4.23","etcdcluster":"3.4.0"}'
    health = client.request("GET", "/health")
    assert health.body == b'{"health":"true"}'
    assert health.headers["Content-Type"] == "text/plain; charset=utf-8"
    client.node.healthy = False
    sick = client.request("GET", "/health")
    assert (sick.status, sick.body) == (503, b'{"health":"false"}\n')
    client.node.member_list.append(Member(1, "b", [], ["http://10.0.0.2:2379", "http://10.0.0.1:2379"]))
    machines = client.request("GET", "/v2/machines")
    assert machines.body == b"http://10.0.0.1:2379, http://10.0.0.2:2379, http://127.0.0.1:2379"
    assert "X-Etcd-Cluster-Id" not in machines.headers


def test_members_get_and_leader(client: Client) -> None:
    client.node.member_list.append(Member(1, "", ["http://h:1"], []))
    members = client.request("GET", "/v2/members")
    assert members.body == (b'{"members":[{"id":"1","name":"","peerURLs":["http://h:1"],"clientURLs":[]},'
                            b'{"id":"9e737febb6b99eee","name":"a","peerURLs":["http://127.0.0.1:2380"],'
                            b'"clientURLs":["http://127.0.0.1:2379"]}]}\n')
    assert members.headers["X-Etcd-Cluster-Id"] == "c8730d66636ff140"
    leader = client.request("GET", "/v2/members/leader")
    assert leader.json()["id"] == "9e737febb6b99eee" and leader.body.endswith(b"}\n")
    assert client.request("GET", "/v2/members/abc").body == b'{"message":"Not found"}'
    client.node.leader_id = 0
    election = client.request("GET", "/v2/members/leader")
    assert (election.status, election.body) == (503, b'{"message":"During election"}')


@pytest.mark.parametrize(("method", "target", "body", "ctype", "status", "message"), [
    ("POST", "/v2/members", b"{}", "application/x-www-form-urlencoded", 415,
     "Bad Content-Type application/x-www-form-urlencoded, accept application/json"),
    ("POST", "/v2/members", b"{}", "application/json", 400, "no valid URLs given"),
    ("POST", "/v2/members", b'{"peerURLs":["not a url"]}', "application/json; charset=utf-8", 400,
     "URL scheme must be http, https, unix, or unixs: not a url"),
    ("POST", "/v2/members", b'{"peerURLs":["http://h"]}', "application/json", 400,
     'URL address does not have the form "host:port": http://h'),
    ("POST", "/v2/members", b'{"peerURLs":["http://127.0.0.1:2380"]}', "application/json", 409,
     "membership: peerURL exists"),
    ("PUT", "/v2/members/leader", b"{}", "application/json", 404, "No such member: leader"),
    ("PUT", "/v2/members/abc", b"{}", "application/json", 400, "no valid URLs given"),
    ("DELETE", "/v2/members/1234", b"", "", 404, "No such member: 1234"),
])
def test_member_errors(client: Client, method: str, target: str, body: bytes, ctype: str, status: int,
                       message: str) -> None:
    headers = {"Content-Type": ctype} if ctype else {}
    reply = client.request(method, target, body, headers, form=False)
    assert (reply.status, reply.json()) == (status, {"message": message})
    assert reply.headers["X-Etcd-Cluster-Id"] == "c8730d66636ff140"


def test_member_add_and_remove(client: Client) -> None:
    added = client.request("POST", "/v2/members", b'{"peerURLs":["http://127.0.0.1:2390"]}',
                           {"Content-Type": "application/json"}, form=False)
    assert added.status == 201
    assert added.body == b'{"id":"90f00e25d8b1b042","name":"","peerURLs":["http://127.0.0.1:2390"],"clientURLs":[]}\n'
    removed = client.request("DELETE", "/v2/members/90f00e25d8b1b042")
    assert (removed.status, removed.body) == (204, b"")
    assert "Content-Length" not in removed.headers
    no_id = client.request("DELETE", "/v2/members/")
    assert (no_id.status, no_id.body) == (405, b"Method Not Allowed\n")
    assert "Allow" not in no_id.headers


def test_stats(client: Client) -> None:
    client.request("PUT", "/v2/keys/foo", b"value=1")
    store = client.request("GET", "/v2/stats/store").json()
    assert store["setsSuccess"] == 1 and store["watchers"] == 0
    self_stats = client.request("GET", "/v2/stats/self")
    assert not self_stats.body.endswith(b"\n")
    data = self_stats.json()
    assert data["id"] == "9e737febb6b99eee" and data["state"] == "StateLeader"
    assert data["startTime"] == "2023-11-14T22:13:20.123456789Z"
    assert data["leaderInfo"]["leader"] == "9e737febb6b99eee"
    assert data["leaderInfo"]["uptime"].endswith("s")
    assert client.request("GET", "/v2/stats/leader").body == b'{"leader":"9e737febb6b99eee","followers":{}}'
    client.node.state = "StateFollower"
    follower = client.request("GET", "/v2/stats/leader")
    assert (follower.status, follower.body) == (403, b'{"message":"not current leader"}')


def test_metrics(client: Client) -> None:
    client.request("PUT", "/v2/keys/foo", b"value=1")
    reply = client.request("POST", "/metrics")
    assert reply.headers["Content-Type"] == "text/plain; version=0.0.4; charset=utf-8"
    text = reply.body.decode()
    assert "etcd_server_has_leader 1\n" in text
    assert 'etcd_debugging_store_writes_total{action="set"} 1\n' in text
    assert "etcd_debugging_store_watchers 0\n" in text
    assert 'etcd_http_received_total{method="PUT"}' in text


def test_v2_error_status_table() -> None:
    assert V2Error(100).status == 404 and V2Error(209).status == 400


def test_back_pressure_pauses_reading(client: Client) -> None:
    client.protocol.pause_writing()
    assert not client.transport.reading
    client.protocol.resume_writing()
    assert client.transport.reading


def test_listen_urls() -> None:
    from fastkv.http import parse_listen_url

    assert parse_listen_url("http://localhost:2379") == ("tcp", "127.0.0.1", 2379)
    assert parse_listen_url("http://0.0.0.0:4001") == ("tcp", "0.0.0.0", 4001)
    assert parse_listen_url("unix://etcd.sock") == ("unix", "etcd.sock", 0)
    with pytest.raises(ValueError):
        parse_listen_url("http://127.0.0.1")


def test_metrics_text_format() -> None:
    from fastkv import metrics

    histogram = metrics.Histogram("test_seconds", "A test.", [0.001, 0.01])
    histogram.observe(0.005)
    histogram.observe(5)
    assert histogram.lines() == ['test_seconds_bucket{le="0.001"} 0', 'test_seconds_bucket{le="0.01"} 1',
                                 'test_seconds_bucket{le="+Inf"} 2', "test_seconds_sum 5.005",
                                 "test_seconds_count 2"]
    counter = metrics.Counter("test_total", "Counts.", ["action"])
    counter.labels(action='a"b').inc(2)
    assert counter.lines() == ['test_total{action="a\\"b"} 2']


def test_client_eof_ends_a_stream_watch_from_history(client: Client) -> None:
    client.request("PUT", "/v2/keys/e", b"value=1")
    client.feed(b"GET /v2/keys/e?wait=true&stream=true&waitIndex=1 HTTP/1.1\r\nHost: t\r\n\r\n")
    assert b'"value":"1"' in client.take()
    assert client.protocol.eof_received() is None  # the transport closes itself


def test_client_eof_waits_for_a_pending_write(client: Client) -> None:
    client.protocol.data_received(b"PUT /v2/keys/p?value=1 HTTP/1.1\r\nHost: t\r\nContent-Length: 0\r\n\r\n")
    assert client.protocol.eof_received() is True
    client.settle()
    assert parse_replies(client.take())[0].status == 201
    assert client.transport.closed


def test_expect_100_continue(client: Client) -> None:
    client.feed(b"PUT /v2/keys/big HTTP/1.1\r\nHost: t\r\nExpect: 100-continue\r\nContent-Length: 7\r\n"
                b"Content-Type: application/x-www-form-urlencoded\r\n\r\n")
    assert client.take() == b"HTTP/1.1 100 Continue\r\n\r\n"
    client.feed(b"value=x")
    assert parse_replies(client.take())[0].status == 201


# -- methods httptools does not know (Go routes any token) ---------------------------------------

@pytest.mark.parametrize(("method", "target", "status", "allow"), [
    ("FOO", "/v2/keys/x", 405, "HEAD,GET,PUT,POST,DELETE"),
    ("get", "/v2/keys/x", 405, "HEAD,GET,PUT,POST,DELETE"),
    ("GETX", "/version", 405, "GET"),
    ("BREW", "/health", 405, "GET"),
    ("FOO", "/v2/machines", 405, "GET,HEAD"),
    ("FOO", "/v2/members", 405, "GET,POST,DELETE,PUT"),
    ("FOO", "/v2/stats/store", 405, "GET"),
    ("FOO", "/nothing", 404, None),
])
def test_unknown_method_is_routed_like_go(client: Client, method: str, target: str, status: int,
                                          allow: str | None) -> None:
    reply = client.request(method, target)
    assert reply.status == status
    assert reply.headers.get("Allow") == allow
    assert reply.headers["X-Content-Type-Options"] == "nosniff"
    assert not client.transport.closed
    assert client.request("GET", "/version").status == 200  # the connection goes on


def test_unknown_methods_among_pipelined_requests(client: Client) -> None:
    client.feed(b"PUT /v2/keys/a?value=1 HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\n\r\nx=1"
                b"FOO /v2/keys/a HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\n\r\nhello"
                b"GET /v2/keys/a HTTP/1.1\r\nHost: t\r\n\r\n"
                b"BAR /version HTTP/1.1\r\nHost: t\r\n\r\n"
                b"GET /version HTTP/1.1\r\nHost: t\r\n\r\n")
    replies = parse_replies(client.take())
    assert [r.status for r in replies] == [201, 405, 200, 405, 200]
    assert replies[2].json()["node"]["value"] == "1"


def test_unknown_method_split_across_reads(client: Client) -> None:
    client.feed(b"PUT /v2/keys/b HTTP/1.1\r\nHost: t\r\nContent-Type: application/x-www-form-urlencoded\r\n"
                b"Content-Length: 7\r\n\r\nval")
    client.feed(b"ue=1F")
    client.feed(b"OO /v2/keys/b HTTP/1.1\r\nHo")
    client.feed(b"st: t\r\n\r\nGET /v2/keys/b HTTP/1.1\r\nHost: t\r\n\r\n")
    replies = parse_replies(client.take())
    assert [r.status for r in replies] == [201, 405, 200]
    assert replies[2].json()["node"]["value"] == "1"


@pytest.mark.parametrize("head", [b"F(O /v2/keys/x HTTP/1.1\r\n", b" GET /v2/keys/x HTTP/1.1\r\n"])
def test_method_that_is_no_token_is_400_and_close(client: Client, head: bytes) -> None:
    client.feed(head + b"Host: t\r\n\r\n")
    assert client.take().startswith(b"HTTP/1.1 400 Bad Request\r\n")
    assert client.transport.closed


# -- store reads etcd makes on the side (visible in /v2/stats/store) ----------------------------

def _gets(client: Client) -> tuple[int, int]:
    stats = client.node.store.stats()
    return stats["getsSuccess"], stats["getsFail"]


@pytest.mark.parametrize(("method", "target", "body", "reads"), [
    ("GET", "/v2/keys/", b"", (1, 1)),  # the auth flag, then the key
    ("GET", "/v2/keys/nothing", b"", (0, 2)),
    ("PUT", "/v2/keys/a", b"value=1", (0, 1)),
    ("GET", "/v2/keys/a?ttl=x", b"", (0, 0)),  # invalid parameters: no auth read
    ("PATCH", "/v2/keys/a", b"", (0, 0)),
    ("GET", "/v2/members", b"", (0, 0)),
    ("DELETE", "/v2/members", b"", (0, 1)),  # root access check, then 405 for the missing id
    ("GET", "/health", b"", (1, 0)),  # the quorum read of the root
    ("GET", "/version", b"", (0, 0)),
])
def test_store_reads_per_request(client: Client, method: str, target: str, body: bytes,
                                 reads: tuple[int, int]) -> None:
    before = _gets(client)
    client.request(method, target, body)
    after = _gets(client)
    assert (after[0] - before[0], after[1] - before[1]) == reads


def test_health_is_a_quorum_read_through_the_log(client: Client) -> None:
    before = client.node.raft_index
    assert client.request("GET", "/health").status == 200
    assert client.node.raft_index == before + 1
    client.node.fail_proposals = True
    sick = client.request("GET", "/health")
    assert (sick.status, sick.body) == (503, b'{"health":"false"}\n')


def test_head_with_quorum_is_served_locally(client: Client) -> None:
    client.request("PUT", "/v2/keys/c1", b"value=1")
    before = client.node.raft_index
    client.feed(b"HEAD /v2/keys/c1?quorum=true HTTP/1.1\r\nHost: t\r\n\r\n")
    head = client.take()
    assert head.startswith(b"HTTP/1.1 200 OK\r\n") and b"X-Raft-Index: %d\r\n" % before in head
    assert client.node.raft_index == before
