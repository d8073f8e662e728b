# cython: language_level=3
"""The replicated log's durable half: a write-ahead file for the newest entries, LMDB for the rest.

Layout of the LMDB environment (three named databases, keys big-endian so LMDB's byte order is
index order):

* ``entries``: key = index (8 bytes), value = ``crc32 (4) | term (8) | type (1) | data``;
  the CRC covers the key and everything after the CRC, so a value moved to another key or a
  flipped byte is caught on read (``CorruptLogError``), never served.
* ``state``: the hard state ``(term, vote, commit)``, the compaction point ``(index, term)`` of
  the last entry dropped by ``compact`` and the salt of the write-ahead file's current pass,
  each with its own CRC.
* ``meta``: small application metadata (``get_meta`` / ``put_meta``).

An LMDB commit that syncs costs two syncs (data pages, then the meta page), so the hot path does
not commit to LMDB: ``append`` writes one record (its entries and the hard state) to ``wal``, a
preallocated file next to the environment, and makes it durable with ONE ``fdatasync``. The
entries stay in memory (the *tail*) until a checkpoint moves them into LMDB in one synced
transaction that also draws a new salt; the file is then written again from its start. A record
is ``crc32 (4) | length (4) | salt (8) | payload``; the CRC covers everything after itself and
only records carrying the salt recorded in LMDB count, so a record of an earlier pass (or user
data inside one) is never replayed, and a record torn by a crash (not acknowledged: the sync
had not returned) ends the replay. A damaged record followed by whole records of the same pass is
not a torn end but damage to acknowledged data: opening then fails with ``CorruptLogError``. Opening replays the records of the current pass and
checkpoints at once, so every pass is written from its start without a crash in between.

Every write is durable when its method returns: an ``append`` that went to the file was synced
once; a checkpoint, ``compact``, ``reset`` and ``put_meta`` are LMDB transactions opened with
``sync=True`` and ``metasync=True``. The environment is never written without a sync, so it is
consistent after any crash, and the file only ever adds what LMDB lacks. The GIL is released
while a write syncs, so a worker thread can sync while the event loop keeps running; readers on
another thread see either the old or the new tail, never a mix.
"""

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_GET_SIZE
from libc.errno cimport EINTR, errno
from posix.types cimport off_t
from posix.unistd cimport pwrite

import logging
import os
import struct
import zlib

import lmdb

cdef extern from "<unistd.h>" nogil:
    int _fdatasync "fdatasync"(int fd)

log = logging.getLogger("fastkv.log")

ENTRY_NORMAL = 0
ENTRY_CONF = 1
ENTRY_SYNC = 2
ENTRY_EMPTY = 3

WAL_NAME = "wal"
WAL_BYTES = 8 << 20          # size of the write-ahead file (preallocated)
CHECKPOINT_ENTRIES = 8192    # entries held in memory before they move into LMDB
_DIRECT_BYTES = WAL_BYTES // 4  # a record this large (or 1/16 of the map) goes straight into LMDB

cdef object _KEY = struct.Struct(">Q")
cdef object _HEAD = struct.Struct(">IQB")      # crc, term, type
cdef object _TRIPLE = struct.Struct(">IQQQ")   # crc, a, b, c
cdef object _PAIR = struct.Struct(">IQQ")      # crc, a, b
cdef object _SINGLE = struct.Struct(">IQ")     # crc, a
cdef object _WAL_HEAD = struct.Struct(">IIQ")  # crc, payload length, salt
cdef object _WAL_BATCH = struct.Struct(">QBQQQI")  # first index, has hard state, term, vote, commit, count
cdef object _WAL_ENTRY = struct.Struct(">QBI")  # term, type, data length
cdef bytes _HARD_STATE = b"hard_state"
cdef bytes _COMPACTED = b"compacted"
cdef bytes _WAL_SALT = b"wal_salt"
cdef tuple _NO_HARD_STATE = (0, 0, 0)


