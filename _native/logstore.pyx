# cython: language_level=3
"""The replicated log's durable half: entries, hard state and metadata in one LMDB environment.

Layout (three named databases, keys big-endian so LMDB's byte order is index order):

* ``entries``: key = index (8 bytes), value = ``crc32 (4) | term (8) | type (1) | data``;
  the CRC covers the key and everything after the CRC, so a value moved to another key or a
  flipped byte is caught on read (``CorruptLogError``), never served.
* ``state``: the hard state ``(term, vote, commit)`` and the compaction point
  ``(index, term)`` of the last entry dropped by ``compact``, each with its own CRC.
* ``meta``: small application metadata (``get_meta`` / ``put_meta``).

Every write is one write transaction; the environment is opened with ``sync=True`` and
``metasync=True`` so that a commit returns only once the data is on disk: one ``append`` =
one transaction = one sync, however many entries it carries. py-lmdb releases the GIL while it
commits, so a worker thread can sync while the event loop keeps running.
"""

import os
import struct
import zlib

import lmdb

ENTRY_NORMAL = 0
ENTRY_CONF = 1
ENTRY_SYNC = 2
ENTRY_EMPTY = 3

cdef object _KEY = struct.Struct(">Q")
cdef object _HEAD = struct.Struct(">IQB")      # crc, term, type
cdef object _TRIPLE = struct.Struct(">IQQQ")   # crc, a, b, c
cdef object _PAIR = struct.Struct(">IQQ")      # crc, a, b
cdef bytes _HARD_STATE = b"hard_state"
cdef bytes _COMPACTED = b"compacted"


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


cdef class LogStore:
    """An append-only log with truncation at a conflict and compaction of its prefix.

    ``first_index`` is the first entry still held (``compacted + 1``), ``last_index`` the last
    one (equal to the compaction point when the log is empty). ``term(i)`` answers for every
    held entry and for the compaction point itself.
    """

    def __init__(self, str path, long long map_size=1 << 30):
        self.path = path
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
        self._load()

    cdef void _load(self) except *:
        with self._env.begin(buffers=False) as txn:
            raw = txn.get(_HARD_STATE, db=self._state)
            self._hard_state = (0, 0, 0) if raw is None else _decode_record(_TRIPLE, raw, "hard state")
            raw = txn.get(_COMPACTED, db=self._state)
            self.compacted_index, self.compacted_term = (
                (0, 0) if raw is None else _decode_record(_PAIR, raw, "compaction"))
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

    @property
    def hard_state(self):
        """``(term, vote, commit)`` as last saved; ``(0, 0, 0)`` for a new log."""
        return self._hard_state

    def append(self, list entries, hard_state=None):
        """Write ``entries`` (tuples ``(index, term, type, data)``, consecutive indices) and the
        hard state in one transaction with one sync.

        The first entry may start anywhere in ``first_index .. last_index + 1``: entries from there
        on are replaced (a Raft log truncated at a conflict). Raises ``LogFullError`` when the map
        or the disk is full; nothing is written then.
        """
        cdef unsigned long long start = 0, expect = 0, end = 0
        if not entries and hard_state is None:
            return
        if entries:
            start = entries[0][0]
            if start < self.first_index or start > self.last_index + 1:
                raise ValueError(f"append at {start} leaves a gap or rewrites compacted entries "
                                 f"(log holds {self.first_index}..{self.last_index})")
        try:
            with self._env.begin(write=True) as txn:
                if entries:
                    expect = start
                    for index, term, etype, data in entries:
                        if index != expect:
                            raise ValueError(f"entries are not consecutive: {index} after {expect - 1}")
                        expect += 1
                    end = expect - 1
                    self._truncate_after(txn, start)
                    self._put_entries(txn, entries)
                if hard_state is not None:
                    txn.put(_HARD_STATE, _encode_record(_TRIPLE, tuple(hard_state)), db=self._state)
        except (lmdb.MapFullError, lmdb.DiskError) as exc:
            raise LogFullError(f"the log is full: {exc}") from None
        except lmdb.Error as exc:
            if "No space left" in str(exc) or "ENOSPC" in str(exc):
                raise LogFullError(f"the disk is full: {exc}") from None
            raise
        if entries:
            self.last_index = end
        if hard_state is not None:
            self._hard_state = tuple(hard_state)

    cdef void _truncate_after(self, object txn, unsigned long long start) except *:
        cdef unsigned long long i
        if start > self.last_index:
            return
        for i in range(start, self.last_index + 1):
            txn.delete(_key(i), db=self._entries)

    cdef void _put_entries(self, object txn, list entries) except *:
        cdef bytes key
        items = []
        for index, term, etype, data in entries:
            key = _key(index)
            items.append((key, _encode_entry(key, term, etype, bytes(data))))
        cursor = txn.cursor(db=self._entries)
        cursor.putmulti(items, append=True)

    def entries(self, unsigned long long lo, unsigned long long hi):
        """Entries with ``lo <= index < hi`` as ``(index, term, type, data)``, verified against
        their CRC. ``lo`` below ``first_index`` raises ``IndexError`` (compacted)."""
        if lo < self.first_index:
            raise IndexError(f"entries before {self.first_index} are compacted (asked from {lo})")
        if hi > self.last_index + 1:
            hi = self.last_index + 1
        out = []
        if lo >= hi:
            return out
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
        if index == self.compacted_index:
            return self.compacted_term
        if index < self.first_index or index > self.last_index:
            raise IndexError(f"no entry {index} (log holds {self.first_index}..{self.last_index})")
        return self.entries(index, index + 1)[0][1]

    def compact(self, unsigned long long upto_index):
        """Drop every entry with index ``<= upto_index`` (which must be held), remembering its term."""
        cdef unsigned long long i
        if upto_index <= self.compacted_index:
            return
        if upto_index > self.last_index:
            raise IndexError(f"cannot compact to {upto_index}: the log ends at {self.last_index}")
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
        try:
            with self._env.begin(write=True) as txn:
                for i in range(self.first_index, self.last_index + 1):
                    txn.delete(_key(i), db=self._entries)
                txn.put(_COMPACTED, _encode_record(_PAIR, (index, term)), db=self._state)
                if hard_state is not None:
                    txn.put(_HARD_STATE, _encode_record(_TRIPLE, tuple(hard_state)), db=self._state)
        except (lmdb.MapFullError, lmdb.DiskError) as exc:
            raise LogFullError(f"the log is full: {exc}") from None
        self.compacted_index = index
        self.compacted_term = term
        self.first_index = index + 1
        self.last_index = index
        if hard_state is not None:
            self._hard_state = tuple(hard_state)

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
        """Force the environment to disk (a no-op when every commit already syncs)."""
        self._env.sync(True)

    def close(self):
        """Close the environment; the object is unusable afterwards. Idempotent."""
        if self._env is not None:
            self._env.close()
            self._env = None
