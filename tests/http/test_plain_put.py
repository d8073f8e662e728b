"""The plain write (``PUT /v2/keys/<key>`` whose form body is ``value=...`` alone, with only
headers the answer does not depend on) is answered without the general parser; it must answer
and change the store exactly as the general path does.

Two members in the same state get the same writes: one the plain request, the other the same
request plus a header the shortcut does not accept (which takes the parser).
"""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest

from fastkv import metrics
from fastkv._native.plainreq import match_plain_put
from tests.http.test_protocol import Client, parse_replies

_DATE = re.compile(rb"Date: [^\r]*\r\n")
_FORM = "Content-Type: application/x-www-form-urlencoded\r\n"


def _put(target: str, body: str, headers: str | None = None, extra: str = "") -> bytes:
    if headers is None:
        headers = f"Host: test\r\n{_FORM}Content-Length: {len(body)}\r\n"
    return f"PUT {target} HTTP/1.1\r\n{headers}{extra}\r\n{body}".encode()


def _takes_shortcut(request: bytes) -> bool:
    return match_plain_put(request) is not None


@pytest.fixture
def pair() -> Iterator[tuple[Client, Client]]:
    clients = (Client(), Client())
    for c in clients:
        c.request("PUT", "/v2/keys/dir/a", b"value=1")
        c.request("PUT", "/v2/keys/file", b"value=2")
    yield clients
    for c in clients:
        c.close()


def _answer(client: Client, request: bytes) -> bytes:
    client.feed(request)
    return _DATE.sub(b"Date: -\r\n", client.take())


_GO_CLIENT = (f"Host: test\r\nUser-Agent: Go-http-client/1.1\r\nContent-Length: 15\r\n{_FORM}"
              "Accept-Encoding: gzip\r\n")
_SHORTCUT = [
    _put("/v2/keys/dir/a", "value=new"),
    _put("/v2/keys/dir/b", "value="),
    _put("/v2/keys/new-key_1.x~", "value=A-b_c.d~e"),
    _put("/v2/keys/dir", "value=x"),  # a directory: error 102, answered the same
    _put("/v2/keys/file/under", "value=x"),  # below a file: error 104
    _put("/v2/keys/dir/a", "value=go-client", _GO_CLIENT),
    _put("/v2/keys/k", "value=1", f"Content-Length: 7\r\nhost: test\r\n{_FORM}Accept: */*\r\n"),
]
_PARSER = [
    _put("/v2/keys/dir/a", "value=a%20b"),  # escapes
    _put("/v2/keys/dir/a", "value=a+b"),
    _put("/v2/keys/dir/a", "value=1&dir=false"),  # more than the value
    _put("/v2/keys/dir/a", "prevExist=false"),
    _put("/v2/keys/dir/a?prevExist=true", "value=1"),  # a query
    _put("/v2/keys/dir/a/", "value=1"),  # a trailing slash
    _put("/v2/keys/dir/.a", "value=1"),
    _put("/v2/keys/dir//a", "value=1"),
    _put("/v2/keys", "value=1"),
    _put("/v2/keys/k", "value=1", f"Host: test\r\n{_FORM}Content-Length: 07\r\n"),
    _put("/v2/keys/k", "value=1", "Host: test\r\nContent-Type: text/plain\r\nContent-Length: 7\r\n"),
    _put("/v2/keys/k", "value=1", f"Host: test\r\nHost: test\r\n{_FORM}Content-Length: 7\r\n"),
    _put("/v2/keys/k", "value=1", f"{_FORM}Content-Length: 7\r\n"),  # no Host: Go's 400
    _put("/v2/keys/k", "value=1", "Host: test\r\nContent-Length: 7\r\n"),  # not a form: no value
    _put("/v2/keys/k", "value=1", extra="Connection: close\r\n"),
    _put("/v2/keys/k", "value=1", extra="Origin: http://example.com\r\n"),
]


@pytest.mark.parametrize("request_bytes", _SHORTCUT + _PARSER)
def test_which_requests_take_the_shortcut(request_bytes: bytes) -> None:
    assert _takes_shortcut(request_bytes) == (request_bytes in _SHORTCUT)
    assert not _takes_shortcut(request_bytes.replace(b"\r\n\r\n", b"\r\nX-Request-Kind: general\r\n\r\n", 1))


@pytest.mark.parametrize("request_bytes", _SHORTCUT + _PARSER)
def test_same_answer_and_store_as_the_general_path(pair: tuple[Client, Client], request_bytes: bytes) -> None:
    plain_client, general_client = pair
    general_request = request_bytes.replace(b"\r\n\r\n", b"\r\nX-Request-Kind: general\r\n\r\n", 1)
    plain = _answer(plain_client, request_bytes)
    general = _answer(general_client, general_request)
    assert plain == general
    assert plain.startswith(b"HTTP/1.1 ")
    assert plain_client.node.store.stats() == general_client.node.store.stats()
    assert plain_client.node.store.snapshot() == general_client.node.store.snapshot()


def test_a_write_then_a_read_of_it(pair: tuple[Client, Client]) -> None:
    client = pair[0]
    client.feed(_put("/v2/keys/dir/a", "value=written"))
    client.feed(b"GET /v2/keys/dir/a HTTP/1.1\r\nHost: test\r\n\r\n")
    put_reply, get_reply = parse_replies(client.take())
    assert (put_reply.status, put_reply.json()["action"]) == (200, "set")
    assert put_reply.json()["prevNode"]["value"] == "1"
    assert get_reply.json()["node"]["value"] == "written"


def test_pipelined_writes_are_answered_in_order(pair: tuple[Client, Client]) -> None:
    client = pair[0]
    client.protocol.data_received(_put("/v2/keys/k", "value=1"))  # its answer is pending
    client.protocol.data_received(_put("/v2/keys/k", "value=2") + _put("/v2/keys/k", "value=3"))
    client.settle()
    replies = parse_replies(client.take())
    assert [r.json()["node"]["value"] for r in replies] == ["1", "2", "3"]
    assert [r.status for r in replies] == [201, 200, 200]


def test_counted_as_received_put(pair: tuple[Client, Client]) -> None:
    series = metrics.http_received.labels("PUT")
    before = series.value
    pair[0].feed(_put("/v2/keys/k", "value=1"))
    pair[0].take()
    assert series.value == before + 1


def test_a_failed_proposal_is_etcds_timeout_answer(pair: tuple[Client, Client]) -> None:
    client = pair[0]
    client.node.fail_proposals = True
    client.feed(_put("/v2/keys/k", "value=1"))
    (reply,) = parse_replies(client.take())
    assert reply.status == 500
    assert reply.json()["errorCode"] == 300


def test_a_write_refused_by_a_stopping_member_is_answered_as_the_general_path(
        pair: tuple[Client, Client]) -> None:
    plain_client, general_client = pair
    for c in pair:
        c.node.proposals.closed = True  # as a stopping member's
    request = _put("/v2/keys/k", "value=1")
    plain = _answer(plain_client, request)
    general = _answer(general_client, request.replace(b"\r\n\r\n", b"\r\nX-Request-Kind: general\r\n\r\n", 1))
    assert plain == general
    (reply,) = parse_replies(plain)
    assert (reply.status, reply.json()["errorCode"]) == (500, 300)
    assert plain_client.node.store.stats() == general_client.node.store.stats()
    assert not plain_client.protocol.busy
