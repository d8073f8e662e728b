"""The peer wire format, sans I/O: length-prefixed msgpack frames with a fixed binary header.

One frame on the wire::

    offset  size  field
    0       4     length      bytes that follow this field (header rest + payload), big-endian
    4       1     version     PROTOCOL_VERSION
    5       1     kind        KIND_MESSAGE, KIND_REQUEST, ...
    6       8     cluster id  the cluster both ends belong to
    14      8     sender      member id of the writer
    22      8     recipient   member id of the reader
    30      8     request id  correlates KIND_REQUEST with KIND_REPLY / KIND_ERROR, and pings; else 0
    38      ...   payload     exactly one msgpack object

The cluster-info handshake is the one exchange with a process that is not yet a member: a member
about to join a running cluster knows neither the cluster id nor any member id (etcd's joining
member asks a peer for ``/members``). It opens a connection whose first and only frame is a
KIND_INFO_REQUEST with cluster id, sender and recipient all 0 and an empty payload; the member
answers with one KIND_INFO_REPLY (cluster id and recipient 0, sender itself) carrying the cluster
id and the members, and accepts nothing more on that connection.

The header is fixed-size so a reader checks who a frame is from and for before it buffers or
unpacks the payload, and refuses an oversized frame from its length alone.

``FrameEncoder`` turns messages into frame bytes; ``FrameDecoder`` is fed the bytes of one
connection in whatever pieces they arrive and yields ``Frame`` values, like msgpack's
``Unpacker.feed``. A frame that breaks a rule raises ``FrameError`` with a sentence that says
which rule; the decoder then stays failed, because the stream cannot be trusted after it.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterator
from typing import NamedTuple

import msgpack

__all__ = [
    "DEFAULT_MAX_FRAME_BYTES",
    "HEADER_SIZE",
    "KIND_ERROR",
    "KIND_INFO_REPLY",
    "KIND_INFO_REQUEST",
    "KIND_MESSAGE",
    "KIND_NAMES",
    "KIND_PING",
    "KIND_PONG",
    "KIND_REPLY",
    "KIND_REQUEST",
    "PROTOCOL_VERSION",
    "Frame",
    "FrameDecoder",
    "FrameEncoder",
    "FrameError",
    "pack_payload",
    "unpack_payload",
]

PROTOCOL_VERSION = 1

KIND_MESSAGE = 1  # one-way message; handed to the receiver's handler
KIND_REQUEST = 2  # expects a KIND_REPLY or KIND_ERROR with the same request id
KIND_REPLY = 3
KIND_ERROR = 4  # payload: the text of the error the request handler raised
KIND_PING = 5  # answered at once with KIND_PONG carrying the same request id; measures round trips
KIND_PONG = 6
KIND_INFO_REQUEST = 7  # the cluster-info handshake (see above): the only frame accepted from a non-member
KIND_INFO_REPLY = 8
KIND_NAMES = {KIND_MESSAGE: "message", KIND_REQUEST: "request", KIND_REPLY: "reply", KIND_ERROR: "error",
              KIND_PING: "ping", KIND_PONG: "pong", KIND_INFO_REQUEST: "cluster-info request",
              KIND_INFO_REPLY: "cluster-info reply"}
HANDSHAKE_KINDS = frozenset((KIND_INFO_REQUEST, KIND_INFO_REPLY))

_HEADER = struct.Struct(">IBBQQQQ")
HEADER_SIZE = _HEADER.size  # 38
_LENGTH_SIZE = 4
_MIN_LENGTH = HEADER_SIZE - _LENGTH_SIZE  # a frame with an empty payload; still invalid msgpack
DEFAULT_MAX_FRAME_BYTES = 32 * 1024 * 1024


class FrameError(Exception):
    """A frame broke a rule of the wire format; ``reason`` says which, in one sentence."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class Frame(NamedTuple):
    """One decoded frame. ``message`` is the unpacked payload."""

    kind: int
    cluster_id: int
    sender: int
    recipient: int
    request_id: int
    message: object


def pack_payload(message: object) -> bytes:
    """msgpack bytes of ``message``: str as str, bytes as bin. Raises TypeError if not serialisable."""
    return msgpack.packb(message, use_bin_type=True)


def unpack_payload(data: bytes | memoryview) -> object:
    """The one msgpack object in ``data``; integer map keys are allowed (member ids are keys).

    Raises ``FrameError`` when ``data`` is truncated, holds extra bytes or is not msgpack.
    """
    try:
        return msgpack.unpackb(data, raw=False, strict_map_key=False)
    except msgpack.ExtraData:
        raise FrameError("payload holds bytes after its msgpack object") from None
    except (ValueError, msgpack.UnpackException) as exc:  # truncated input is a ValueError
        raise FrameError(f"payload is not one msgpack object ({exc})") from None


class FrameEncoder:
    """Frames written by one member of one cluster.

    ``encode`` raises ``FrameError`` when the frame would exceed ``max_frame_bytes`` (the peer
    would refuse it) and ``TypeError`` when the message is not msgpack-serialisable.
    """

    __slots__ = ("_packer", "cluster_id", "max_frame_bytes", "sender")

    def __init__(self, cluster_id: int, sender: int, max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES) -> None:
        self.cluster_id = cluster_id
        self.sender = sender
        self.max_frame_bytes = max_frame_bytes
        self._packer = msgpack.Packer(use_bin_type=True)

    def encode(self, kind: int, recipient: int, message: object, request_id: int = 0) -> bytes:
        """The complete frame bytes for ``message`` of ``kind`` to ``recipient``. Handshake frames
        carry cluster id 0 and recipient 0 (the asker belongs to no cluster yet)."""
        payload = self._packer.pack(message)
        length = _MIN_LENGTH + len(payload)
        if length + _LENGTH_SIZE > self.max_frame_bytes:
            raise FrameError(f"frame of {length + _LENGTH_SIZE} bytes exceeds the limit of "
                             f"{self.max_frame_bytes} bytes")
        cluster_id = self.cluster_id
        if kind in HANDSHAKE_KINDS:
            cluster_id = recipient = 0
        header = _HEADER.pack(length, PROTOCOL_VERSION, kind, cluster_id, self.sender, recipient, request_id)
        return header + payload


