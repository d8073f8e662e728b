"""Hostile and broken clients against a real fastkv process over real sockets.

After each abuse the server must still answer a normal GET.
"""

from __future__ import annotations

import json
import resource
import socket
import time
import urllib.request

import pytest

from tests import harness

pytestmark = pytest.mark.timeout(120)


def _connect(server: harness.Server) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", server.client_port), timeout=10)
    return sock


def _read_until_closed(sock: socket.socket, limit: float = 10.0) -> bytes:
    """Everything the server sends until it closes the connection."""
    sock.settimeout(limit)
    data = b""
    while True:
        chunk = sock.recv(65536)
        if not chunk:
            return data
        data += chunk


def _exchange(server: harness.Server, raw: bytes) -> bytes:
    with _connect(server) as sock:
        sock.sendall(raw)
        return _read_until_closed(sock)


def assert_still_serving(server: harness.Server) -> None:
    with urllib.request.urlopen(server.url + "/v2/keys/", timeout=10) as reply:
        assert reply.status == 200
        assert json.loads(reply.read())["action"] == "get"


GO_BAD_REQUEST = (b"HTTP/1.1 400 Bad Request\r\nContent-Type: text/plain; charset=utf-8\r\n"
                  b"Connection: close\r\n\r\n400 Bad Request")


@pytest.mark.parametrize("raw", [
    b"GET\r\n\r\n",
    b"GET /v2/keys/ HTTP/9.9.9\r\n\r\n",
    b"\x00\x01\x02\xff\xfe garbage \x80\r\n\r\n",
    b"GET /v2/keys/a%zz HTTP/1.1\r\nHost: x\r\n\r\n",
    b"GET /v2/keys/ HTTP/1.1\r\nBad Header Line\r\n\r\n",
])
def test_malformed_requests_get_go_400(fastkv_server: harness.Server, raw: bytes) -> None:
    assert _exchange(fastkv_server, raw) == GO_BAD_REQUEST
    assert_still_serving(fastkv_server)


def test_random_garbage(fastkv_server: harness.Server) -> None:
    import random

    rng = random.Random(7)
    for _ in range(20):
        junk = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 400)))
        with _connect(fastkv_server) as sock:
            sock.sendall(junk + b"\r\n\r\n")
            sock.shutdown(socket.SHUT_WR)
            _read_until_closed(sock)
    assert_still_serving(fastkv_server)


def test_body_over_the_limit_is_413(fastkv_server: harness.Server) -> None:
    size = 2 * 1024 * 1024
    with _connect(fastkv_server) as sock:
        sock.sendall(b"PUT /v2/keys/big HTTP/1.1\r\nHost: x\r\n"
                     b"Content-Type: application/x-www-form-urlencoded\r\n"
                     + f"Content-Length: {size}\r\n\r\nvalue=".encode())
        reply = _read_until_closed(sock)
    assert reply.startswith(b"HTTP/1.1 413 ")
    assert b"1.5 MiB" in reply
    assert_still_serving(fastkv_server)


def test_large_value_under_the_limit_is_stored(fastkv_server: harness.Server) -> None:
    value = "v" * (1024 * 1024)
    body = f"value={value}".encode()
    request = urllib.request.Request(fastkv_server.url + "/v2/keys/large", data=body, method="PUT")
    with urllib.request.urlopen(request, timeout=30) as reply:
        assert reply.status == 201
    with urllib.request.urlopen(fastkv_server.url + "/v2/keys/large", timeout=30) as reply:
        assert json.loads(reply.read())["node"]["value"] == value


def test_invalid_utf8_value(fastkv_server: harness.Server) -> None:
    request = urllib.request.Request(fastkv_server.url + "/v2/keys/utf", data=b"value=%ff%3C", method="PUT")
    with urllib.request.urlopen(request, timeout=10) as reply:
        body = reply.read()
    assert b'"value":"\\ufffd\\u003c"' in body
    assert_still_serving(fastkv_server)


def test_broken_form_encoding_is_error_210(fastkv_server: harness.Server) -> None:
    request = urllib.request.Request(fastkv_server.url + "/v2/keys/x", data=b"value=%zz", method="PUT")
    with pytest.raises(urllib.error.HTTPError) as caught:
        urllib.request.urlopen(request, timeout=10)
    assert caught.value.code == 400
    assert json.loads(caught.value.read()) == {"errorCode": 210, "message": "Invalid POST form",
                                               "cause": 'invalid URL escape "%zz"', "index": 0}
    assert_still_serving(fastkv_server)


def test_half_request_then_stall(fastkv_server: harness.Server) -> None:
    with _connect(fastkv_server) as stalled:
        stalled.sendall(b"PUT /v2/keys/slow HTTP/1.1\r\nHost: x\r\nContent-Len")
        assert_still_serving(fastkv_server)
        started = time.monotonic()
        assert _read_until_closed(stalled, limit=30) == b""  # dropped by the request timeout
        assert time.monotonic() - started < 25
    assert_still_serving(fastkv_server)


def test_connect_and_send_nothing(fastkv_server: harness.Server) -> None:
    with _connect(fastkv_server):
        assert_still_serving(fastkv_server)
    assert_still_serving(fastkv_server)


def test_pipelined_requests_on_one_socket(fastkv_server: harness.Server) -> None:
    raw = b"".join(b"GET /version HTTP/1.1\r\nHost: x\r\n\r\n" for _ in range(50))
    with _connect(fastkv_server) as sock:
        sock.sendall(raw + b"GET /version HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        data = _read_until_closed(sock)
    assert data.count(b"HTTP/1.1 200 OK\r\n") == 51


def test_two_thousand_open_connections(fastkv_server: harness.Server) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = 4096 if hard == resource.RLIM_INFINITY else min(hard, 4096)
    if soft < wanted:
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
    sockets: list[socket.socket] = []
    try:
        for _ in range(2000):
            sockets.append(_connect(fastkv_server))
        for sock in sockets[::100]:
            sock.sendall(b"GET /v2/keys/ HTTP/1.1\r\nHost: x\r\n\r\n")
        for sock in sockets[::100]:
            assert sock.recv(65536).startswith(b"HTTP/1.1 200 OK\r\n")
        assert_still_serving(fastkv_server)
    finally:
        for sock in sockets:
            sock.close()
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    assert_still_serving(fastkv_server)
