"""The plain key read (``GET /v2/keys/...`` with ``Host`` first and nothing the answer depends
on) is answered without the general parser; it must answer exactly as the general path does.

The general path is reached with the same request plus a header the shortcut does not accept.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest

from fastkv import metrics
from fastkv._native.store import Store, V2Error
from fastkv.http.keys import plain_read_flags
from fastkv.http.protocol import _PLAIN_GET
from fastkv.http.responses import http_date
from tests.http.test_protocol import Client, parse_replies

_DATE = re.compile(rb"Date: [^\r]*\r\n")


def _plain(target: str, headers: str = "") -> bytes:
    return f"GET {target} HTTP/1.1\r\nHost: test\r\n{headers}\r\n".encode()


def _general(target: str) -> bytes:
    return _plain(target, "X-Request-Kind: general\r\n")


@pytest.fixture
def client() -> Iterator[Client]:
    c = Client()
    c.request("PUT", "/v2/keys/dir/a", b"value=1")
    c.request("PUT", "/v2/keys/dir/b", b"value=2")
    c.request("PUT", "/v2/keys/_hidden", b"value=3")
    yield c
    c.close()


def _answer(client: Client, request: bytes) -> bytes:
    client.feed(request)
    return _DATE.sub(b"Date: -\r\n", client.take())


_SHORTCUT = [
    "/v2/keys/dir/a", "/v2/keys/dir/b/", "/v2/keys/dir", "/v2/keys/", "/v2/keys", "/v2/keys/_hidden",
    "/v2/keys/missing", "/v2/keys/dir/a/under-a-file", "/v2/keys/dir?", "/v2/keys/?recursive=true",
    "/v2/keys/dir?sorted=true&recursive=true", "/v2/keys/dir?quorum=false&recursive=false&sorted=false",
    "/v2/keys/dir?recursive=true&recursive=false", "/v2/keys/dir?&&sorted=true&",
    "/v2/keys/missing?recursive=true",
]
_PARSER = [
    "/v2/keys/dir/.", "/v2/keys/dir/../dir/a", "/v2/keys/dir/.a", "/v2/keys/dir%2Fa", "/v2/keys//dir/a",
    "/v2/keys/dir?recursive=1", "/v2/keys/dir?wait=false", "/v2/keys/dir?sorted=yes", "/v2/keys/dir?a;b",
    "/v2/keys/dir?quorum=true", "/v2/keys/dir#x",
]


@pytest.mark.parametrize("target", _SHORTCUT + _PARSER)
def test_which_requests_take_the_shortcut(target: str) -> None:
    match = _PLAIN_GET.fullmatch(_plain(target))
    shortcut = match is not None and (not match[2] or plain_read_flags(match[2]) is not None)
    assert shortcut == (target in _SHORTCUT)
    assert _PLAIN_GET.fullmatch(_general(target)) is None


@pytest.mark.parametrize("target", [t for t in _SHORTCUT + _PARSER if "quorum=true" not in t])
def test_same_answer_as_the_general_path(client: Client, target: str) -> None:
    store = client.node.store
    before = store.stats()
    plain = _answer(client, _plain(target))
    between = store.stats()
    general = _answer(client, _general(target))
    after = store.stats()
    assert plain == general
    assert plain.startswith(b"HTTP/1.1 ")
    # the store counts the read (and the auth flag read) the same way on both paths
    assert {k: between[k] - before[k] for k in before} == {k: after[k] - between[k] for k in before}


def test_common_client_headers_and_exact_bytes(client: Client) -> None:
    request = _plain("/v2/keys/dir/a", "User-Agent: python-urllib3/2.0\r\nAccept-Encoding: identity\r\n"
                                       "Accept: */*\r\n")
    client.feed(request)
    data = client.take()
    body = b'{"action":"get","node":{"key":"/dir/a","value":"1","modifiedIndex":1,"createdIndex":1}}\n'
    assert data == (b"HTTP/1.1 200 OK\r\n"
                    b"Access-Control-Allow-Headers: accept, content-type, authorization\r\n"
                    b"Access-Control-Allow-Methods: POST, GET, OPTIONS, PUT, DELETE\r\n"
                    b"Access-Control-Allow-Origin: *\r\n"
                    b"Content-Type: application/json\r\nX-Etcd-Cluster-Id: c8730d66636ff140\r\n"
                    b"X-Etcd-Index: 3\r\nX-Raft-Index: 6\r\nX-Raft-Term: 2\r\n"
                    b"Date: " + data.split(b"Date: ")[1].split(b"\r\n")[0] + b"\r\n"
                    b"Content-Length: %d\r\n\r\n" % len(body) + body)


@pytest.mark.parametrize("request_bytes", [
    b"GET /v2/keys/dir/a HTTP/1.0\r\nHost: test\r\n\r\n",
    b"GET /v2/keys/dir/a HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n",
    b"GET /v2/keys/dir/a HTTP/1.1\r\nHost: test\r\nOrigin: http://example.com\r\n\r\n",
    b"GET /v2/keys/dir/a HTTP/1.1\r\n\r\n",
    b"GET /v2/keys/dir/a HTTP/1.1\r\nUser-Agent: x\r\nHost: test\r\n\r\n",
])
def test_requests_the_shortcut_leaves_to_the_parser(client: Client, request_bytes: bytes) -> None:
    """These look alike but answer differently (version, closing, CORS, missing Host)."""
    client.feed(request_bytes)
    data = client.take()
    if b"Host" not in request_bytes:
        assert data.startswith(b"HTTP/1.1 400 Bad Request: missing required Host header\r\n")
    else:
        (reply,) = parse_replies(data)
        assert reply.status == 200
        assert reply.json()["node"]["value"] == "1"
    if b"Connection: close" in request_bytes or b"HTTP/1.0" in request_bytes:
        assert client.transport.closed


def test_unknown_method_is_not_read_as_get(client: Client) -> None:
    client.feed(b"FETCH /v2/keys/dir/a HTTP/1.1\r\nHost: test\r\n\r\n")
    (reply,) = parse_replies(client.take())
    assert reply.status == 405
    assert reply.headers["Allow"] == "HEAD,GET,PUT,POST,DELETE"


def test_start_of_an_unknown_method_is_kept(client: Client) -> None:
    client.feed(b"FO")
    client.feed(_plain("/v2/keys/dir/a"))  # the method is FOGET
    (reply,) = parse_replies(client.take())
    assert reply.status == 405


def test_pipelined_and_split_reads_are_answered_in_order(client: Client) -> None:
    client.feed(_plain("/v2/keys/dir/a") + _plain("/v2/keys/dir/b"))
    request = _plain("/v2/keys/dir/a")
    client.feed(request[:10])
    client.feed(request[10:])
    values = [r.json()["node"]["value"] for r in parse_replies(client.take())]
    assert values == ["1", "2", "1"]


def test_read_behind_a_write_waits_for_it(client: Client) -> None:
    put = (b"PUT /v2/keys/dir/a HTTP/1.1\r\nHost: test\r\n"
           b"Content-Type: application/x-www-form-urlencoded\r\nContent-Length: 7\r\n\r\nvalue=9")
    client.protocol.data_received(put)  # the write is in flight: its answer is pending
    client.protocol.data_received(_plain("/v2/keys/dir/a"))
    client.settle()
    put_reply, get_reply = parse_replies(client.take())
    assert put_reply.status == 200
    assert get_reply.json()["node"]["value"] == "9"


def test_quorum_read_goes_through_the_log(client: Client) -> None:
    index = client.node.raft_index
    client.feed(_plain("/v2/keys/dir/a?quorum=true"))
    (reply,) = parse_replies(client.take())
    assert reply.json()["node"]["value"] == "1"
    assert client.node.raft_index == index + 1


def test_counted_as_received_get(client: Client) -> None:
    series = metrics.http_received.labels("GET")
    before = series.value
    client.feed(_plain("/v2/keys/dir/a"))
    client.take()
    assert series.value == before + 1


def test_store_get_response_is_get_as_http() -> None:
    store = Store()
    store.set("/1/k", False, "v", 0, False, 1)
    date = http_date(0)
    response = store.get_response("/1/k", False, False, 1, b"HTTP/1.1 200 OK\r\n", 7, 3, date)
    body = store.get("/1/k", False, False, 1).body
    head = (b"HTTP/1.1 200 OK\r\nX-Etcd-Index: 1\r\nX-Raft-Index: 7\r\nX-Raft-Term: 3\r\n"
            b"Date: Thu, 01 Jan 1970 00:00:00 GMT\r\nContent-Length: %d\r\n\r\n" % len(body))
    assert response == head + body
    assert store.stats()["getsSuccess"] == 2
    with pytest.raises(V2Error) as caught:
        store.get_response("/1/missing", True, True, 1, b"", 0, 0, date)
    assert caught.value.code == 100
    assert store.stats()["getsFail"] == 1
