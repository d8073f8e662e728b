"""The wire format: frames round-trip in any split, and every broken rule is named."""

from __future__ import annotations

import random
import struct

import pytest

from fastkv.transport.framing import (
    HEADER_SIZE,
    KIND_MESSAGE,
    KIND_PING,
    KIND_REPLY,
    KIND_REQUEST,
    PROTOCOL_VERSION,
    Frame,
    FrameDecoder,
    FrameEncoder,
    FrameError,
    pack_payload,
)

CLUSTER, ME, PEER = 0xCDF818194E3A8C32, 0x8E9E05C52164694D, 0x91BC3C398FB3C146
INBOUND = frozenset((KIND_MESSAGE, KIND_REQUEST, KIND_PING))
MESSAGES: list[object] = [{"type": 3, "term": 7, "entries": [b"\x00" * 40, "x"]}, None, 1 << 63, "é", [],
                          {1: 2}]


def decoder(max_frame_bytes: int = 1 << 20) -> FrameDecoder:
    return FrameDecoder(CLUSTER, ME, kinds=INBOUND, accept_sender={PEER}.__contains__,
                        max_frame_bytes=max_frame_bytes)


def frames_of(data: bytes, split: list[int], dec: FrameDecoder | None = None) -> list[Frame]:
    dec = dec or decoder()
    out: list[Frame] = []
    start = 0
    for end in [*split, len(data)]:
        dec.feed(data[start:end])
        out.extend(dec)
        start = end
    return out


def header(length: int, version: int = PROTOCOL_VERSION, kind: int = KIND_MESSAGE, cluster: int = CLUSTER,
           sender: int = PEER, recipient: int = ME, request_id: int = 0) -> bytes:
    return struct.pack(">IBBQQQQ", length, version, kind, cluster, sender, recipient, request_id)


def test_frames_round_trip_whatever_the_pieces_they_arrive_in() -> None:
    encoder = FrameEncoder(CLUSTER, PEER)
    data = b"".join(encoder.encode(KIND_MESSAGE, ME, m) for m in MESSAGES)
    data += encoder.encode(KIND_REQUEST, ME, "ask", request_id=42)
    rng = random.Random(5)
    for split in ([], list(range(1, len(data))), sorted(rng.sample(range(1, len(data)), 9))):
        frames = frames_of(data, split)
        assert [f.message for f in frames] == [*MESSAGES, "ask"]
        assert {(f.cluster_id, f.sender, f.recipient) for f in frames} == {(CLUSTER, PEER, ME)}
        assert frames[-1].kind == KIND_REQUEST and frames[-1].request_id == 42


def test_an_incomplete_frame_waits_and_counts_as_buffered() -> None:
    frame = FrameEncoder(CLUSTER, PEER).encode(KIND_MESSAGE, ME, "hello")
    dec = decoder()
    dec.feed(frame[:-1])
    assert list(dec) == []
    assert dec.buffered == len(frame) - 1
    dec.feed(frame[-1:])
    assert [f.message for f in dec] == ["hello"]
    assert dec.buffered == 0


def test_the_encoder_refuses_what_a_peer_would_refuse() -> None:
    encoder = FrameEncoder(CLUSTER, PEER, max_frame_bytes=100)
    with pytest.raises(FrameError, match="exceeds the limit of 100 bytes"):
        encoder.encode(KIND_MESSAGE, ME, b"x" * 100)
    with pytest.raises(TypeError):
        encoder.encode(KIND_MESSAGE, ME, object())


def _payload_frame(payload: bytes) -> bytes:
    return header(HEADER_SIZE - 4 + len(payload)) + payload


BAD = {
    "oversized length prefix": (struct.pack(">I", 1 << 20), "exceeds the limit"),
    "garbage (an HTTP request)": (b"GET /raft HTTP/1.1\r\nHost: x\r\n\r\n" + b"\0" * 40, "exceeds the limit"),
    "length shorter than a header": (struct.pack(">I", 3) + b"\0" * 40, "shorter than the header"),
    "another protocol version": (header(40, version=9) + b"\xc0\xc0", "unsupported protocol version 9"),
    "unknown kind": (header(40, kind=77) + b"\xc0\xc0", "unknown kind 77"),
    "kind not for this side": (header(40, kind=KIND_REPLY) + b"\xc0\xc0", "kind reply is not accepted"),
    "another cluster": (header(40, cluster=1) + b"\xc0\xc0", "frame for cluster 1"),
    "another recipient": (header(40, recipient=5) + b"\xc0\xc0", "addressed to member 5"),
    "unknown sender": (header(40, sender=0xABC) + b"\xc0\xc0", "member abc, which is not a member"),
    "truncated msgpack": (_payload_frame(b"\x93\x01\x02"), "not one msgpack object"),
    "bytes after the msgpack object": (_payload_frame(b"\xc0\xc0"), "bytes after its msgpack object"),
    "empty payload": (_payload_frame(b""), "not one msgpack object"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_a_broken_frame_is_refused_with_its_reason_and_the_decoder_stays_failed(case: str) -> None:
    data, reason = BAD[case]
    good = FrameEncoder(CLUSTER, PEER).encode(KIND_MESSAGE, ME, "fine")
    dec = decoder(max_frame_bytes=1024)
    dec.feed(good + data)
    assert next(dec).message == "fine"
    with pytest.raises(FrameError, match=reason):
        next(dec)
    dec.feed(good)
    with pytest.raises(FrameError, match=reason):
        next(dec)


def test_a_connection_speaks_for_the_member_of_its_first_frame() -> None:
    dec = FrameDecoder(CLUSTER, ME, kinds=INBOUND, accept_sender=lambda member: True)
    dec.feed(FrameEncoder(CLUSTER, PEER).encode(KIND_MESSAGE, ME, 1))
    assert next(dec).sender == PEER == dec.sender
    dec.feed(FrameEncoder(CLUSTER, 0x77).encode(KIND_MESSAGE, ME, 2))
    with pytest.raises(FrameError, match=f"frame from member 77 on a connection of member {PEER:x}"):
        next(dec)


def test_the_header_is_checked_before_the_payload_arrives() -> None:
    dec = decoder()
    dec.feed(header(HEADER_SIZE - 4 + 1000, cluster=2))
    with pytest.raises(FrameError, match="frame for cluster 2"):
        next(dec)


def test_payloads_keep_strings_and_bytes_apart_and_allow_integer_keys() -> None:
    dec = decoder()
    dec.feed(_payload_frame(pack_payload({1: b"raw", "k": "text"})))
    assert next(dec).message == {1: b"raw", "k": "text"}
