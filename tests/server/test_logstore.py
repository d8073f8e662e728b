"""The LMDB log: what it keeps, what it drops, and that damage is reported rather than served."""

from __future__ import annotations

import os
import struct
import subprocess
import sys
from pathlib import Path

import lmdb
import pytest

from fastkv._native.logstore import (
    ENTRY_EMPTY,
    ENTRY_NORMAL,
    ENTRY_SYNC,
    CorruptLogError,
    LogFullError,
    LogStore,
)


def entries(lo: int, hi: int, term: int = 1) -> list[tuple[int, int, int, bytes]]:
    return [(i, term, ENTRY_NORMAL, b"data-%d" % i) for i in range(lo, hi)]


@pytest.fixture
def log(tmp_path: Path) -> LogStore:
    store = LogStore(str(tmp_path / "log"))
    yield store
    store.close()


def test_a_new_log_is_empty(log: LogStore) -> None:
    assert (log.first_index, log.last_index) == (1, 0)
    assert log.hard_state == (0, 0, 0)
    assert log.entries(1, 10) == []
    assert log.term(0) == 0


def test_append_and_read_back(log: LogStore) -> None:
    log.append(entries(1, 4), (1, 7, 3))
    log.append([(4, 2, ENTRY_EMPTY, b""), (5, 2, ENTRY_SYNC, b"123")], None)
    assert (log.first_index, log.last_index) == (1, 5)
    assert log.entries(2, 5) == [(2, 1, 0, b"data-2"), (3, 1, 0, b"data-3"), (4, 2, ENTRY_EMPTY, b"")]
    assert log.entries(5, 100) == [(5, 2, ENTRY_SYNC, b"123")]
    assert [log.term(i) for i in range(1, 6)] == [1, 1, 1, 2, 2]
    assert log.hard_state == (1, 7, 3)
    with pytest.raises(IndexError):
        log.term(6)


def test_append_at_a_conflict_replaces_the_tail(log: LogStore) -> None:
    log.append(entries(1, 6), None)
    log.append(entries(3, 4, term=2), None)
    assert log.last_index == 3
    assert log.entries(1, 10)[-1] == (3, 2, ENTRY_NORMAL, b"data-3")


def test_append_refuses_gaps(log: LogStore) -> None:
    log.append(entries(1, 3), None)
    with pytest.raises(ValueError):
        log.append(entries(5, 6), None)
    with pytest.raises(ValueError):
        log.append([(3, 1, 0, b""), (5, 1, 0, b"")], None)
    assert log.last_index == 2


def test_everything_survives_a_reopen(tmp_path: Path) -> None:
    log = LogStore(str(tmp_path / "log"))
    log.append(entries(1, 11), (3, 1, 10))
    log.compact(4)
    log.put_meta(b"member", b"abc")
    log.close()
    log = LogStore(str(tmp_path / "log"))
    assert (log.first_index, log.last_index, log.hard_state) == (5, 10, (3, 1, 10))
    assert log.get_meta(b"member") == b"abc"
    assert log.get_meta(b"other") is None
    assert log.entries(5, 11) == entries(5, 11)
    log.close()


def test_compact_drops_the_prefix_and_keeps_its_term(log: LogStore) -> None:
    log.append(entries(1, 6, term=3), None)
    log.compact(3)
    assert (log.first_index, log.last_index) == (4, 5)
    assert log.term(3) == 3
    with pytest.raises(IndexError):
        log.entries(2, 5)
    with pytest.raises(IndexError):
        log.term(2)
    log.compact(5)
    assert (log.first_index, log.last_index) == (6, 5)
    log.append(entries(6, 7), None)
    assert log.entries(6, 7) == entries(6, 7)


def _rewrite_entry(path: Path, index: int, change) -> None:
    env = lmdb.open(str(path), max_dbs=4)
    db = env.open_db(b"entries")
    with env.begin(write=True) as txn:
        key = struct.pack(">Q", index)
        txn.put(key, change(bytes(txn.get(key, db=db))), db=db)
    env.close()


