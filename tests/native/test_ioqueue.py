"""The compiled I/O queues. The send queue over real sockets: every answer on its socket, the
work shared with the thread or done alone without one, outcomes for a full socket, a closed
peer and a bad descriptor, the descriptors left open. The sync queue over a real file: offsets,
one sync per group, a sticky failure."""

from __future__ import annotations

import errno
import os
import resource
import select
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from fastkv._native.ioqueue import SendQueue, SyncQueue
from tests.sockets import read_exactly


@pytest.fixture
def queue() -> Iterator[SendQueue]:
    q = SendQueue()
    thread = threading.Thread(target=q.serve, daemon=True)
    thread.start()
    yield q
    q.stop()
    thread.join(timeout=5)
    assert not thread.is_alive()


def socket_pairs(count: int) -> list[tuple[socket.socket, socket.socket]]:
    return [socket.socketpair() for _ in range(count)]


def close_all(pairs: list[tuple[socket.socket, socket.socket]]) -> None:
    for a, b in pairs:
        a.close()
        b.close()


def test_every_answer_reaches_its_socket_whole(queue: SendQueue) -> None:
    pairs = socket_pairs(300)
    try:
        for round_ in range(3):  # the same queue and thread serve batch after batch
            payloads = [f"answer {round_}.{i}\n".encode() * (1 + i % 7) for i in range(len(pairs))]
            assert queue.send([a.fileno() for a, _ in pairs], payloads) == [len(p) for p in payloads]
            for (_, b), payload in zip(pairs, payloads, strict=True):
                assert read_exactly(b, len(payload)) == payload
        for a, _ in pairs:
            os.fstat(a.fileno())  # the caller's descriptors stay open
    finally:
        close_all(pairs)


def test_without_a_serving_thread_the_caller_sends_alone() -> None:
    pairs = socket_pairs(50)
    try:
        assert SendQueue().send([a.fileno() for a, _ in pairs], [b"alone"] * 50) == [5] * 50
        assert [read_exactly(b, 5) for _, b in pairs] == [b"alone"] * 50
    finally:
        close_all(pairs)


def test_a_full_socket_reports_how_far_the_send_got(queue: SendQueue) -> None:
    a, b = socket.socketpair()
    a.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    try:
        big = bytes(range(256)) * 4096  # 1 MiB: more than the socket buffers hold
        [sent] = queue.send([a.fileno()], [big])
        assert 0 < sent < len(big)
        a.setblocking(True)
        received = bytearray()
        sender = threading.Thread(target=a.sendall, args=(big[sent:],))
        sender.start()
        while len(received) < len(big):
            received += b.recv(1 << 16)
        sender.join()
        assert bytes(received) == big  # nothing lost or doubled at the boundary
    finally:
        a.close()
        b.close()


def test_a_closed_peer_gives_minus_errno_and_no_signal(queue: SendQueue) -> None:
    a, b = socket.socketpair()
    b.close()
    try:
        [outcome] = queue.send([a.fileno()], [b"nobody listens"])
        assert outcome in (-errno.EPIPE, -errno.ECONNRESET)
    finally:
        a.close()


def test_a_bad_descriptor_fails_alone(queue: SendQueue) -> None:
    a, b = socket.socketpair()
    bad = resource.getrlimit(resource.RLIMIT_NOFILE)[0] + 1  # never an open descriptor
    try:
        assert queue.send([bad, a.fileno()], [b"lost", b"delivered"]) == [-errno.EBADF, len(b"delivered")]
        assert b.recv(100) == b"delivered"
    finally:
        a.close()
        b.close()


def test_stop_ends_the_thread_and_send_still_works() -> None:
    q = SendQueue()
    thread = threading.Thread(target=q.serve, daemon=True)
    thread.start()
    q.stop()
    thread.join(timeout=5)
    assert not thread.is_alive()
    a, b = socket.socketpair()
    try:
        assert q.send([a.fileno()], [b"after stop"]) == [len(b"after stop")]
        assert b.recv(100) == b"after stop"
    finally:
        a.close()
        b.close()


def test_mismatched_lists_are_refused() -> None:
    with pytest.raises(ValueError):
        SendQueue().send([1, 2], [b"x"])


def outcomes(q: SyncQueue, records: int) -> list[Any]:
    """Wait on ``event_fd`` until ``records`` outcomes are collected."""
    got: list[Any] = []
    while len(got) < records:
        assert select.select([q.event_fd], [], [], 5)[0], "the queue never signalled"
        got += q.collect()
    return got


# -- the sync queue: records written at their offsets, synced a group at a time -----------------

@pytest.fixture
def wal(tmp_path: Path) -> Iterator[int]:
    fd = os.open(tmp_path / "wal", os.O_RDWR | os.O_CREAT, 0o600)
    os.ftruncate(fd, 1 << 16)
    yield fd
    os.close(fd)


def serving(queue: SyncQueue) -> threading.Thread:
    thread = threading.Thread(target=queue.serve, daemon=True)
    thread.start()
    return thread


def test_records_land_at_their_offsets_and_one_sync_serves_a_group(wal: int) -> None:
    queue = SyncQueue(wal)
    records = [(i * 100, b"record %d" % i) for i in range(10)]
    for offset, record in records:  # all queued before the thread starts: it takes them together
        queue.submit(offset, record)
    thread = serving(queue)
    try:
        got = outcomes(queue, 10)
    finally:
        queue.stop()
        thread.join(timeout=5)
    assert [outcome for outcome, _ in got] == [0] * 10
    assert [seconds > 0 for _, seconds in got] == [False] * 9 + [True]  # one group, one sync
    for offset, record in records:
        assert os.pread(wal, len(record), offset) == record


def test_a_failure_is_sticky_until_reset(wal: int) -> None:
    queue = SyncQueue(wal)
    thread = serving(queue)
    kept = os.dup(wal)
    full = os.open("/dev/full", os.O_WRONLY)  # every write there fails with ENOSPC
    try:
        os.dup2(full, wal)
        queue.submit(0, b"lost")
        assert outcomes(queue, 1)[0][0] == -errno.ENOSPC
        os.dup2(kept, wal)  # the disk has room again, but the queue does not write behind a failure
        queue.submit(0, b"still not written")
        assert outcomes(queue, 1)[0][0] == -errno.ENOSPC
        assert os.pread(wal, 4, 0) == b"\0" * 4
        queue.reset()
        queue.submit(0, b"written")
        assert outcomes(queue, 1)[0][0] == 0
        assert os.pread(wal, 7, 0) == b"written"
    finally:
        os.close(full)
        os.close(kept)
        queue.stop()
        thread.join(timeout=5)
    assert not thread.is_alive()
