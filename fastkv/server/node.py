"""The member: where the log, the store and the watch hub meet asyncio.

Every change goes through the log, in the sequence Raft uses:

    propose -> append (index, term, type, data) -> persisted (one LMDB sync per batch)
            -> committed index advances -> apply in index order -> resolve the proposer

Group commit: proposals that arrive while a sync is in flight wait in ``_pending`` and form
the next append; the first proposal after an idle period is written at once. The sync runs in a
single worker thread so the event loop keeps accepting requests meanwhile.

Commit rule (``_quorum_index``): with one voter an entry is committed once it is durable on
this member's disk. With more voters this member alone cannot commit; the consensus layer
replaces exactly this rule (and feeds ``persisted`` indices of the other members).

Entry types: NORMAL (``now_ns`` of the proposer, 8 bytes big-endian, then a store request made
by ``encode_request``: the time stamp makes replay produce byte-identical events), SYNC (TTL
expiry; data = the proposer's ``now_ns``), EMPTY (a new leader's no-op), CONF (a membership
change, ``membership.encode_change``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import struct
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from fastkv import identity, metrics
from fastkv._native.logstore import (
    ENTRY_CONF,
    ENTRY_EMPTY,
    ENTRY_NORMAL,
    ENTRY_SYNC,
    CorruptLogError,
    LogStore,
)
from fastkv._native.store import OP_SET, Event, Store, V2Error, encode_request
from fastkv._native.watch import WatchHub
from fastkv.server import membership
from fastkv.server.membership import Member, MembershipError
from fastkv.storage.snapshot import Snapshot, Snapshotter

log = logging.getLogger("fastkv.server")

_STAMP = struct.Struct(">Q")
SWEEP_INTERVAL_S = 0.5
REPLAY_CHUNK = 10_000
SNAPSHOTS_KEPT = 2
COMPACT_MARGIN = 5000


class ProposalTimeout(Exception):
    """A proposal could not commit in time (HTTP 500, error 300)."""

    def __init__(self, message: str = "etcdserver: request timed out") -> None:
        super().__init__(message)


@dataclass(frozen=True)
class NodeConfig:
    """Who this member is and how it behaves; ``initial_members`` seeds a fresh log."""

    name: str
    member_id: int
    cluster_id: int
    peer_urls: tuple[str, ...]
    client_urls: tuple[str, ...]
    initial_members: tuple[tuple[int, tuple[str, ...]], ...]
    token: str = "etcd-cluster"
    snapshot_count: int = 100_000
    proposal_timeout_s: float = 7.0
    strict_reconfig: bool = True


# A proposal on its way: (type, data, future or None, deadline on the monotonic clock).
_Proposal = tuple[int, bytes, "asyncio.Future[Any] | None", float]


class Node:
    """One member. Build it (recovers store from snapshot + log), ``await start()``, ``await stop()``."""

    def __init__(self, log_store: LogStore, snapshots: Snapshotter, config: NodeConfig,
                 clock: Callable[[], int] = time.time_ns) -> None:
        self.log = log_store
        self.snapshots = snapshots
        self.config = config
        self.clock = clock
        self.name = config.name
        self.member_id = config.member_id
        self.cluster_id = config.cluster_id
        self.start_time_ns = clock()
        self.leader_since_ns = 0
        self.send_append_count = 0
        self.recv_append_count = 0
        self.sync_count = 0
        self.term, self.vote, self.commit_index = log_store.hard_state
        self.applied_index = 0
        self.applied_term = 0
        self.snapshot_index = 0
        self._pending: list[_Proposal] = []
        self._unapplied: deque[tuple[int, int, int, bytes, asyncio.Future[Any] | None, float]] = deque()
        self._writing = False
        self._stopping = False
        self._idle: asyncio.Event | None = None
        self._sync_proposed = False
        self._members: list[Member] = []
        self._removed: set[int] = set()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="fastkv-log")
        self._snapshot_task: asyncio.Future[None] | None = None
        self._ticker: asyncio.Task[None] | None = None
        self.store = Store()
        self.hub = WatchHub(self.store.history)
        self._recover()

    # ------------------------------------------------------------------ recovery

    def _recover(self) -> None:
        """Latest valid snapshot + ``Store.restore`` + replay of the committed log after it."""
        snap = self.snapshots.load_latest()
        for problem in self.snapshots.skipped:
            log.warning("skipping a damaged snapshot: %s", problem)
        store = Store.restore(snap.data) if snap else Store()
        self.store, self.hub = store, WatchHub(store.history)
        if snap:
            self.applied_index = self.snapshot_index = snap.index
            self.applied_term = snap.term
        if self.applied_index < self.log.compacted_index or self.applied_index > self.log.last_index:
            raise CorruptLogError(
                f"the newest intact snapshot is at index {self.applied_index} but the log holds "
                f"{self.log.first_index}..{self.log.last_index}: entries in between are lost")
        if snap:
            self._reload_members()  # without a snapshot the members come with the replayed CONF entries
        self._replay(self.applied_index + 1, self.log.last_index)
        self._last_index = self.log.last_index

    def _replay(self, lo: int, last: int) -> None:
        """Apply the log from ``lo`` as far as it is committed: up to the saved commit index, and
        beyond it while this member is the only voter (its own durable copy is then a quorum)."""
        while lo <= last:
            hi = min(lo + REPLAY_CHUNK, last + 1)
            for index, term, etype, data in self.log.entries(lo, hi):
                self._commit_to(self._quorum_index(index))
                if index > self.commit_index:
                    return
                self._apply_entry(index, term, etype, data)
            lo = hi

    # ------------------------------------------------------------------ life cycle

    async def start(self) -> None:
        """Become leader of the next term: seed a fresh log with the initial members, append the
        EMPTY entry, publish this member's attributes and the cluster version. Returns once they
        are applied, so the first client write gets etcd's indices."""
        self._idle = asyncio.Event()
        self._idle.set()
        if self.log.last_index == 0:
            await self._bootstrap()
        self._ticker = asyncio.get_running_loop().create_task(self._tick_forever())
        if not self._has_quorum():
            log.warning("%d voting members and no way to reach them: no leader, writes will time out",
                        len(self._members))
            return
        self.term += 1
        self.vote = self.member_id
        self.leader_since_ns = self.clock()
        startup = [self._submit(ENTRY_EMPTY, b""), self._publish_attributes()]
        if self._cluster_version() != membership.CLUSTER_VERSION:
            startup.append(self._submit_request(encode_request(
                OP_SET, membership.VERSION_KEY, membership.CLUSTER_VERSION)))
        await asyncio.gather(*startup)

    async def _bootstrap(self) -> None:
        """Term 1: one CONF entry per initial member, committed by definition (as etcd does)."""
        members = sorted(self.config.initial_members)
        entries = [(i + 1, 1, ENTRY_CONF, membership.encode_change(membership.CHANGE_ADD, mid, urls))
                   for i, (mid, urls) in enumerate(members)]
        hard_state = (1, 0, len(entries))
        await asyncio.get_running_loop().run_in_executor(self._executor, self.log.append, entries, hard_state)
        self.term, self.commit_index, self._last_index = 1, len(entries), len(entries)
        for entry in entries:
            self._apply_entry(*entry)

    def _publish_attributes(self) -> asyncio.Future[Any]:
        key = membership.member_key(self.member_id) + "/attributes"
        value = membership.attributes(self.name, self.config.client_urls)
        return self._submit_request(encode_request(OP_SET, key, value))

    def _cluster_version(self) -> str | None:
        node = self.store.node(membership.VERSION_KEY)
        return node.value if node is not None else None

    async def stop(self) -> None:
        """Refuse new proposals, let the batch in flight finish its sync and apply, close the log."""
        self._stopping = True
        if self._ticker is not None:
            self._ticker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._ticker
        if self._idle is not None:
            await self._idle.wait()
        if self._snapshot_task is not None:
            with contextlib.suppress(Exception):
                await self._snapshot_task
        stopped = V2Error(300, "etcdserver: server stopped", 0)
        for pending in self._pending:
            _settle(pending[2], stopped)
        for unapplied in self._unapplied:
            _settle(unapplied[4], stopped)
        self._pending.clear()
        self._executor.shutdown(wait=True)
        self.log.close()

    # ------------------------------------------------------------------ proposing

    async def propose(self, request: bytes) -> Event:
        """Run a store request through the log: the Event, or the V2Error the store raised.
        Raises ``ProposalTimeout`` when it cannot commit in time."""
        if self._stopping:
            raise V2Error(300, "etcdserver: server stopped", 0)
        event: Event = await self._submit_request(request)
        return event

    def _submit_request(self, request: bytes) -> asyncio.Future[Any]:
        return self._submit(ENTRY_NORMAL, _STAMP.pack(self.clock()) + request)

    def _submit(self, etype: int, data: bytes) -> asyncio.Future[Any]:
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._pending.append((etype, data, future, time.monotonic() + self.config.proposal_timeout_s))
        self._write_next()
        return future

    def _write_next(self) -> None:
        """Append everything pending as one batch, unless a sync is already in flight."""
        if self._writing or not self._pending:
            return
        batch, self._pending = self._pending, []
        first = self._last_index + 1
        term = self.term
        entries = [(first + i, term, p[0], p[1]) for i, p in enumerate(batch)]
        self._unapplied.extend((first + i, term, p[0], p[1], p[2], p[3]) for i, p in enumerate(batch))
        self._last_index += len(batch)
        self._writing = True
        if self._idle is not None:
            self._idle.clear()
        metrics.proposals_pending.set(len(self._unapplied))
        # Unchanged term and vote: skip the record; the commit index is recomputed on restart.
        changed = (term, self.vote) != self.log.hard_state[:2]
        hard_state = (term, self.vote, self.commit_index) if changed else None
        loop = asyncio.get_running_loop()
        done = loop.run_in_executor(self._executor, self._append, entries, hard_state)
        done.add_done_callback(lambda f: self._on_persisted(f, first, len(batch)))

    def _append(self, entries: list[tuple[int, int, int, bytes]],
                hard_state: tuple[int, int, int] | None) -> float:
        """In the log thread: one transaction, one sync; returns how long it took."""
        started = time.perf_counter()
        self.log.append(entries, hard_state)
        return time.perf_counter() - started

    def _on_persisted(self, done: asyncio.Future[float], first: int, count: int) -> None:
        self._writing = False
        error = done.exception()
        if error is not None:
            self._drop_failed_batch(first, count, error)
        else:
            self.sync_count += 1
            metrics.wal_fsync_seconds.observe(done.result())
            self._commit_to(self._quorum_index(first + count - 1))
        self._write_next()  # the next batch syncs while this one is applied
        if error is None:
            self._apply_committed()
        if not self._writing and self._idle is not None:
            self._idle.set()

    def _drop_failed_batch(self, first: int, count: int, error: BaseException) -> None:
        """The append did not happen: forget its entries and tell their proposers."""
        log.error("log append of entries %d..%d failed: %s", first, first + count - 1, error)
        failure = V2Error(300, str(error), 0)
        for _ in range(count):
            _settle(self._unapplied.pop()[4], failure)
        self._last_index = first - 1
        metrics.proposals_pending.set(len(self._unapplied))

    def _quorum_index(self, persisted: int) -> int:
        """The highest index a quorum holds durably: this member alone when it is the only voter."""
        return persisted if len(self._members) <= 1 else self.commit_index

    def _commit_to(self, index: int) -> None:
        if index > self.commit_index:
            metrics.proposals_committed.inc(index - self.commit_index)
            self.commit_index = index

    def _apply_committed(self) -> None:
        unapplied = self._unapplied
        while unapplied and unapplied[0][0] <= self.commit_index:
            index, term, etype, data, future, _ = unapplied.popleft()
            _settle(future, self._apply_entry(index, term, etype, data))
        metrics.proposals_pending.set(len(unapplied))

    # ------------------------------------------------------------------ applying

    def _apply_entry(self, index: int, term: int, etype: int, data: bytes) -> Any:
        """Apply one committed entry; returns its result (an exception instance on failure)."""
        result: Any = None
        if etype == ENTRY_NORMAL:
            result = self._apply_request(data)
        elif etype == ENTRY_SYNC:
            result = self._notify_all(self.store.delete_expired(_STAMP.unpack_from(data)[0]))
        elif etype == ENTRY_CONF:
            result = self._apply_conf(data)
        self.applied_index, self.applied_term = index, term
        metrics.proposals_applied.inc()
        if index - self.snapshot_index >= self.config.snapshot_count and self._snapshot_task is None:
            self._take_snapshot()
        return result

    def _apply_request(self, data: bytes) -> Event | V2Error:
        try:
            event = self.store.apply(data[8:], _STAMP.unpack_from(data)[0])
        except V2Error as error:
            return error
        if event.action != "get":
            self._notify_all([event])
        return event

    def _apply_conf(self, data: bytes) -> Member | MembershipError | None:
        try:
            member, events = membership.apply_change(self.store, data, 0)  # no TTLs: time plays no part
        except MembershipError as error:
            return error
        self._notify_all(events)
        return member

    def _notify_all(self, events: list[Event]) -> list[Event]:
        for event in events:
            try:
                self.hub.notify(event)
            except Exception:  # a broken watcher must not stall the log
                log.exception("notifying watchers of index %d failed", event.index)
            if event.key.startswith("/0/"):
                self._member_changed(event.key)
        return events

    def _reload_members(self) -> None:
        """Read the whole membership from the store (at recovery, as etcd does)."""
        self._members, self._removed = membership.read_members(self.store, 0)

    def _member_changed(self, key: str) -> None:
        """Bring the membership cache up to date after a store event on ``key``."""
        changed = membership.changed_member(key)
        if changed is None:
            return
        member_id, removed = changed
        if removed:
            self._removed.add(member_id)
        others = [m for m in self._members if m.id != member_id]
        member = membership.read_member(self.store, member_id)
        self._members = sorted([*others, member], key=lambda m: m.id) if member else others

    # ------------------------------------------------------------------ snapshots

    def _take_snapshot(self) -> None:
        """Snapshot the applied state now; write it and compact the log in the background."""
        snap = Snapshot(self.applied_index, self.applied_term, self.store.snapshot())
        self.snapshot_index = snap.index
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # replaying at startup: write it synchronously
            self._save_snapshot(snap)
            self._compact(snap.index)
            return
        self._snapshot_task = loop.create_task(self._snapshot_in_background(snap))

    async def _snapshot_in_background(self, snap: Snapshot) -> None:
        loop = asyncio.get_running_loop()
        try:
            await loop.run_in_executor(None, self._save_snapshot, snap)
            await loop.run_in_executor(self._executor, self._compact, snap.index)
        except Exception:
            log.exception("snapshot at index %d failed", snap.index)
        finally:
            self._snapshot_task = None

    def _save_snapshot(self, snap: Snapshot) -> None:
        self.snapshots.save(snap)
        self.snapshots.prune(SNAPSHOTS_KEPT)
        log.info("saved snapshot at index %d", snap.index)

    def _compact(self, snap_index: int) -> None:
        """Drop log entries every kept snapshot covers, keeping a margin behind the newest."""
        margin = min(COMPACT_MARGIN, self.config.snapshot_count)
        upto = min([snap_index - margin, *self.snapshots.indices()])
        if upto > self.log.compacted_index:
            self.log.compact(upto)

    # ------------------------------------------------------------------ timers

    async def _tick_forever(self) -> None:
        while True:
            await asyncio.sleep(SWEEP_INTERVAL_S)
            self.tick()

    def tick(self) -> None:
        """Every 500 ms: time out proposals that cannot commit; propose a SYNC when a TTL is due."""
        self._expire_proposals(time.monotonic())
        due = self.store.next_expiry_ns()
        now = self.clock()
        if due and due <= now and not self._sync_proposed and not self._stopping:
            self._sync_proposed = True
            self._submit(ENTRY_SYNC, _STAMP.pack(now)).add_done_callback(self._sync_done)

    def _sync_done(self, future: asyncio.Future[Any]) -> None:
        self._sync_proposed = False
        if not future.cancelled() and future.exception() is not None:
            log.warning("TTL sweep failed: %s", future.exception())

    def _expire_proposals(self, now: float) -> None:
        for proposals in (self._unapplied, self._pending):
            for proposal in proposals:
                if proposal[-1] > now:
                    break
                future = proposal[-2]
                if future is not None and not future.done():
                    future.set_exception(ProposalTimeout())

    # ------------------------------------------------------------------ state for the HTTP layer

    @property
    def raft_index(self) -> int:
        """The committed index (X-Raft-Index)."""
        return self.commit_index

    @property
    def raft_term(self) -> int:
        return self.term

    @property
    def state(self) -> str:
        return "StateLeader" if self._has_quorum() else "StateFollower"

    @property
    def leader_id(self) -> int:
        return self.member_id if self._has_quorum() else 0

    def _has_quorum(self) -> bool:
        return len(self._members) <= 1

    def is_healthy(self) -> bool:
        return self._has_quorum() and not self._stopping

    def members(self) -> list[Member]:
        """The current members, sorted by id."""
        return list(self._members)

    # ------------------------------------------------------------------ membership

    async def add_member(self, peer_urls: list[str]) -> Member:
        """Add a member (etcd's POST /v2/members): its id mixes the peer URLs, the cluster token
        and the current Unix time."""
        if self.config.strict_reconfig:
            membership.check_strict_reconfig(self._members, membership.CHANGE_ADD, 0)
        member_id = identity.member_id(list(peer_urls), self.config.token, self.clock() // 1_000_000_000)
        member: Member = await self._change(membership.CHANGE_ADD, member_id, peer_urls)
        return member

    async def remove_member(self, member_id: int) -> None:
        if self.config.strict_reconfig:
            membership.check_strict_reconfig(self._members, membership.CHANGE_REMOVE, member_id)
        await self._change(membership.CHANGE_REMOVE, member_id, ())

    async def update_member(self, member_id: int, peer_urls: list[str]) -> None:
        await self._change(membership.CHANGE_UPDATE, member_id, peer_urls)

    async def _change(self, kind: str, member_id: int, peer_urls: list[str] | tuple[str, ...]) -> Any:
        if self._stopping:
            raise V2Error(300, "etcdserver: server stopped", 0)
        return await self._submit(ENTRY_CONF, membership.encode_change(kind, member_id, peer_urls))


def _settle(future: asyncio.Future[Any] | None, result: Any) -> None:
    """Resolve a proposer's future with a result or an exception, unless it is gone already."""
    if future is None or future.done():
        return
    if isinstance(result, BaseException):
        future.set_exception(result)
    else:
        future.set_result(result)