def test_a_flipped_byte_is_reported(tmp_path: Path) -> None:
    log = LogStore(str(tmp_path / "log"))
    log.append(entries(1, 4), None)
    log.close()
    _rewrite_entry(tmp_path / "log", 2, lambda v: v[:-1] + bytes([v[-1] ^ 0x40]))
    log = LogStore(str(tmp_path / "log"))
    assert log.entries(1, 2) == entries(1, 2)
    with pytest.raises(CorruptLogError, match="entry 2"):
        log.entries(1, 4)
    log.close()


def test_a_truncated_entry_is_reported(tmp_path: Path) -> None:
    log = LogStore(str(tmp_path / "log"))
    log.append(entries(1, 3), None)
    log.close()
    _rewrite_entry(tmp_path / "log", 1, lambda v: v[:5])
    log = LogStore(str(tmp_path / "log"))
    with pytest.raises(CorruptLogError):
        log.term(1)
    log.close()


def test_a_garbage_file_is_a_corrupt_log(tmp_path: Path) -> None:
    (tmp_path / "log").mkdir()
    (tmp_path / "log" / "data.mdb").write_bytes(b"this is not lmdb" * 1000)
    with pytest.raises(CorruptLogError):
        LogStore(str(tmp_path / "log"))


def test_a_full_map_is_a_clear_error_and_keeps_the_log(tmp_path: Path) -> None:
    log = LogStore(str(tmp_path / "log"), map_size=256 * 1024)
    log.append(entries(1, 3), None)
    with pytest.raises(LogFullError):
        log.append([(3, 1, ENTRY_NORMAL, b"x" * 1_000_000)], None)
    assert log.last_index == 2
    log.append(entries(3, 4), None)
    assert log.entries(1, 4) == entries(1, 4)
    log.close()


def test_a_full_disk_under_the_write_ahead_file_is_a_clear_error_and_keeps_the_log(tmp_path: Path) -> None:
    log = LogStore(str(tmp_path / "log"))
    log.append(entries(1, 3), (1, 0, 2))
    wal = str((tmp_path / "log" / "wal").resolve())
    fd = next(int(n) for n in os.listdir("/proc/self/fd") if os.path.realpath(f"/proc/self/fd/{n}") == wal)
    kept = os.dup(fd)
    full = os.open("/dev/full", os.O_WRONLY)  # every write there fails with ENOSPC
    os.dup2(full, fd)
    os.close(full)
    try:
        with pytest.raises(LogFullError, match="disk is full"):
            log.append(entries(3, 5), (1, 0, 4))
        assert (log.last_index, log.hard_state) == (2, (1, 0, 2))
    finally:
        os.dup2(kept, fd)
        os.close(kept)
    log.append(entries(3, 4), (1, 0, 3))
    assert log.entries(1, 4) == entries(1, 4)
    log.close()
    reopened = LogStore(str(tmp_path / "log"))
    assert reopened.entries(1, 4) == entries(1, 4)
    assert reopened.hard_state == (1, 0, 3)
    reopened.close()


# -- the write-ahead file: what a crash (no close) leaves is replayed --------------------------

def _crash_after(path: Path, script: str) -> None:
    """Run ``script`` (with ``log`` open on ``path``) in a child process that exits without
    closing the log, as a killed server would."""
    code = ("import os, sys\n"
            "from fastkv._native.logstore import LogStore, ENTRY_NORMAL\n"
            f"log = LogStore({str(path)!r})\n"
            "def entries(lo, hi, term=1):\n"
            "    return [(i, term, ENTRY_NORMAL, b'data-%d' % i) for i in range(lo, hi)]\n"
            + script + "\nsys.stdout.flush()\nos._exit(0)\n")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_appends_survive_a_crash(tmp_path: Path) -> None:
    _crash_after(tmp_path / "log", "log.append(entries(1, 4), (2, 1, 3))\nlog.append(entries(4, 6), None)")
    log = LogStore(str(tmp_path / "log"))
    assert (log.first_index, log.last_index) == (1, 5)
    assert log.entries(1, 6) == entries(1, 6)
    assert log.hard_state == (2, 1, 3)
    log.close()