class CorruptLogError(Exception):
    """The log on disk is damaged: a CRC mismatch, a malformed record or a broken LMDB file."""


class LogFullError(Exception):
    """The log could not be written: its map or the disk is full. Nothing of the append was kept."""


cdef inline bytes _key(unsigned long long index):
    return _KEY.pack(index)


cdef bytes _encode_entry(bytes key, unsigned long long term, int etype, bytes data):
    cdef bytes rest = _HEAD.pack(0, term, etype)[4:] + data
    return struct.pack(">I", zlib.crc32(rest, zlib.crc32(key))) + rest


cdef tuple _decode_entry(bytes key, bytes value):
    if len(value) < _HEAD.size:
        raise CorruptLogError(f"log entry {_KEY.unpack(key)[0]} is truncated ({len(value)} bytes)")
    crc, term, etype = _HEAD.unpack_from(value)
    if zlib.crc32(value[4:], zlib.crc32(key)) != crc:
        raise CorruptLogError(f"log entry {_KEY.unpack(key)[0]} fails its CRC check")
    return (_KEY.unpack(key)[0], term, etype, value[_HEAD.size:])


cdef bytes _encode_record(object fmt, tuple values):
    cdef bytes body = fmt.pack(0, *values)[4:]
    return struct.pack(">I", zlib.crc32(body)) + body


cdef tuple _decode_record(object fmt, bytes value, str what):
    if len(value) != fmt.size:
        raise CorruptLogError(f"the {what} record has {len(value)} bytes, expected {fmt.size}")
    fields = fmt.unpack(value)
    if zlib.crc32(value[4:]) != fields[0]:
        raise CorruptLogError(f"the {what} record fails its CRC check")
    return tuple(fields[1:])


cdef bytes _wal_payload(unsigned long long first, list entries, tuple hard):
    """One record's payload: where its entries start, the hard state (if any), the entries."""
    cdef tuple hs = _NO_HARD_STATE if hard is None else hard
    parts = [_WAL_BATCH.pack(first, hard is not None, hs[0], hs[1], hs[2], len(entries))]
    for index, term, etype, data in entries:
        parts.append(_WAL_ENTRY.pack(term, etype, len(data)))
        parts.append(data)
    return b"".join(parts)


cdef bytes _wal_record(bytes payload, unsigned long long salt):
    cdef bytes rest = _WAL_HEAD.pack(0, len(payload), salt)[4:] + payload
    return struct.pack(">I", zlib.crc32(rest)) + rest


cdef tuple _wal_parse(bytes payload):
    """``(first index, hard state or None, entries)`` of a record's payload (its CRC held)."""
    first, has_hs, term, vote, commit, count = _WAL_BATCH.unpack_from(payload)
    cdef Py_ssize_t off = _WAL_BATCH.size
    cdef unsigned long long index = first
    entries = []
    for _ in range(count):
        eterm, etype, size = _WAL_ENTRY.unpack_from(payload, off)
        off += _WAL_ENTRY.size
        if off + size > len(payload):
            raise CorruptLogError("a record of the write-ahead file is malformed")
        entries.append((index, eterm, etype, payload[off:off + size]))
        off += size
        index += 1
    return first, ((term, vote, commit) if has_hs else None), entries


cdef unsigned long long _new_salt():
    return int.from_bytes(os.urandom(8), "big") or 1


cdef void _fsync_dir(str path) except *:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


