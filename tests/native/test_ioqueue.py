"""The compiled I/O queues. The send queue over real sockets: order, outcomes, a full socket, a
closed peer; it closes the descriptors handed to it (duplicates of the sockets' own). The sync
queue over a real file: offsets, one sync per group, a sticky failure."""

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

from fastkv._native.ioqueue import SendQueue, SyncQueue, send_now


@pytest.fixture
def queue() -> Iterator[SendQueue]:
    q = SendQueue()
    thread = threading.Thread(target=q.serve, daemon=True)
    thread.start()
    yield q
    q.stop()
    thread.join(timeout=5)
    assert not thread.is_alive()


def outcomes(q: SendQueue | SyncQueue, batches: int) -> list[Any]:
    """Wait on ``event_fd`` until ``batches`` batches are collected."""
    got: list[Any] = []
    while len(got) < batches:
        assert select.select([q.event_fd], [], [], 5)[0], "the queue never signalled"
        got += q.collect()
    return got


def read_exactly(sock: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        assert chunk, "peer closed early"
        data += chunk
    return data


def test_batches_arrive_whole_and_in_order_on_every_socket(queue: SendQueue) -> None:
    pairs = [socket.socketpair() for _ in range(20)]
    try:
        first = [f"first {i}\n".encode() for i in range(20)]
        second = [f"second {i}\n".encode() for i in range(20)]
        queue.submit([os.dup(a.fileno()) for a, _ in pairs], first)
        queue.submit([os.dup(a.fileno()) for a, _ in pairs], second)
        assert outcomes(queue, 2) == [[len(p) for p in first], [len(p) for p in second]]
        for i, (_, b) in enumerate(pairs):
            assert read_exactly(b, len(first[i]) + len(second[i])) == first[i] + second[i]
    finally:
        for a, b in pairs:
            a.close()
            b.close()


def test_a_full_socket_reports_how_far_the_send_got(queue: SendQueue) -> None:
    a, b = socket.socketpair()
    a.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    try:
        big = bytes(range(256)) * 4096  # 1 MiB: more than the socket buffers hold
        queue.submit([os.dup(a.fileno())], [big])
        [[sent]] = outcomes(queue, 1)
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
        queue.submit([os.dup(a.fileno())], [b"nobody listens"])
        [[outcome]] = outcomes(queue, 1)
        assert outcome in (-errno.EPIPE, -errno.ECONNRESET)
    finally:
        a.close()


def test_a_bad_descriptor_fails_alone(queue: SendQueue) -> None:
    a, b = socket.socketpair()
    bad = resource.getrlimit(resource.RLIMIT_NOFILE)[0] + 1  # never an open descriptor
    try:
        queue.submit([bad, os.dup(a.fileno())], [b"lost", b"delivered"])
        assert outcomes(queue, 1) == [[-errno.EBADF, len(b"delivered")]]
        assert b.recv(100) == b"delivered"
    finally:
        a.close()
        b.close()


def test_stop_sends_what_is_queued_first() -> None:
    q = SendQueue()
    a, b = socket.socketpair()
    try:
        q.submit([os.dup(a.fileno())], [b"queued before stop"])
        q.stop()
        q.serve()  # returns once the queue is empty, on this thread
        assert q.collect() == [[len(b"queued before stop")]]
        assert b.recv(100) == b"queued before stop"
    finally:
        a.close()
        b.close()


def test_mismatched_lists_are_refused() -> None:
    with pytest.raises(ValueError):
        SendQueue().submit([1, 2], [b"x"])


def test_send_now_reports_like_the_queue() -> None:
    a, b = socket.socketpair()
    gone_a, gone_b = socket.socketpair()
    gone_b.close()
    try:
        outcomes = send_now([os.dup(a.fileno()), os.dup(gone_a.fileno())], [b"here", b"nobody"])
        assert outcomes[0] == 4 and outcomes[1] in (-errno.EPIPE, -errno.ECONNRESET)
        assert b.recv(10) == b"here"
    finally:
        for s in (a, b, gone_a):
            s.close()


def test_submit_can_take_the_duplicates_itself(queue: SendQueue) -> None:
    a, b = socket.socketpair()
    try:
        queue.submit([a.fileno(), a.fileno()], [b"one", b"two"], duplicate=True)
        assert outcomes(queue, 1) == [[3, 3]]
        assert read_exactly(b, 6) == b"onetwo"
        os.fstat(a.fileno())  # the caller's own descriptor stays open
    finally:
        a.close()
        b.close()


def test_without_a_duplicate_to_spare_the_send_reports_ebadf(queue: SendQueue) -> None:
    a, b = socket.socketpair()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    lowest_free = os.dup(0)
    os.close(lowest_free)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (lowest_free, hard))  # no new descriptor fits
        queue.submit([a.fileno()], [b"lost"], duplicate=True)
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    try:
        assert outcomes(queue, 1) == [[-errno.EBADF]]
        os.fstat(a.fileno())
        a.sendall(b"still")  # the socket itself is untouched
        assert read_exactly(b, 5) == b"still"
    finally:
        a.close()
        b.close()


def test_send_now_leaves_borrowed_descriptors_open() -> None:
    a, b = socket.socketpair()
    try:
        assert send_now([a.fileno(), a.fileno()], [b"one", b"two"], close_after=False) == [3, 3]
        os.fstat(a.fileno())  # still open: the caller's
        assert read_exactly(b, 6) == b"onetwo"
        assert send_now([os.dup(a.fileno())], [b"!"]) == [1]  # the default closes the duplicate
        assert read_exactly(b, 1) == b"!"
    finally:
        a.close()
        b.close()


def test_the_descriptors_handed_over_are_closed_after_their_send(queue: SendQueue) -> None:
    a, b = socket.socketpair()
    try:
        handed = [os.dup(a.fileno()) for _ in range(3)]
        queue.submit(handed, [b"x", b"y", b"z"])
        assert outcomes(queue, 1) == [[1, 1, 1]]
        for fd in handed:
            with pytest.raises(OSError):
                os.fstat(fd)
        assert read_exactly(b, 3) == b"xyz"  # the socket itself stays open
    finally:
        a.close()
        b.close()


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