def test_a_truncation_in_the_tail_survives_a_crash(tmp_path: Path) -> None:
    _crash_after(tmp_path / "log", "log.append(entries(1, 6), None)\n"
                                   "log.append(entries(3, 5, term=2), (2, 0, 2))")
    log = LogStore(str(tmp_path / "log"))
    assert log.entries(1, 5) == entries(1, 3) + entries(3, 5, term=2)
    assert (log.last_index, log.hard_state) == (4, (2, 0, 2))
    log.close()


def test_a_truncation_below_the_tail_survives_a_crash(tmp_path: Path) -> None:
    log = LogStore(str(tmp_path / "log"))
    log.append(entries(1, 6), None)
    log.close()  # entries 1..5 are in LMDB now
    _crash_after(tmp_path / "log", "log.append(entries(6, 8), None)\n"
                                   "log.append(entries(2, 4, term=3), None)\n"
                                   "log.append(entries(4, 5, term=3), (3, 0, 1))")
    log = LogStore(str(tmp_path / "log"))
    assert log.entries(1, 5) == entries(1, 2) + entries(2, 5, term=3)
    assert log.last_index == 4
    log.close()


def test_a_torn_record_ends_the_replay(tmp_path: Path) -> None:
    _crash_after(tmp_path / "log", "log.append(entries(1, 3), None)\nlog.append(entries(3, 5), None)")
    wal = tmp_path / "log" / "wal"
    data = bytearray(wal.read_bytes())
    first = struct.unpack_from(">I", data, 4)[0] + 16  # the second record starts here
    data[first + 30] ^= 0xFF  # a crash in the middle of writing it
    wal.write_bytes(bytes(data))
    log = LogStore(str(tmp_path / "log"))
    assert log.last_index == 2
    assert log.entries(1, 3) == entries(1, 3)
    log.close()


def test_a_damaged_record_before_whole_ones_is_reported_not_dropped(tmp_path: Path) -> None:
    """A flipped byte in an acknowledged record with acknowledged records after it is not a torn
    end: opening fails loudly instead of replaying only the entries before it."""
    _crash_after(tmp_path / "log", "log.append(entries(1, 3), None)\nlog.append(entries(3, 5), None)")
    wal = tmp_path / "log" / "wal"
    data = bytearray(wal.read_bytes())
    data[30] ^= 0xFF  # inside the first record; the second one is whole
    wal.write_bytes(bytes(data))
    with pytest.raises(CorruptLogError, match="damaged at byte 0: whole records follow it"):
        LogStore(str(tmp_path / "log"))


def test_records_of_an_earlier_pass_are_not_replayed(tmp_path: Path) -> None:
    _crash_after(tmp_path / "log", "log.append(entries(1, 4), None)")
    stale = (tmp_path / "log" / "wal").read_bytes()
    log = LogStore(str(tmp_path / "log"))  # replays, then starts a new pass
    log.compact(3)
    log.close()
    (tmp_path / "log" / "wal").write_bytes(stale)  # the old records are back in the file
    log = LogStore(str(tmp_path / "log"))
    assert (log.first_index, log.last_index) == (4, 3)
    log.close()


def test_many_appends_move_into_lmdb_and_read_back(tmp_path: Path) -> None:
    log = LogStore(str(tmp_path / "log"))
    for i in range(1, 20_001, 50):
        log.append(entries(i, i + 50), (1, 0, i))
    assert log.entries(1, 20_001) == entries(1, 20_001)
    log.compact(15_000)
    assert log.entries(15_001, 20_001) == entries(15_001, 20_001)
    log.close()
    log = LogStore(str(tmp_path / "log"))
    assert (log.first_index, log.last_index, log.hard_state) == (15_001, 20_000, (1, 0, 19_951))
    log.close()


