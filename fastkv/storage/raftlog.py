"""The Raft core's storage on the LMDB log: what ``RawNode`` reads, and step 1 of the Ready contract.

``RaftStorage`` answers the core's reads (``hard_state``, ``snapshot``, ``first_index``,
``last_index``, ``term``, ``entries``) from a ``LogStore`` and the newest snapshot, and
``save(ready)`` persists a Ready: an installed snapshot (file written atomically first, then the
log reset to it), then the entries and the hard state in ONE ``LogStore.append`` (one sync).
``save`` runs in the log thread, or on the event loop while the log thread is idle (never both
at once); everything else runs on the event loop.

Entry mapping: the core's entries are ``(term, index, type, data)`` with type EntryNormal or
EntryConfChange; the log keeps fastkv's entry kinds, so that the log reads as what happened:
EntryConfChange -> ENTRY_CONF, an empty normal entry (a new leader's no-op) -> ENTRY_EMPTY, a
normal entry whose data starts with ``TAG_SYNC`` -> ENTRY_SYNC, any other -> ENTRY_NORMAL. The
data is stored unchanged, so the mapping back only needs ``type == ENTRY_CONF``.
"""

from __future__ import annotations

import time
from typing import Any

import msgpack  # type: ignore[import-untyped]

from fastkv import metrics
from fastkv._native.logstore import ENTRY_CONF, ENTRY_EMPTY, ENTRY_NORMAL, ENTRY_SYNC, LogStore
from fastkv._native.raft import (
    CompactedError,
    EntryConfChange,
    EntryNormal,
    HardState,
    Ready,
    UnavailableError,
)
from fastkv._native.raft import Entry as RaftEntry
from fastkv._native.raft import Snapshot as RaftSnapshot
from fastkv.storage.snapshot import Snapshot, Snapshotter

# A store request's entry data: proposals.TAG_REQUEST + id (8) + proposer's now_ns (8) + request.
TAG_SYNC = b"S"  # + id (8) + proposer's now_ns (8): TTL expiry
TAG_MEMBER = b"M"  # + id (8) + membership change (msgpack)
SNAPSHOTS_KEPT = 2

LogTuple = tuple[int, int, int, bytes]


def to_log(e: RaftEntry) -> LogTuple:
    """The log record of a core entry."""
    data = e.data
    if e.type == EntryConfChange:
        kind = ENTRY_CONF
    elif not data:
        kind = ENTRY_EMPTY
    elif data[:1] == TAG_SYNC:
        kind = ENTRY_SYNC
    else:
        kind = ENTRY_NORMAL
    return (e.index, e.term, kind, data)


def from_log(t: LogTuple) -> RaftEntry:
    """The core entry of a log record."""
    return RaftEntry(t[1], t[0], EntryConfChange if t[2] == ENTRY_CONF else EntryNormal, t[3])