cdef class LogStore:
    """An append-only log with truncation at a conflict and compaction of its prefix.

    ``first_index`` is the first entry still held (``compacted + 1``), ``last_index`` the last
    one (equal to the compaction point when the log is empty). ``term(i)`` answers for every
    held entry and for the compaction point itself. Entries up to ``_flushed`` are in LMDB,
    the ones after it in ``_tail`` (and in the write-ahead file).
    """

    def __init__(self, str path, long long map_size=1 << 30):
        self.path = path
        self._wal_fd = -1
        self._direct_bytes = min(_DIRECT_BYTES, map_size // 16)
        os.makedirs(path, exist_ok=True)
        try:
            self._env = lmdb.open(path, map_size=map_size, max_dbs=4, sync=True, metasync=True,
                                  writemap=False, subdir=True, lock=True)
            self._entries = self._env.open_db(b"entries")
            self._state = self._env.open_db(b"state")
            self._meta = self._env.open_db(b"meta")
        except (lmdb.InvalidError, lmdb.CorruptedError, lmdb.VersionMismatchError,
                lmdb.BadValsizeError, lmdb.IncompatibleError) as exc:
            if self._env is not None:
                self._env.close()
                self._env = None
            raise CorruptLogError(f"the log at {path} is not a readable LMDB environment: {exc}") from None
        try:
            self._load()
            self._open_wal()
            self._replay()
            self._checkpoint(0, None, None)  # a new pass: whatever a crash left in the file is old
        except BaseException:
            self._tail = []  # a failed open writes nothing: close() must not move a partial replay
            self.close()
            raise

    cdef void _load(self) except *:
        with self._env.begin(buffers=False) as txn:
            raw = txn.get(_HARD_STATE, db=self._state)
            self._hard_state = (0, 0, 0) if raw is None else _decode_record(_TRIPLE, raw, "hard state")
            raw = txn.get(_COMPACTED, db=self._state)
            self.compacted_index, self.compacted_term = (
                (0, 0) if raw is None else _decode_record(_PAIR, raw, "compaction"))
            raw = txn.get(_WAL_SALT, db=self._state)
            self._salt = 0 if raw is None else _decode_record(_SINGLE, raw, "write-ahead salt")[0]
            cursor = txn.cursor(db=self._entries)
            if cursor.last():
                self.last_index = _KEY.unpack(cursor.key())[0]
                cursor.first()
                self.first_index = _KEY.unpack(cursor.key())[0]
                if self.first_index != self.compacted_index + 1:
                    raise CorruptLogError(f"the log starts at {self.first_index} but was compacted to "
                                          f"{self.compacted_index}: entries are missing")
                if self.last_index - self.first_index + 1 != txn.stat(self._entries)["entries"]:
                    raise CorruptLogError("the log has a gap between its first and last entries")
            else:
                self.first_index = self.compacted_index + 1
                self.last_index = self.compacted_index
        self._flushed = self.last_index
        self._tail = []

    cdef void _open_wal(self) except *:
        """Open the write-ahead file, creating and preallocating it durably when needed."""
        name = os.path.join(self.path, WAL_NAME)
        self._wal_fd = os.open(name, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        if os.fstat(self._wal_fd).st_size < WAL_BYTES:
            try:
                os.posix_fallocate(self._wal_fd, 0, WAL_BYTES)
            except OSError as exc:
                raise LogFullError(f"cannot allocate the write-ahead file {name}: {exc}") from None
            os.fsync(self._wal_fd)
            _fsync_dir(self.path)
        self._wal_offset = 0

    cdef void _replay(self) except *:
        """Bring back the records of the current pass (written after the last checkpoint)."""
        cdef Py_ssize_t off = 0, end
        if self._salt == 0:
            return
        data = os.pread(self._wal_fd, WAL_BYTES, 0)
        while off + _WAL_HEAD.size <= len(data):
            crc, length, salt = _WAL_HEAD.unpack_from(data, off)
            end = off + _WAL_HEAD.size + length
            if salt != self._salt or end > len(data) or zlib.crc32(data[off + 4:end]) != crc:
                self._check_end_of_pass(data, off, salt == self._salt)
                break  # the end of this pass (or a record torn by a crash: never acknowledged)
            first, hard, entries = _wal_parse(data[off + _WAL_HEAD.size:end])
            if entries:
                if first <= self._flushed or first > self.last_index + 1:
                    raise CorruptLogError(f"a record of the write-ahead file starts at {first} but the "
                                          f"log holds {self.first_index}..{self.last_index}")
                self._add_to_tail(first, entries)
            if hard is not None:
                self._hard_state = hard
            off = end

    cdef void _check_end_of_pass(self, bytes data, Py_ssize_t off, bint torn) except *:
        """The replay stops at ``off``. That is the end of the pass, or a record torn by a crash
        (``torn``: it carries this pass's salt but is incomplete) — unless a whole record of this
        pass follows: then a record in the middle was damaged after it was acknowledged, and
        replaying only what comes before it would silently drop committed entries."""
        cdef bytes salt = _SINGLE.pack(0, self._salt)[4:]
        cdef Py_ssize_t at = data.find(salt, off + 9)
        while at != -1:
            start = at - 8
            crc, length, _ = _WAL_HEAD.unpack_from(data, start)
            end = start + _WAL_HEAD.size + length
            if end <= len(data) and zlib.crc32(data[start + 4:end]) == crc:
                raise CorruptLogError(f"the write-ahead file {WAL_NAME} is damaged at byte {off}: "
                                      f"whole records follow it (at byte {start})")
            at = data.find(salt, at + 1)
        if torn:
            log.warning("dropped a record torn by a crash at byte %d of %s (it was never acknowledged)",
                        off, WAL_NAME)

    @property
    def hard_state(self):
        """``(term, vote, commit)`` as last saved; ``(0, 0, 0)`` for a new log."""
        return self._hard_state

    def append(self, list entries, hard_state=None):
        """Write ``entries`` (tuples ``(index, term, type, data)``, consecutive indices) and the
        hard state durably, with one sync.

        The first entry may start anywhere in ``first_index .. last_index + 1``: entries from there
        on are replaced (a Raft log truncated at a conflict). Raises ``LogFullError`` when the map
        or the disk is full; nothing of the append is kept then.
        """
        cdef unsigned long long start
        cdef tuple hard = None if hard_state is None else tuple(hard_state)
        if not entries and hard is None:
            return
        self._not_staged("append")
        start, entries = self._checked(entries, self.last_index)
        if entries and start <= self._flushed:  # a conflict below the tail: rewrite LMDB
            self._checkpoint(start, entries, hard)
            return
        payload = _wal_payload(start, entries, hard)
        if self._new_pass or not self._fits(len(payload) + _WAL_HEAD.size, len(entries)):
            self._checkpoint(start, entries, hard)  # tail and this append: one LMDB transaction
            return
        self._write_wal(_wal_record(payload, self._salt))
        self._add(start, entries, hard)

    def stage(self, list entries, hard_state=None):
        """The first half of an ``append`` that the write-ahead file takes as one record, for a
        writer on another thread (``SyncQueue`` on ``wal_fd``): checked and encoded here, then
        written at its offset and synced there, then ``commit``-ted here, in staging order.
        ``entries`` must follow the last one staged (or the log's last, when none is).

        Returns ``(offset, record, token)``, or None when this append needs ``append`` (it
        rewrites entries, is too large, the file or the tail would be full, a new pass is due):
        then only once every staged record is committed or abandoned. ``last_index`` and the
        tail change only at ``commit``."""
        cdef unsigned long long start
        cdef tuple hard = None if hard_state is None else tuple(hard_state)
        cdef bytes record
        cdef long long offset = self._wal_offset + self._staged_bytes
        if not entries and hard is None:
            raise ValueError("nothing to stage")
        if self._new_pass or (entries and entries[0][0] != self._staged_last() + 1):
            return None
        start, entries = self._checked(entries, self._staged_last())
        record = _wal_record(_wal_payload(start, entries, hard), self._salt)
        if not self._fits(len(record), self._staged_entries + len(entries)):
            return None
        self._staged_bytes += len(record)
        self._staged_entries += len(entries)
        self._staged_count += 1
        if entries:
            self._staged_to = start + len(entries) - 1
        return offset, record, (start, entries, hard, len(record))

    def commit(self, tuple token):
        """The oldest staged record (``token`` from ``stage``) is written and synced: its entries
        join the log and its hard state is the saved one."""
        start, entries, hard, size = token
        self._staged_bytes -= size
        self._staged_entries -= len(entries)
        self._staged_count -= 1
        self._wal_offset += size
        self._add(start, entries, hard)

    def abandon(self):
        """No staged record counts any more (a write or sync failed, or will not be waited
        for): forget them all, and start a new pass before the file is written again."""
        self._staged_bytes = self._staged_entries = self._staged_count = 0
        self._new_pass = True

    @property
    def wal_fd(self):
        """The write-ahead file's descriptor, for the writer of staged records."""
        return self._wal_fd

    cdef unsigned long long _staged_last(self):
        return self._staged_to if self._staged_count else self.last_index

    cdef tuple _checked(self, list entries, unsigned long long last):
        """``(start, entries)``: where ``entries`` start (after ``last`` when there are none)
        and the entries as tuples of bytes, checked to be consecutive and to start within
        ``first_index .. last + 1``."""
        cdef unsigned long long start, expect
        if not entries:
            return last + 1, entries
        start = entries[0][0]
        if start < self.first_index or start > last + 1:
            raise ValueError(f"append at {start} leaves a gap or rewrites compacted entries "
                             f"(log holds {self.first_index}..{last})")
        expect = start
        normal = []
        for index, term, etype, data in entries:
            if index != expect:
                raise ValueError(f"entries are not consecutive: {index} after {expect - 1}")
            expect += 1
            normal.append((index, term, etype, bytes(data)))
        return start, normal

    cdef bint _fits(self, Py_ssize_t record_size, Py_ssize_t new_entries):
        """Whether a record of ``record_size`` bytes bringing ``new_entries`` more (beyond what
        is staged) still goes to the write-ahead file rather than into LMDB."""
        return (record_size <= self._direct_bytes
                and self._wal_offset + self._staged_bytes + record_size <= WAL_BYTES
                and len(self._tail) + new_entries <= CHECKPOINT_ENTRIES)

    cdef void _add(self, unsigned long long start, list entries, tuple hard) except *:
        if entries:
            self._add_to_tail(start, entries)
        if hard is not None:
            self._hard_state = hard

    cdef void _not_staged(self, str what) except *:
        if self._staged_count:
            raise RuntimeError(f"{what} while {self._staged_count} staged records are not committed")

    cdef void _write_wal(self, bytes record) except *:
        """Write ``record`` at the current offset and ``fdatasync``, both with the GIL released
        once: a thread that syncs while the event loop runs waits for the GIL once, not twice."""
        cdef const char *data = PyBytes_AS_STRING(record)
        cdef Py_ssize_t size = PyBytes_GET_SIZE(record)
        cdef Py_ssize_t written = 0
        cdef ssize_t n = 0
        cdef int failed = 0, fd = self._wal_fd
        cdef off_t offset = self._wal_offset
        with nogil:
            while written < size:
                n = pwrite(fd, data + written, size - written, offset + written)
                if n > 0:
                    written += n
                elif n < 0 and errno == EINTR:
                    continue
                else:
                    failed = errno if n < 0 else 0
                    break
            if written == size and _fdatasync(fd) != 0:
                failed = errno
        if failed or written != size:
            self._new_pass = True  # bytes of this record may be on disk: never write behind them
        if failed in (28, 122):  # ENOSPC, EDQUOT
            raise LogFullError(f"the disk is full: {os.strerror(failed)}")
        if failed:
            raise OSError(failed, os.strerror(failed), WAL_NAME)
        if written != size:
            raise LogFullError(f"short write to the write-ahead file ({written} of {size} bytes)")
        self._wal_offset += size

    cdef void _add_to_tail(self, unsigned long long start, list entries) except *:
        """Put ``entries`` (from ``start``, after ``_flushed``) in the tail, replacing what they
        overlap. A reader on another thread holds the old list: a truncation makes a new one."""
        cdef list tail = self._tail
        cdef Py_ssize_t keep = start - self._flushed - 1
        if keep < len(tail):
            self._tail = tail[:keep] + entries
        else:
            tail.extend(entries)
        self.last_index = start + len(entries) - 1

    cdef void _checkpoint(self, unsigned long long start, list entries, tuple hard) except *:
        """One synced LMDB transaction: the tail (up to ``start`` when ``entries`` replace the
        rest), ``entries``, the hard state and a new salt; the file starts a new pass. LMDB is
        truncated at ``start`` when ``entries`` begin at or below ``_flushed``."""
        self._not_staged("a checkpoint")
        cdef list tail = self._tail
        cdef unsigned long long flushed = self._flushed, last = self.last_index
        cdef unsigned long long salt = _new_salt()
        cdef bint truncate = bool(entries) and start <= flushed
        cdef tuple hs = self._hard_state if hard is None else hard
        if not entries:
            items = tail
        elif truncate:
            items = entries
        else:
            items = tail[:start - flushed - 1] + entries
        try:
            with self._env.begin(write=True) as txn:
                if truncate:
                    self._truncate_after(txn, start)
                if items:
                    self._put_entries(txn, items)
                txn.put(_HARD_STATE, _encode_record(_TRIPLE, hs), db=self._state)
                txn.put(_WAL_SALT, _encode_record(_SINGLE, (salt,)), db=self._state)
        except (lmdb.MapFullError, lmdb.DiskError) as exc:
            raise LogFullError(f"the log is full: {exc}") from None
        except lmdb.Error as exc:
            if "No space left" in str(exc) or "ENOSPC" in str(exc):
                raise LogFullError(f"the disk is full: {exc}") from None
            raise
        if entries:
            last = entries[len(entries) - 1][0]
        self._tail = []
        self._flushed = self.last_index = last
        self._salt = salt
        self._wal_offset = 0
        self._new_pass = False
        self._hard_state = hs

    cdef void _flush(self) except *:
        """Move the tail into LMDB (before LMDB alone is read or rewritten)."""
        if self._tail:
            self._checkpoint(0, None, None)

    cdef void _truncate_after(self, object txn, unsigned long long start) except *:
        cdef unsigned long long i
        if start > self._flushed:
            return
        for i in range(start, self._flushed + 1):
            txn.delete(_key(i), db=self._entries)

    cdef void _put_entries(self, object txn, list entries) except *:
        cdef bytes key
        items = []
        for index, term, etype, data in entries:
            key = _key(index)
            items.append((key, _encode_entry(key, term, etype, data)))
        cursor = txn.cursor(db=self._entries)
        cursor.putmulti(items, append=True)

    def entries(self, unsigned long long lo, unsigned long long hi):
        """Entries with ``lo <= index < hi`` as ``(index, term, type, data)``, those read from
        LMDB verified against their CRC. ``lo`` below ``first_index`` raises ``IndexError``."""
        cdef list tail = self._tail
        cdef unsigned long long flushed = self._flushed
        if lo < self.first_index:
            raise IndexError(f"entries before {self.first_index} are compacted (asked from {lo})")
        if hi > self.last_index + 1:
            hi = self.last_index + 1
        if lo >= hi:
            return []
        if lo > flushed:
            return tail[lo - flushed - 1:hi - flushed - 1]
        out = self._read(lo, min(hi, flushed + 1))
        if hi > flushed + 1:
            out.extend(tail[:hi - flushed - 1])
        return out

    cdef list _read(self, unsigned long long lo, unsigned long long hi):
        """Entries ``[lo, hi)`` from LMDB, every one CRC-checked; all must be there."""
        out = []
        with self._env.begin(buffers=False) as txn:
            cursor = txn.cursor(db=self._entries)
            if not cursor.set_key(_key(lo)):
                raise CorruptLogError(f"log entry {lo} is missing")
            for key, value in cursor:
                if _KEY.unpack(key)[0] >= hi:
                    break
                entry = _decode_entry(key, value)
                if entry[0] != lo + len(out):
                    raise CorruptLogError(f"log entry {lo + len(out)} is missing")
                out.append(entry)
        if <unsigned long long>len(out) != hi - lo:
            raise CorruptLogError(f"log entries {lo + len(out)}..{hi - 1} are missing")
        return out

    def term(self, unsigned long long index):
        """The term of entry ``index`` (also of the compaction point); ``IndexError`` outside."""
        cdef list tail = self._tail
        cdef unsigned long long flushed = self._flushed
        if index == self.compacted_index:
            return self.compacted_term
        if index < self.first_index or index > self.last_index:
            raise IndexError(f"no entry {index} (log holds {self.first_index}..{self.last_index})")
        if index > flushed:
            return tail[index - flushed - 1][1]
        return self._read(index, index + 1)[0][1]

    def compact(self, unsigned long long upto_index):
        """Drop every entry with index ``<= upto_index`` (which must be held), remembering its term."""
        cdef unsigned long long i
        if upto_index <= self.compacted_index:
            return
        if upto_index > self.last_index:
            raise IndexError(f"cannot compact to {upto_index}: the log ends at {self.last_index}")
        if upto_index > self._flushed:
            self._flush()
        term = self.term(upto_index)
        with self._env.begin(write=True) as txn:
            for i in range(self.first_index, upto_index + 1):
                txn.delete(_key(i), db=self._entries)
            txn.put(_COMPACTED, _encode_record(_PAIR, (upto_index, term)), db=self._state)
        self.compacted_index = upto_index
        self.compacted_term = term
        self.first_index = upto_index + 1

    def reset(self, unsigned long long index, unsigned long long term, hard_state=None):
        """Drop every entry and make ``(index, term)`` the compaction point (a follower installing
        a snapshot that is ahead of its log), with the hard state, in one synced transaction."""
        cdef unsigned long long i
        cdef unsigned long long salt = _new_salt()
        cdef tuple hs = self._hard_state if hard_state is None else tuple(hard_state)
        self._not_staged("a reset")
        try:
            with self._env.begin(write=True) as txn:
                for i in range(self.first_index, self._flushed + 1):
                    txn.delete(_key(i), db=self._entries)
                txn.put(_COMPACTED, _encode_record(_PAIR, (index, term)), db=self._state)
                txn.put(_HARD_STATE, _encode_record(_TRIPLE, hs), db=self._state)
                txn.put(_WAL_SALT, _encode_record(_SINGLE, (salt,)), db=self._state)
        except (lmdb.MapFullError, lmdb.DiskError) as exc:
            raise LogFullError(f"the log is full: {exc}") from None
        self._tail = []
        self._flushed = index
        self._salt = salt
        self._wal_offset = 0
        self._new_pass = False
        self.compacted_index = index
        self.compacted_term = term
        self.first_index = index + 1
        self.last_index = index
        self._hard_state = hs

    def get_meta(self, bytes key):
        """The metadata value stored under ``key``, or None."""
        with self._env.begin(buffers=False) as txn:
            return txn.get(key, db=self._meta)

    def put_meta(self, bytes key, bytes value):
        """Store one metadata value (its own synced transaction)."""
        try:
            with self._env.begin(write=True) as txn:
                txn.put(key, value, db=self._meta)
        except (lmdb.MapFullError, lmdb.DiskError) as exc:
            raise LogFullError(f"the log is full: {exc}") from None

    def sync(self):
        """Move the entries held in memory into LMDB (every write is already durable)."""
        self._flush()

    def close(self):
        """Move the tail into LMDB and close; the object is unusable afterwards. Idempotent."""
        if self._env is not None:
            try:
                if self._wal_fd >= 0:
                    self._flush()
            except LogFullError:
                pass  # the entries stay in the write-ahead file, durable; the next open replays them
            finally:
                self._env.close()
                self._env = None
        if self._wal_fd >= 0:
            os.close(self._wal_fd)
            self._wal_fd = -1