# -- staged appends: encoded here, written and synced by another writer, committed here ---------

def _write(log: LogStore, staged: tuple[int, bytes, tuple[object, ...]]) -> None:
    """What the sync queue does with a staged record: write it at its offset and sync."""
    offset, record, _ = staged
    os.pwrite(log.wal_fd, record, offset)
    os.fdatasync(log.wal_fd)


def test_staged_records_follow_each_other_and_count_once_committed(tmp_path: Path) -> None:
    log = LogStore(str(tmp_path / "log"))
    log.append(entries(1, 3), (1, 0, 2))
    first = log.stage(entries(3, 5), (1, 0, 4))
    second = log.stage(entries(5, 6), None)
    third = log.stage([], (2, 7, 5))  # a hard state alone
    assert first is not None and second is not None and third is not None
    assert second[0] == first[0] + len(first[1]) and third[0] == second[0] + len(second[1])
    assert log.last_index == 2  # nothing counts before its commit
    for staged in (first, second, third):
        _write(log, staged)
        log.commit(staged[2])
    assert log.entries(1, 6) == entries(1, 6)
    assert log.hard_state == (2, 7, 5)
    log.append(entries(6, 7), None)  # appends go on after the staged records
    log.close()
    reopened = LogStore(str(tmp_path / "log"))
    assert reopened.entries(1, 7) == entries(1, 7)
    assert reopened.hard_state == (2, 7, 5)
    reopened.close()


def test_what_staging_leaves_to_append(tmp_path: Path) -> None:
    log = LogStore(str(tmp_path / "log"))
    log.append(entries(1, 5), None)
    assert log.stage(entries(3, 5, term=2), None) is None  # a rewrite
    assert log.stage(entries(6, 7), None) is None  # a gap
    assert log.stage([(5, 1, ENTRY_NORMAL, b"x" * (4 << 20))], None) is None  # too large for the file
    staged = log.stage(entries(5, 6), None)
    assert staged is not None
    with pytest.raises(RuntimeError):
        log.append(entries(6, 7), None)  # appends wait for the staged records
    with pytest.raises(RuntimeError):
        log.compact(4)  # its checkpoint would leave the staged record out
    _write(log, staged)
    log.commit(staged[2])
    log.compact(3)
    assert (log.first_index, log.last_index) == (4, 5)
    log.close()


def test_after_an_abandoned_record_the_next_append_starts_a_new_pass(tmp_path: Path) -> None:
    log = LogStore(str(tmp_path / "log"))
    log.append(entries(1, 3), None)
    lost = log.stage(entries(3, 4), None)
    assert lost is not None
    os.pwrite(log.wal_fd, lost[1][: len(lost[1]) // 2], lost[0])  # half written, then a failure
    log.abandon()
    assert log.stage(entries(3, 4), None) is None  # not behind what the failure left
    log.append(entries(3, 5, term=2), (2, 0, 4))
    again = log.stage(entries(5, 6, term=2), None)
    assert again is not None and again[0] == 0  # the new pass starts the file again
    _write(log, again)
    log.commit(again[2])
    log.close()
    reopened = LogStore(str(tmp_path / "log"))
    assert reopened.entries(1, 6) == entries(1, 3) + entries(3, 6, term=2)
    reopened.close()


def test_a_staged_record_written_before_a_crash_is_replayed(tmp_path: Path) -> None:
    _crash_after(tmp_path / "log", "log.append(entries(1, 3), None)\n"
                                   "offset, record, token = log.stage(entries(3, 5), (1, 0, 4))\n"
                                   "os.pwrite(log.wal_fd, record, offset)\nos.fdatasync(log.wal_fd)")
    log = LogStore(str(tmp_path / "log"))
    assert log.entries(1, 5) == entries(1, 5)
    assert log.hard_state == (1, 0, 4)
    log.close()
