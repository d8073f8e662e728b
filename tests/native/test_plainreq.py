"""The compiled recogniser of the plain write against the same rules written as a regular
expression and a header check: they must agree on every input, valid or mutated."""

from __future__ import annotations

import random
import re

import pytest

from fastkv._native.plainreq import MAX_BYTES, PlainWrite, PlainWrites, match_plain_put

_VALUE = rb"[\x21-\x7e](?:[\x20-\x7e]*[\x21-\x7e])?"
_RULES = re.compile(rb"PUT /v2/keys((?:/(?!\.)[-\w.~]+)+) HTTP/1\.1\r\n((?:[-A-Za-z]+: " + _VALUE
                    + rb"\r\n)+)\r\nvalue=([-\w.~]*)")
_ALLOWED = {b"host", b"user-agent", b"accept", b"accept-encoding", b"content-type", b"content-length"}
_FORM = "Content-Type: application/x-www-form-urlencoded\r\n"


def reference(data: bytes) -> tuple[str, str] | None:
    """The rules of ``match_plain_put``, written independently."""
    match = _RULES.fullmatch(data)
    if match is None or len(data) >= MAX_BYTES:
        return None
    seen: set[bytes] = set()
    for line in match[2].split(b"\r\n")[:-1]:
        name, _, value = line.partition(b": ")
        name = name.lower()
        if name not in _ALLOWED or name in seen:
            return None
        seen.add(name)
        if name == b"content-type" and value != b"application/x-www-form-urlencoded":
            return None
        if name == b"content-length" and value != b"%d" % (len(match[3]) + 6):
            return None
    if not {b"host", b"content-type", b"content-length"} <= seen:
        return None
    return match[1].decode(), match[3].decode()


VALID = [
    f"PUT /v2/keys/a/b HTTP/1.1\r\nHost: x\r\n{_FORM}Content-Length: 9\r\n\r\nvalue=abc".encode(),
    (f"PUT /v2/keys/new-key_1.x~ HTTP/1.1\r\nhost: test\r\nUser-Agent: Go-http-client/1.1\r\n"
     f"Content-Length: 15\r\n{_FORM}Accept-Encoding: gzip\r\nACCEPT: */*\r\n\r\nvalue=A-b_c.d~e").encode(),
    f"PUT /v2/keys/k HTTP/1.1\r\nContent-Length: 6\r\n{_FORM}Host: h:2379\r\n\r\nvalue=".encode(),
]
ALPHABET = b"PUT /v2keysab.~-_:\r\nHostContent-TypeLength0123456789 value=&%+x\t\x7f\x80"


@pytest.mark.parametrize("data", VALID)
def test_the_usual_writes_are_recognised(data: bytes) -> None:
    assert match_plain_put(data) == reference(data) is not None


def test_key_and_value_come_back_as_text() -> None:
    assert match_plain_put(VALID[0]) == ("/a/b", "abc")
    assert match_plain_put(VALID[2]) == ("/k", "")


@pytest.mark.parametrize("data", [
    VALID[0].replace(b"HTTP/1.1", b"HTTP/1.0"),
    VALID[0].replace(b"Host: x", b"Host:  x"),
    VALID[0].replace(b"Host: x", b"Host: x "),
    VALID[0].replace(b"Content-Length: 9", b"Content-Length: 09"),
    VALID[0].replace(b"Content-Length: 9", b"Content-Length: +9"),
    VALID[0].replace(b"/a/b", b"/a/.b"),
    VALID[0].replace(b"/a/b", b"/a//b"),
    VALID[0].replace(b"/a/b", b"/a/b/"),
    VALID[0].replace(b"/a/b", b""),
    VALID[0] + b"x",  # the body is longer than its length
    VALID[0].replace(b"\r\n\r\n", b"\r\nHost: y\r\n\r\n"),
    VALID[0].replace(b"\r\n\r\n", b"\r\nConnection: close\r\n\r\n"),
    VALID[0].replace(b"Host: x\r\n", b""),
    b"PUT /v2/keys/k HTTP/1.1\r\nHost: x\r\n" + b"Accept: " + b"a" * MAX_BYTES + b"\r\n" + VALID[0][-40:],
])
def test_anything_else_is_left_to_the_parser(data: bytes) -> None:
    assert reference(data) is None
    assert match_plain_put(data) is None


def test_agrees_with_the_rules_on_mutated_requests() -> None:
    rng = random.Random(20261128)
    accepted = 0
    for _ in range(60_000):
        data = bytearray(rng.choice(VALID))
        for _ in range(rng.randint(1, 3)):
            pos = rng.randrange(len(data) + 1)
            roll = rng.random()
            if roll < 0.4 and pos < len(data):
                del data[pos]
            elif roll < 0.7:
                data.insert(pos, rng.choice(ALPHABET))
            elif pos < len(data):
                data[pos] = rng.choice(ALPHABET)
        got, want = match_plain_put(bytes(data)), reference(bytes(data))
        assert got == want, bytes(data)
        accepted += got is not None
    assert accepted > 1000  # the mutations also kept many requests valid: both sides were tested


class Connection:
    """Records what the lane hands a connection."""

    def __init__(self) -> None:
        self.busy = False
        self.written: list[tuple[bytes | None, str, BaseException | None]] = []

    def plain_written(self, answer: bytes | None, key: str, error: BaseException | None) -> None:
        self.busy = False
        self.written.append((answer, key, error))


def _lane() -> PlainWrites:
    def refuse(request: bytes, waiter: object) -> None:
        raise AssertionError("not proposed in these tests")

    return PlainWrites(None, lambda status: b"", refuse, None, lambda second: b"")


def test_a_plain_write_is_settled_once() -> None:
    conn = Connection()
    waiter = PlainWrite(_lane(), conn, "/k")
    assert not waiter.done()
    error = TimeoutError("etcdserver: request timed out")
    waiter.set_exception(error)
    waiter.set_exception(TimeoutError("again"))
    assert waiter.done()
    assert conn.written == [(None, "/k", error)]


def test_an_answer_that_cannot_be_built_is_handed_over_as_the_error() -> None:
    conn = Connection()
    waiter = PlainWrite(_lane(), conn, "/k")
    waiter.set_result("not an event")
    ((answer, key, error),) = conn.written
    assert (answer, key) == (None, "/k")
    assert isinstance(error, TypeError)
