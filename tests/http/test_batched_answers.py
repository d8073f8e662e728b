"""Answers that leave in batches, sent by the loop and the writer's thread together, when many
connections are answered in one loop pass (more than ``FAN_OUT``), reach the right client, whole
and in order: read-your-writes on every connection, pipelined requests, long-poll watchers fired
together, clients that vanish mid-batch."""

from __future__ import annotations

import json
import socket
import struct

import httptools

from fastkv.http.writer import FAN_OUT
from tests import harness

CONNECTIONS = FAN_OUT + 32  # enough for a loop pass to gather a fan-out's worth of answers


def connect(server: harness.Server) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", server.client_port), timeout=10)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def put(key: str, value: str) -> bytes:
    body = f"value={value}".encode()
    return (f"PUT /v2/keys/{key} HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-www-form-urlencoded\r\n"
            f"Content-Length: {len(body)}\r\n\r\n").encode() + body


def get(path: str) -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode()


class Replies:
    """Parses the responses arriving on one socket (chunked bodies joined)."""

    def __init__(self) -> None:
        self.bodies: list[tuple[int, dict]] = []  # type: ignore[type-arg]
        self._body = b""
        self.parser = httptools.HttpResponseParser(self)

    def on_body(self, body: bytes) -> None:
        self._body += body

    def on_message_complete(self) -> None:
        self.bodies.append((self.parser.get_status_code(), json.loads(self._body)))
        self._body = b""


def read_replies(sock: socket.socket, count: int) -> list[tuple[int, dict]]:  # type: ignore[type-arg]
    replies = Replies()
    while len(replies.bodies) < count:
        data = sock.recv(1 << 16)
        assert data, f"closed after {len(replies.bodies)} of {count} answers"
        replies.parser.feed_data(data)
    return replies.bodies


def test_every_connection_reads_its_own_writes_in_order(fastkv_server: harness.Server) -> None:
    socks = [connect(fastkv_server) for _ in range(CONNECTIONS)]
    try:
        for rounds in range(3):
            for i, sock in enumerate(socks):  # PUT, GET of it, a second PUT, pipelined
                sock.sendall(put(f"own/{i}", f"a{i}-{rounds}") + get(f"/v2/keys/own/{i}")
                             + put(f"own/{i}", f"b{i}-{rounds}"))
            for i, sock in enumerate(socks):
                (s1, first), (s2, read), (s3, second) = read_replies(sock, 3)
                assert (s1, s2, s3) == (200 if rounds else 201, 200, 200)
                assert first["node"]["value"] == read["node"]["value"] == f"a{i}-{rounds}"
                assert second["node"]["value"] == f"b{i}-{rounds}"
                assert first["node"]["modifiedIndex"] < second["node"]["modifiedIndex"]
    finally:
        for sock in socks:
            sock.close()


def test_watchers_fired_together_each_get_the_event_then_go_on(fastkv_server: harness.Server) -> None:
    socks = [connect(fastkv_server) for _ in range(200)]
    try:
        for sock in socks:
            sock.sendall(get("/v2/keys/fired?wait=true"))
        with connect(fastkv_server) as writer:  # every watcher is registered once this answers
            writer.sendall(get("/v2/keys/?recursive=true"))
            read_replies(writer, 1)
            writer.sendall(put("fired", "now"))
            [(status, _)] = read_replies(writer, 1)
            assert status == 201
        for sock in socks:
            [(status, event)] = read_replies(sock, 1)
            assert (status, event["action"], event["node"]["value"]) == (200, "set", "now")
            sock.sendall(get("/v2/keys/fired"))  # the connection serves the next request
        for sock in socks:
            [(status, node)] = read_replies(sock, 1)
            assert (status, node["node"]["value"]) == (200, "now")
    finally:
        for sock in socks:
            sock.close()


def test_clients_that_vanish_mid_batch_harm_no_one_else(fastkv_server: harness.Server) -> None:
    setup = connect(fastkv_server)
    for i in range(CONNECTIONS):
        setup.sendall(put(f"mine/{i}", str(i)))
    read_replies(setup, CONNECTIONS)
    setup.close()
    for _ in range(5):
        keep = [connect(fastkv_server) for _ in range(CONNECTIONS)]
        gone = [connect(fastkv_server) for _ in range(CONNECTIONS)]
        for sock in gone:  # reset at close: the server's answer finds no one
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        for i in range(CONNECTIONS):
            gone[i].sendall(get(f"/v2/keys/mine/{i}") * 3)
            keep[i].sendall(get(f"/v2/keys/mine/{i}") * 3)
            gone[i].close()
        for i, sock in enumerate(keep):
            answers = read_replies(sock, 3)
            assert [(s, body["node"]["value"]) for s, body in answers] == [(200, str(i))] * 3
            sock.close()
    with connect(fastkv_server) as sock:
        sock.sendall(get("/v2/keys/mine/7"))
        assert read_replies(sock, 1)[0][1]["node"]["value"] == "7"