class RaftStorage:
    """``LogStore`` + the newest snapshot, as the core's storage.

    ``first_index()`` is the first entry the log still holds; the log may keep entries before
    the newest snapshot (compaction leaves a margin), so ``snapshot().index >= first_index() - 1``.
    """

    def __init__(self, log: LogStore, snapshots: Snapshotter, voters: tuple[int, ...] = ()) -> None:
        self.log = log
        self.snapshots = snapshots
        self._snapshot = RaftSnapshot()
        self.voters = voters
        self.syncs = 0
        self.commit_floor = 0  # the application's applied index: committed, whatever was saved

    # The core's reads ---------------------------------------------------------------------

    def hard_state(self) -> HardState:
        """The saved hard state; its commit index is raised to what is known committed (a commit
        that only moved is saved with the next write, not on its own)."""
        term, vote, commit = self.log.hard_state
        commit = max(commit, self._snapshot.index, min(self.commit_floor, self.log.last_index))
        return HardState(term, vote, commit)

    def snapshot(self) -> RaftSnapshot:
        return self._snapshot

    def first_index(self) -> int:
        return int(self.log.first_index)

    def last_index(self) -> int:
        return int(self.log.last_index)

    def term(self, i: int) -> int:
        """Term of entry ``i``; CompactedError below the log, UnavailableError beyond it."""
        log = self.log
        if i < log.compacted_index:
            raise CompactedError(i)
        if i > log.last_index:
            raise UnavailableError(i)
        return int(log.term(i))

    def entries(self, lo: int, hi: int, max_size: int) -> list[RaftEntry]:
        """Entries ``[lo, hi)``: at least one when any, at most ``max_size`` bytes otherwise."""
        if lo < self.log.first_index:
            raise CompactedError(lo)
        if hi > self.log.last_index + 1:
            raise UnavailableError(hi)
        out: list[RaftEntry] = []
        size = 0
        for t in self.log.entries(lo, hi):
            size += len(t[3]) + 24
            if out and size > max_size:
                break
            out.append(from_log(t))
        return out

    # Snapshots -------------------------------------------------------------------------------

    def set_snapshot(self, snap: RaftSnapshot) -> None:
        """The snapshot the core sends to followers behind the log (recovered or just taken)."""
        self._snapshot = snap

    def create_snapshot(self, index: int, voters: tuple[int, ...], data: bytes) -> RaftSnapshot:
        """Called by ``RawNode.compact``: remember it; ``write_snapshot`` makes it durable."""
        if index > self._snapshot.index:
            self._snapshot = RaftSnapshot(index, int(self.log.term(index)), voters, data)
        return self._snapshot

    def compact(self, index: int) -> None:
        """The log is compacted by ``write_snapshot`` once the snapshot is on disk."""

    def save_snapshot_file(self, snap: RaftSnapshot) -> None:
        """In a worker thread: write ``snap`` atomically (temp, fsync, rename, fsync dir), prune."""
        self.snapshots.save(Snapshot(snap.index, snap.term, encode_snapshot_data(snap)))
        self.snapshots.prune(SNAPSHOTS_KEPT)

    def compact_log(self, index: int, margin: int) -> None:
        """In the log thread: drop the entries every kept snapshot covers, keeping ``margin``
        entries behind the snapshot at ``index``."""
        upto = min([index - margin, *self.snapshots.indices()])
        if self.log.compacted_index < upto <= self.log.last_index:
            self.log.compact(upto)

    # Step 1 of the Ready contract ---------------------------------------------------------------

    def needs_save(self, rd: Ready) -> bool:
        return rd.snapshot is not None or bool(rd.entries) or rd.must_sync

    def save(self, rd: Ready) -> None:
        """Persist ``rd``: snapshot first, then entries + hard state in one sync.
        A hard state whose only change is the commit index rides along with the next write."""
        self.save_many([rd])

    def save_many(self, readies: list[Ready]) -> None:
        """Persist ``readies``, taken from the core in this order, as ``save`` would one by one
        but with one sync for all their entries and the newest hard state; only a snapshot, or
        entries that rewrite earlier ones, start another write."""
        entries: list[LogTuple] = []
        hard: tuple[int, int, int] | None = None
        must_sync = False
        for rd in readies:
            rewrites = entries and rd.entries and rd.entries[0].index != entries[-1][0] + 1
            if rd.snapshot is not None or rewrites:
                self._write(entries, hard, must_sync)
                entries, hard, must_sync = [], None, False
            hs = rd.hard_state
            if hs is not None:
                hard = (hs.term, hs.vote, hs.commit)
            if rd.snapshot is not None:
                snap = rd.snapshot
                self.save_snapshot_file(snap)
                self.log.reset(snap.index, snap.term, hard)
                self._snapshot = snap
                self.syncs += 1
            entries.extend(to_log(e) for e in rd.entries)
            must_sync = must_sync or rd.must_sync
        self._write(entries, hard, must_sync)

    def stage(self, rd: Ready) -> tuple[int, bytes, tuple[Any, ...]] | None:
        """The first half of ``save(rd)`` for a writer on another thread: ``(offset, record,
        token)`` as ``LogStore.stage`` makes them, or None when ``rd`` needs ``save`` (a
        snapshot, a rewrite, a checkpoint due)."""
        if rd.snapshot is not None:
            return None
        hs = rd.hard_state
        hard = (hs.term, hs.vote, hs.commit) if hs is not None else None
        entries = [to_log(e) for e in rd.entries]
        if not entries and (hard is None or not rd.must_sync):
            return None
        staged: tuple[int, bytes, tuple[Any, ...]] | None = self.log.stage(entries, hard)
        return staged

    def commit_staged(self, token: tuple[Any, ...], sync_seconds: float) -> None:
        """The second half: the staged record is durable (``sync_seconds``: its group's sync took
        that long, 0 when another record of the group reports it)."""
        self.log.commit(token)
        if sync_seconds:
            metrics.wal_fsync_seconds.observe(sync_seconds)
            self.syncs += 1

    def _write(self, entries: list[LogTuple], hard: tuple[int, int, int] | None, must_sync: bool) -> None:
        if entries or (hard is not None and must_sync):
            started = time.perf_counter()
            self.log.append(entries, hard)
            metrics.wal_fsync_seconds.observe(time.perf_counter() - started)
            self.syncs += 1

    def save_hard_state(self, hs: HardState) -> None:
        """Write the hard state alone (at a graceful stop, so a restart replays to the commit)."""
        self.log.append([], (hs.term, hs.vote, hs.commit))


def encode_snapshot_data(snap: RaftSnapshot) -> bytes:
    """A snapshot file's payload: the voters, then the application data."""
    return bytes(msgpack.packb([list(snap.voters), snap.data], use_bin_type=True))


def decode_snapshot(snap: Snapshot) -> RaftSnapshot:
    """The core's snapshot from a snapshot file."""
    voters, data = msgpack.unpackb(snap.data, raw=False)
    return RaftSnapshot(snap.index, snap.term, tuple(voters), data)