class FrameDecoder:
    """Frames read from one connection, checked against who may write on it.

    A frame is accepted only when its version is ``PROTOCOL_VERSION``, its kind is in
    ``kinds``, its cluster id is ``cluster_id``, its recipient is ``recipient``, its sender
    passes ``accept_sender`` and equals the sender of the first frame (a connection speaks for
    one member), its length is within ``max_frame_bytes`` and its payload is exactly one
    msgpack object. Anything else raises ``FrameError`` from iteration.

    The one exception is the cluster-info handshake, when ``KIND_INFO_REQUEST`` is in ``kinds``:
    a request with cluster id, sender and recipient 0 and an empty (nil) payload is accepted as
    the first frame of a connection, and no frame at all after it.
    """

    __slots__ = ("_buffer", "_error", "_handshake", "_offset", "accept_sender", "cluster_id", "kinds",
                 "max_frame_bytes", "recipient", "sender")

    def __init__(self, cluster_id: int, recipient: int, *, kinds: frozenset[int],
                 accept_sender: Callable[[int], bool],
                 max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES) -> None:
        self.cluster_id = cluster_id
        self.recipient = recipient
        self.kinds = kinds
        self.accept_sender = accept_sender
        self.max_frame_bytes = max_frame_bytes
        self.sender: int | None = None  # pinned by the first valid frame
        self._buffer = bytearray()
        self._offset = 0  # start of the first unread frame in _buffer
        self._error: FrameError | None = None
        self._handshake = False  # a cluster-info request was read: the connection carries no more

    @property
    def buffered(self) -> int:
        """Bytes received but not yet part of a complete frame (non-zero at close = truncated)."""
        return len(self._buffer) - self._offset

    def feed(self, data: bytes) -> None:
        """Append bytes as they came off the connection; frames are taken out by iterating."""
        if self._offset:
            del self._buffer[:self._offset]
            self._offset = 0
        self._buffer += data

    def __iter__(self) -> Iterator[Frame]:
        return self

    def __next__(self) -> Frame:
        if self._error is not None:
            raise self._error
        try:
            return self._next_frame()
        except FrameError as exc:
            self._error = exc
            raise

    def _next_frame(self) -> Frame:
        buffer, start = self._buffer, self._offset
        available = len(buffer) - start
        if available < _LENGTH_SIZE:
            raise StopIteration
        length = int.from_bytes(buffer[start:start + _LENGTH_SIZE], "big")
        if length + _LENGTH_SIZE > self.max_frame_bytes:
            raise FrameError(f"frame of {length + _LENGTH_SIZE} bytes exceeds the limit of "
                             f"{self.max_frame_bytes} bytes")
        if length < _MIN_LENGTH:
            raise FrameError(f"frame length {length} is shorter than the header")
        if available < HEADER_SIZE:
            raise StopIteration
        _, version, kind, cluster_id, sender, recipient, request_id = _HEADER.unpack_from(buffer, start)
        if self._handshake:
            raise FrameError("a cluster-info connection carries no frame after its request")
        if kind == KIND_INFO_REQUEST and self.sender is None and KIND_INFO_REQUEST in self.kinds:
            self._check_info_request(version, cluster_id, sender, recipient)
        else:
            self._check_header(version, kind, cluster_id, sender, recipient)
        end = start + _LENGTH_SIZE + length
        if len(buffer) < end:
            raise StopIteration
        with memoryview(buffer) as view, view[start + HEADER_SIZE:end] as payload:
            message = unpack_payload(payload)
        if kind == KIND_INFO_REQUEST and message is not None:
            raise FrameError("a cluster-info request carries no payload")
        self._offset = end
        self.sender = sender
        self._handshake = kind == KIND_INFO_REQUEST
        return Frame(kind, cluster_id, sender, recipient, request_id, message)

    def _check_info_request(self, version: int, cluster_id: int, sender: int, recipient: int) -> None:
        """A cluster-info request comes from a process that is no member yet: all its ids are 0."""
        if version != PROTOCOL_VERSION:
            raise FrameError(f"unsupported protocol version {version} (expected {PROTOCOL_VERSION})")
        if cluster_id or sender or recipient:
            raise FrameError("a cluster-info request must carry cluster id, sender and recipient 0")

    def _check_header(self, version: int, kind: int, cluster_id: int, sender: int, recipient: int) -> None:
        """Raise ``FrameError`` naming the first header field that is not acceptable."""
        if version != PROTOCOL_VERSION:
            raise FrameError(f"unsupported protocol version {version} (expected {PROTOCOL_VERSION})")
        if kind not in self.kinds or kind == KIND_INFO_REQUEST:
            name = KIND_NAMES.get(kind, f"unknown kind {kind}")
            raise FrameError(f"frame kind {name} is not accepted on this connection")
        if cluster_id != self.cluster_id:
            raise FrameError(f"frame for cluster {cluster_id:x}, this is cluster {self.cluster_id:x}")
        if recipient != self.recipient:
            raise FrameError(f"frame addressed to member {recipient:x}, this member is {self.recipient:x}")
        if not self.accept_sender(sender):
            raise FrameError(f"frame from member {sender:x}, which is not a member of this cluster")
        if self.sender is not None and sender != self.sender:
            raise FrameError(f"frame from member {sender:x} on a connection of member {self.sender:x}")
