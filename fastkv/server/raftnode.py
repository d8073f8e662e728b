"""The member: the one place where the Raft core, the LMDB log, the store, the watch hub and the
peer transport meet asyncio. A single member is a Raft cluster of one.

Callbacks on the event loop drive ``RawNode`` (docs/raft.md, "The Ready contract")::

    tick every heartbeat interval / step received messages / propose  -> _kick (one pass scheduled)
    -> Ready: persist snapshot + entries + hard state (log thread, one sync)
    -> send its messages -> apply committed entries in order -> advance -> the next Ready

Pipelining: a proposal is appended to the core's log at once and leaves in the next Ready;
whatever is proposed or received while a sync is in flight forms the next Ready (group commit:
one sync per batch). Proposals made on a follower are forwarded to the leader by the core
(MsgProp) and answered when this member has applied them. A leader sends its appends before
its own sync (``_send_early``), so that the followers sync at the same time. A Ready of at most
one entry while the front end is quiet (a lone writer) is saved on the loop itself: the writer
waits for that sync anyway, and two thread hand-offs are spared (``_small_and_quiet``).

Entry data (the core's EntryNormal): empty = a new leader's no-op; ``TAG_REQUEST`` + id + the
proposer's ``now_ns`` + a store request (``encode_request``), made by ``Proposals``;
``TAG_SYNC`` + id + ``now_ns`` (TTL expiry: every member expires the same keys at the same
index); ``TAG_MEMBER`` + id + a peer URL update. The id (8 bytes) lets the proposing member find
its waiter. An EntryConfChange adds or removes a voter; an addition carries the member's record
as the change's context.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import random
import struct
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any, Protocol

from fastkv import identity, metrics
from fastkv._native.applier import apply_requests, notify_watchers
from fastkv._native.logstore import CorruptLogError, LogStore
from fastkv._native.proposals import STOPPED, Proposals
from fastkv._native.raft import (
    STATE_NAMES,
    ConfChange,
    ConfChangeAddNode,
    ConfChangeRemoveNode,
    Config,
    Entry,
    EntryConfChange,
    Message,
    MsgApp,
    MsgHeartbeat,
    ProposalDropped,
    RawNode,
    Ready,
    StateLeader,
)
from fastkv._native.raft import Snapshot as RaftSnapshot
from fastkv._native.store import OP_SET, Event, Store, V2Error, encode_request
from fastkv._native.watch import WatchHub
from fastkv.server import membership
from fastkv.server.logthread import LogThread
from fastkv.server.membership import Member, MembershipError
from fastkv.storage.raftlog import (
    TAG_MEMBER,
    TAG_SYNC,
    RaftStorage,
    decode_snapshot,
    from_log,
)
from fastkv.storage.snapshot import Snapshotter

log = logging.getLogger("fastkv.server")

_ID_STAMP = struct.Struct(">QQ")  # proposal id, proposer's now_ns
_ID = struct.Struct(">Q")
SWEEP_INTERVAL_S = 0.5
REPLAY_CHUNK = 10_000
COMPACT_MARGIN = 5000
MAX_PEER_FRAME = 512 * 1024 * 1024  # a snapshot travels in one frame
REMOVED_NOTICE = "removed"  # a peer message (not Raft): "you were removed from the cluster"
HEALTH_INTERVAL_S = 5.0  # etcd's: a reconfiguration needs links to the voters up for this long
_EARLY = frozenset((MsgApp, MsgHeartbeat))  # a leader's messages that may leave before its sync


@dataclass(slots=True)
class _Flight:
    """A Ready taken from the core: ``early`` when its appends and heartbeats were sent before
    its save; ``saved`` once it is durable (or needs no save)."""

    rd: Ready
    early: bool
    saved: bool


class ProposalTimeout(Exception):
    """A proposal could not commit in time (HTTP 500, error 300)."""

    def __init__(self, message: str = "etcdserver: request timed out") -> None:
        super().__init__(message)


@dataclass(frozen=True)
class NodeConfig:
    """Who this member is and how it behaves; ``initial_members`` seeds a fresh log.

    ``listen_peer_urls`` empty: no peer listener (a member alone). ``join``: the member joins a
    running cluster (``--initial-cluster-state existing``): its log comes from the leader.
    """

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
    listen_peer_urls: tuple[str, ...] = ()
    heartbeat_ms: int = 100
    election_ms: int = 1000
    join: bool = False


# Waiters: proposal id (int) or ("conf", type, member id) -> (waiter, deadline on the monotonic clock)
_Key = Any


class Waiter(Protocol):
    """What a proposer waits on: an asyncio future, or anything settled the same way (such as
    the HTTP front end's ``Pending`` answers, which answer right when settled)."""

    def done(self) -> bool: ...
    def set_result(self, result: Any, /) -> None: ...
    def set_exception(self, error: BaseException, /) -> None: ...


class Node:
    """One member. Build it (recovers the store from snapshot + log), ``await start()``,
    ``await stop()``. The HTTP layer reads ``store``, ``hub`` and the properties below."""

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
        self.applied_index = 0
        self.applied_term = 0
        self.snapshot_index = 0
        self.removed = False
        self.on_removed: Callable[[], None] | None = None  # called once this member is removed
        self._leaving: asyncio.Task[None] | None = None
        self.store = Store()
        self.hub = WatchHub(self.store.history)
        self.storage = RaftStorage(log_store, snapshots)
        self.transport: Any = None
        self._members: list[Member] = []
        self._removed: set[int] = set()
        now_ms = time.time_ns() // 1_000_000
        first_id = ((self.member_id & 0xFFFF) << 48) | ((now_ms << 8) & 0xFFFFFFFFFFFF)
        # Waiters by key and the normal entries the next pass proposes (its kick schedules it).
        self.proposals = Proposals(first_id, clock, config.proposal_timeout_s, self._kick)
        self._waiters: dict[_Key, tuple[Waiter, float]] = self.proposals.waiters
        self._held: list[tuple[_Key, bytes | ConfChange]] = []  # dropped for want of a leader
        self._heard: dict[int, float] = {}
        self._peers: dict[int, tuple[str, ...]] = {}
        self._log_thread: LogThread | None = None
        self._stopping = False
        self._halt = False
        self._sync_proposed = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._scheduled = False  # a pass of the Raft loop is scheduled (call_soon)
        # Readies taken from the core and not finished yet, oldest first (pipelined: the next
        # fills while the log thread saves). ``_to_save``: those the log thread has not taken.
        self._in_flight: deque[_Flight] = deque()
        self._to_save: list[Ready] = []
        self._save_queued = False  # a log-thread job will take ``_to_save``
        self._save_failed = False  # a save failed: the jobs queued after it save nothing
        self._drained: asyncio.Future[None] | None = None  # stop() waits for the Readies in flight
        # True when the front end is quiet (no request but the one at hand since the last call):
        # then a small Ready is saved on the loop itself, sparing two thread hand-offs.
        self.quiet_hint: Callable[[], bool] | None = None
        self._ticker: asyncio.Task[None] | None = None
        self._publisher: asyncio.Task[None] | None = None
        self._published: asyncio.Event | None = None
        self._snapshot_task: asyncio.Future[None] | None = None
        self._recover()
        self.raw = RawNode(self._raft_config(), self.storage)
        self._lead = 0

    # ------------------------------------------------------------------ recovery

    def _raft_config(self) -> Config:
        election_tick = max(2, self.config.election_ms // max(1, self.config.heartbeat_ms))
        peers = tuple(m.id for m in self._members) or tuple(mid for mid, _ in self.config.initial_members)
        return Config(self.member_id, peers=peers, election_tick=election_tick, heartbeat_tick=1,
                      pre_vote=True, check_quorum=True, rng=random.Random(),
                      applied=self.applied_index)

    def _recover(self) -> None:
        """Newest intact snapshot + ``Store.restore`` + replay of the committed log after it; a
        fresh log of a new cluster is seeded with one ConfChange per initial member (term 1)."""
        snap_file = self.snapshots.load_latest()
        for problem in self.snapshots.skipped:
            log.warning("skipping a damaged snapshot: %s", problem)
        if snap_file is not None:
            snap = decode_snapshot(snap_file)
            self.storage.set_snapshot(snap)
            self._restore(snap, read_members=False)
        if self.applied_index < self.log.compacted_index or self.applied_index > self.log.last_index:
            raise CorruptLogError(
                f"the newest intact snapshot is at index {self.applied_index} but the log holds "
                f"{self.log.first_index}..{self.log.last_index}: entries in between are lost")
        if snap_file is not None or self.log.last_index > 0:
            self._recover_cluster()  # a restart; a fresh member has nothing to recover
        elif not self.config.join:
            self._bootstrap()
        commit = max(self.log.hard_state[2], self.applied_index)
        lo, last = self.applied_index + 1, self.log.last_index
        while lo <= last:  # every entry is read (CRC-checked); the committed ones are applied
            hi = min(lo + REPLAY_CHUNK, last + 1)
            self._apply_entries([from_log(t) for t in self.log.entries(lo, hi) if t[0] <= commit])
            lo = hi
        self.storage.commit_floor = self.applied_index

    def _bootstrap(self) -> None:
        """Term 1: one ConfChange per initial member, committed by definition (as etcd does)."""
        ids = sorted(mid for mid, _ in self.config.initial_members)
        entries = [(i + 1, 1, 1, ConfChange(ConfChangeAddNode, mid).encode()) for i, mid in enumerate(ids)]
        self.log.append(entries, (1, 0, len(entries)))

    def _recover_cluster(self) -> None:
        """etcd's cluster recovery on restart, before the log after the snapshot is replayed: the
        members (then the removed members) and the cluster version, read from the store. These
        reads count in the store statistics exactly as etcd's do."""
        self._members, self._removed = membership.read_members(self.store, 0)
        membership.read_cluster_version(self.store)

    def _restore(self, snap: RaftSnapshot, read_members: bool = True) -> None:
        """Replace the applied state by a snapshot's (at recovery, or sent by the leader)."""
        self.store = Store.restore(snap.data)
        self.hub = WatchHub(self.store.history, self.hub.deliver)
        if read_members:
            self._members, self._removed = membership.read_members(self.store, 0)
        self.applied_index = self.snapshot_index = snap.index
        self.applied_term = snap.term

    # ------------------------------------------------------------------ life cycle

    async def start(self) -> None:
        """Start the peer transport and the Raft loop. A member alone elects itself at once and
        returns once its no-op, its attributes and the cluster version are applied (so the first
        client write gets etcd's indices); with peers it publishes its attributes in the
        background, once a leader is known."""
        loop = asyncio.get_running_loop()
        self._published = asyncio.Event()
        if self.config.listen_peer_urls:
            try:
                await self._start_transport()
            except OSError as exc:
                if len(self.raw.status().voters) > 1:
                    raise
                log.warning("cannot listen for peers on %s: %s", ", ".join(self.config.listen_peer_urls), exc)
                self.transport = None
        self._log_thread = LogThread(loop, self.log.wal_fd)
        self._loop = loop
        self._kick()
        self._ticker = loop.create_task(self._tick_forever())
        if self.raw.status().voters == (self.member_id,):
            self.raw.campaign()
            self._kick()
            await self._publish()
        else:
            self._publisher = loop.create_task(self._publish_in_background())

    async def _start_transport(self) -> None:
        from fastkv.transport.tcp import TcpTransport

        self.transport = TcpTransport(self.cluster_id, self.member_id, self.config.listen_peer_urls, {},
                                      max_frame_bytes=MAX_PEER_FRAME, queue_bytes_limit=2 * MAX_PEER_FRAME)
        self.transport.set_handler(self._on_message)
        self.transport.set_info_handler(self.cluster_info)
        self._sync_peers()
        await self.transport.start()

    def _sync_peers(self) -> None:
        """Talk to exactly the current members (the initial ones until the log names them)."""
        if self.transport is None:
            return
        if self._members:
            wanted = {m.id: m.peer_urls for m in self._members if m.id != self.member_id}
        else:
            wanted = {mid: urls for mid, urls in self.config.initial_members if mid != self.member_id}
        for mid in [p for p in self._peers if p not in wanted]:
            self.transport.remove_peer(mid)
            del self._peers[mid]
        for mid, urls in wanted.items():
            if mid not in self._peers:
                self.transport.add_peer(mid, urls)
            elif self._peers[mid] != urls:
                self.transport.update_peer(mid, urls)
            self._peers[mid] = urls

    async def _publish(self) -> None:
        """Publish this member's name and client URLs; a leader also records the cluster version."""
        key = membership.member_key(self.member_id) + "/attributes"
        value = membership.attributes(self.name, self.config.client_urls)
        startup = [self.submit_request(encode_request(OP_SET, key, value))]
        if self.raw.state == StateLeader and self._cluster_version() != membership.CLUSTER_VERSION:
            startup.append(self.submit_request(encode_request(
                OP_SET, membership.VERSION_KEY, membership.CLUSTER_VERSION)))
        await asyncio.gather(*startup)
        assert self._published is not None
        self._published.set()

    async def wait_published(self) -> None:
        """Return once this member's attributes are committed (at once for a member alone): from
        then on it is part of the cluster and serves clients, as etcd does after its ReadyNotify."""
        assert self._published is not None, "start() first"
        await self._published.wait()

    async def _publish_in_background(self) -> None:
        """Publish this member's attributes (retrying until it commits); the first leader also
        records the cluster version."""
        while not self._stopping:
            try:
                if self.raw.lead:
                    await self._publish()
                    log.info("published {Name:%s ClientURLs:[%s]} to cluster %x", self.name,
                             " ".join(self.config.client_urls), self.cluster_id)
                    break
            except (ProposalTimeout, V2Error) as exc:
                log.warning("publishing the member attributes failed: %s", exc)
            await asyncio.sleep(0.1)
        while not self._stopping and self._cluster_version() != membership.CLUSTER_VERSION:
            if self.raw.state == StateLeader:
                with contextlib.suppress(ProposalTimeout, V2Error):
                    await self.submit_request(encode_request(
                        OP_SET, membership.VERSION_KEY, membership.CLUSTER_VERSION))
            await asyncio.sleep(0.2)

    def _cluster_version(self) -> str | None:
        node = self.store.node(membership.VERSION_KEY)
        return node.value if node is not None else None

    async def stop(self) -> None:
        """Hand leadership to the most up-to-date follower (when leading with peers), refuse new
        proposals, let the Ready in flight finish, save the commit index, close the log."""
        if self._stopping:
            return
        self._stopping = self.proposals.closed = True
        await self._transfer_leadership()
        for task in (self._ticker, self._publisher):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        self._halt = True
        if self._in_flight:
            self._drained = asyncio.get_running_loop().create_future()
            await self._drained
        if self._snapshot_task is not None:
            with contextlib.suppress(Exception):
                await self._snapshot_task
        stopped = V2Error(300, STOPPED, 0)
        for future, _ in self._waiters.values():
            _settle(future, stopped)
        self._waiters.clear()
        status = self.raw.status()
        from fastkv._native.raft import HardState

        if self._log_thread is not None:
            with contextlib.suppress(Exception):
                await self._log_thread.run(self.storage.save_hard_state, HardState(
                    status.term, status.vote, min(status.commit, self.log.last_index)))
        if self.transport is not None:
            await self.transport.stop()
        if self._log_thread is not None:
            self._log_thread.stop()
        self.log.close()

    async def _transfer_leadership(self) -> None:
        if self.raw.state != StateLeader or self._loop is None:
            return
        progress = self.raw.status().progress
        followers = [(pr.match, mid) for mid, pr in progress.items() if mid != self.member_id]
        if not followers:
            return
        _, target = max(followers)
        log.info("%x transferring leadership to %x before stopping", self.member_id, target)
        self.raw.transfer_leader(target)
        self._kick()
        deadline = time.monotonic() + self.config.election_ms / 1000
        while time.monotonic() < deadline and self.raw.lead in (self.member_id, 0):
            await asyncio.sleep(0.01)

    # ------------------------------------------------------------------ the Raft loop

    def _kick(self) -> None:
        """Schedule one pass of the Raft loop (once, however often this is called before it runs;
        proposals made meanwhile join the same Ready). Nothing once stopping, or before start()."""
        if not self._scheduled and self._loop is not None and not self._halt:
            self._scheduled = True
            self._loop.call_soon(self._process)

    def _process(self) -> None:
        """Take the core's new Readies. Each one to save goes to a writer (``_queue_save``: the
        sync queue or the log thread) while the next Readies fill (pipelined, as
        ``RawNode.ready`` allows); ``_synced`` and ``_saved`` finish them in order. A small Ready
        of a quiet member with nothing in flight is saved right here."""
        self._scheduled = False
        if self._halt:
            return
        self._repropose_held()
        self._flush_proposals()
        while self.raw.has_ready():
            rd = self.raw.ready()
            in_flight = self._in_flight
            if self.storage.needs_save(rd):
                early = not in_flight and self._send_early(rd)
                if not in_flight and not early and self._small_and_quiet(rd):
                    try:
                        self.storage.save(rd)
                    except Exception as exc:
                        self._persist_failed(exc)
                        return
                    self._finish_ready(rd, False)
                    continue
                flight = _Flight(rd, early, False)
                in_flight.append(flight)
                self._queue_save(flight)
            elif in_flight:
                in_flight.append(_Flight(rd, False, True))  # finished after those before it
            else:
                self._finish_ready(rd, False)

    def _queue_save(self, flight: _Flight) -> None:
        """Hand ``flight``'s Ready to a writer: while the log thread has no job, a plain append
        is staged here and written by the sync queue, which never needs the GIL; anything else
        (a snapshot, a rewrite, a checkpoint due), and whatever comes while a job is pending,
        goes to the log thread, which saves every Ready queued by then with one sync."""
        log_thread = self._log_thread
        assert log_thread is not None
        if not log_thread.pending:
            staged = self.storage.stage(flight.rd)
            if staged is not None:
                offset, record, token = staged
                log_thread.submit_record(offset, record, partial(self._synced, flight, token))
                return
        self._to_save.append(flight.rd)
        if not self._save_queued:
            self._save_queued = True
            log_thread.submit(self._save_queued_readies, None, self._saved)

    def _synced(self, flight: _Flight, token: tuple[Any, ...], outcome: int, seconds: float) -> None:
        """The sync queue wrote and synced ``flight``'s staged record (``outcome`` 0), or failed
        to (``-errno``): then every record after it is void too."""
        if outcome < 0:
            self.log.abandon()
            assert self._log_thread is not None
            self._log_thread.abandon_records()
            self._persist_failed(OSError(-outcome, os.strerror(-outcome), "write-ahead file"))
        else:
            self.storage.commit_staged(token, seconds)
            flight.saved = True
            self._finish_saved()
        self._go_on()

    def _save_queued_readies(self, _: object) -> int:
        """On the log thread: save every Ready queued so far, with one sync; how many."""
        self._save_queued = False  # first: a Ready queued from now on gets a job of its own
        if self._save_failed:
            return 0
        readies, self._to_save = self._to_save, []
        try:
            self.storage.save_many(readies)
        except BaseException:
            self._save_failed = True
            raise
        return len(readies)

    def _send_early(self, rd: Ready) -> bool:
        """A leader's appends and heartbeats leave before its own sync, so that the followers'
        syncs overlap it (Raft thesis 10.2.1). Safe: a follower may acknowledge these entries
        (and the core count them committed) while this member's sync runs, but a commit reaches
        the store, the clients and the other members only through a later Ready, which waits
        for this one to be saved; the commit index these messages carry was set before this
        Ready, so it covers entries already on this member's disk. Votes and acknowledgements
        still wait for the sync. True when sent."""
        if not rd.entries or not any(m.type in _EARLY for m in rd.messages):
            return False
        self._send([m for m in rd.messages if m.type in _EARLY])
        return True

    def _small_and_quiet(self, rd: Ready) -> bool:
        """Whether to save ``rd`` on the loop: at most one entry, no snapshot, the log thread
        idle (it never writes the log at the same time) and the front end quiet, so that the
        sync delays nothing else (a lone writer waits for exactly this sync anyway)."""
        hint = self.quiet_hint
        log_thread = self._log_thread
        return (hint is not None and len(rd.entries) <= 1 and rd.snapshot is None and log_thread is not None
                and log_thread.pending == 0 and log_thread.records == 0 and hint())

    def _saved(self, count: int | None, error: BaseException | None) -> None:
        """The log thread saved the next ``count`` Readies in flight (or failed to): finish
        every Ready in flight that is saved and has no unsaved one before it; go on."""
        if error is not None:
            if not isinstance(error, Exception):
                raise error
            self._persist_failed(error)
        elif count:
            for flight in self._in_flight:
                if not flight.saved:
                    flight.saved = True
                    count -= 1
                    if not count:
                        break
            self._finish_saved()
        self._go_on()

    def _go_on(self) -> None:
        """After a save: the next pass, or, once stopping, tell ``stop`` when nothing is in flight."""
        if self._halt:
            if self._drained is not None and not self._in_flight:
                _settle(self._drained, None)
            return
        self._process()

    def _finish_saved(self) -> None:
        in_flight = self._in_flight
        while in_flight and in_flight[0].saved:
            flight = in_flight.popleft()
            self._finish_ready(flight.rd, flight.early)
            if in_flight and not in_flight[0].saved and not in_flight[0].early:
                # Everything before it is on disk now: its appends may leave before its sync.
                in_flight[0].early = self._send_early(in_flight[0].rd)

    def _finish_ready(self, rd: Ready, sent_early: bool) -> None:
        """Steps 2-4 of the Ready contract, once ``rd`` is persisted (``sent_early``: its
        appends and heartbeats are sent already)."""
        self._send([m for m in rd.messages if m.type not in _EARLY] if sent_early else rd.messages)
        self._apply_ready(rd)
        self.raw.advance(rd)
        self._maybe_snapshot()
        self._repropose_held()

    def _persist_failed(self, error: BaseException) -> None:
        """The log could not be written: fail every waiting proposal and rebuild the core from
        what is durable (the unsaved entries, those of every Ready in flight, are forgotten)."""
        log.error("log append failed: %s", error)
        self._in_flight.clear()
        self._to_save = []
        self._save_failed = False
        failure = V2Error(300, str(error), 0)
        for future, _ in self._waiters.values():
            _settle(future, failure)
        self._waiters.clear()
        self._held.clear()
        self.proposals.batch.clear()
        self.storage.commit_floor = self.applied_index
        self.raw = RawNode(self._raft_config(), self.storage)
        if self.raw.status().voters == (self.member_id,):
            self.raw.campaign()
        self._kick()

    def _send(self, messages: list[Message]) -> None:
        transport = self.transport
        for m in messages:
            if m.type == MsgApp:
                self.send_append_count += 1
            if transport is None:
                continue
            try:
                transport.send(m.to, m.to_wire())
            except Exception as exc:  # too large or not serialisable: Raft retries or sends a snapshot
                log.warning("cannot send %s: %s", m.describe()[:80], exc)

    def _on_message(self, sender: int, wire: object) -> None:
        if wire == REMOVED_NOTICE:
            self._leave()
            return
        m = Message.from_wire(wire)
        if m.type == MsgApp:
            self.recv_append_count += 1
        self._heard[sender] = time.monotonic()
        if self._halt:
            return
        self.raw.step(m)
        self._kick()

    def _apply_ready(self, rd: Ready) -> None:
        if rd.soft_state is not None and rd.soft_state.lead != self._lead:
            self._lead = rd.soft_state.lead
            self.leader_since_ns = self.clock() if self._lead else 0
            if self._lead == self.member_id:
                log.info("%x became leader at term %d", self.member_id, self.raw.term)
            elif self._lead:
                log.info("%x elected leader %x at term %d", self.member_id, self._lead, self.raw.term)
            else:
                log.info("%x lost the leader at term %d", self.member_id, self.raw.term)
        if rd.snapshot is not None and rd.snapshot.index > self.applied_index:
            self._restore(rd.snapshot)
            self._sync_peers()
            log.info("applied the leader's snapshot at index %d", rd.snapshot.index)
        self._apply_entries(rd.committed_entries)
        metrics.proposals_pending.set(len(self._waiters))

    def _apply_entries(self, entries: list[Entry]) -> None:
        """Apply the committed ``entries`` not applied yet, in order, and count them: runs of store
        requests in compiled code (``apply_requests``), anything else with ``_apply_entry``."""
        applied = self.applied_index
        at = 0
        while at < len(entries):
            at, index, term, member_key = apply_requests(self.store, self.hub, self._waiters, entries, at,
                                                         self.applied_index)
            if index > self.applied_index:
                self.applied_index, self.applied_term = index, term
            if member_key is not None:
                self._member_changed(member_key)
            elif at < len(entries):
                e = entries[at]
                at += 1
                if e.index > self.applied_index:
                    self._apply_entry(e.index, e.term, e.type, e.data)
        metrics.proposals_applied.inc(self.applied_index - applied)

    def _repropose_held(self) -> None:
        if not self._held or not self.raw.lead:
            return
        held, self._held = self._held, []
        for key, payload in held:
            if key not in self._waiters:
                continue
            if isinstance(payload, ConfChange):
                self._propose_conf_change(key, payload)
            else:
                self.proposals.batch.append((key, payload))
        if self._flush_proposals():  # dropped again: held, with no new pass (no busy loop)
            self._kick()

    # ------------------------------------------------------------------ proposing

    async def propose(self, request: bytes) -> Event:
        """Run a store request through the log: the Event, or the V2Error the store raised.
        Raises ``ProposalTimeout`` when it cannot commit in time."""
        event: Event = await self.submit_request(request)
        return event

    def submit_request(self, request: bytes, waiter: Waiter | None = None) -> Waiter:
        """``propose`` without a coroutine: the waiter (a new future when none is given) gets
        the Event, or the V2Error the store raised, or ``ProposalTimeout``. Raises V2Error (300)
        at once when stopping."""
        return self.proposals.submit_request(request, self._future() if waiter is None else waiter)

    def _next_id(self) -> int:
        return self.proposals.next_id()

    def _future(self) -> asyncio.Future[Any]:
        loop = self._loop or asyncio.get_running_loop()  # the stored loop: no getpid() per call
        return loop.create_future()

    def _submit(self, key: _Key, payload: bytes | ConfChange) -> Any:
        """Propose ``payload`` under ``key``; the new future that gets its outcome. A normal entry
        joins the batch the next pass of the loop proposes in one step (one append, one MsgApp
        per follower); a configuration change goes at once, after that batch."""
        if isinstance(payload, ConfChange):
            waiter = self.proposals.register(key, self._future())
            self._propose_conf_change(key, payload)
            return waiter
        return self.proposals.add(key, payload, self._future())

    def _propose_conf_change(self, key: _Key, cc: ConfChange) -> None:
        """Propose ``cc`` after the batch; one dropped for want of a leader waits for the next."""
        self._flush_proposals()
        try:
            self.raw.propose_conf_change(cc)
        except ProposalDropped:
            self._held.append((key, cc))
            return
        self._kick()

    def _flush_proposals(self) -> bool:
        """Propose the batch of normal entries, in order, in one step; True when the core took
        them (False: none, or dropped for want of a leader and held)."""
        batch = self.proposals.take()
        if not batch:
            return False
        try:
            self.raw.propose_many([payload for _, payload in batch])
        except ProposalDropped:
            self._held.extend(batch)
            return False
        return True

    def _resolve(self, key: _Key, result: Any) -> None:
        waiter = self._waiters.pop(key, None)
        if waiter is not None:
            _settle(waiter[0], result)

    # ------------------------------------------------------------------ applying

    def _apply_entry(self, index: int, term: int, etype: int, data: bytes) -> None:
        """Apply one committed entry that is not a store request (``apply_requests`` applies
        those): a configuration change, a new leader's empty entry, a TTL expiry or a membership
        entry; answer its proposer, if it waits here."""
        if etype == EntryConfChange:
            cc = ConfChange.decode(data)
            self._resolve(("conf", cc.type, cc.node_id), self._apply_conf_change(cc))
        elif data:
            pid = _ID.unpack_from(data, 1)[0]
            result: Any
            if data[:1] == TAG_SYNC:
                result = self._notify_all(self.store.delete_expired(_ID_STAMP.unpack_from(data, 1)[1]))
                self._sync_proposed = False
            else:
                result = self._apply_member_entry(data[9:])
            self._resolve(pid, result)
        self.applied_index, self.applied_term = index, term

    def _apply_member_entry(self, change: bytes) -> Any:
        """A peer URL update, or an addition or removal that only validates (it was refused)."""
        if membership.decode_change(change)[0] == membership.CHANGE_UPDATE:
            return self._apply_change(change)
        try:
            membership.validate_change(self.store, change, 0)
        except MembershipError as error:
            return error
        return MembershipError(500, "Internal Server Error")  # membership changes only by ConfChange

    def _apply_conf_change(self, cc: ConfChange) -> Any:
        if cc.type == ConfChangeAddNode:
            if cc.context:  # added at run time: the change carries the member's record
                result = self._apply_change(cc.context)
            else:  # an initial member (bootstrap entries): its URLs are in --initial-cluster
                urls = next((list(u) for mid, u in self.config.initial_members if mid == cc.node_id), [])
                result = self._apply_change(membership.encode_change(membership.CHANGE_ADD, cc.node_id, urls))
        else:
            result = self._apply_change(membership.encode_change(membership.CHANGE_REMOVE, cc.node_id))
            if cc.node_id == self.member_id:
                self._leave()
            elif self.transport is not None and cc.node_id in self._peers:
                # The removed member may never learn that its removal committed (nobody replicates
                # to it any more): tell it, and hang up a little later.
                self.transport.send(cc.node_id, REMOVED_NOTICE)
                asyncio.get_running_loop().call_later(1.0, self._sync_peers)
                return result
        self._sync_peers()
        return result

    def _leave(self) -> None:
        """This member was removed from the cluster: stop, as etcd's member does."""
        if self.removed:
            return
        self.removed = True
        log.warning("%x was removed from the cluster", self.member_id)
        if self.on_removed is not None:
            with contextlib.suppress(RuntimeError):  # replaying at startup: nothing to stop yet
                self._leaving = asyncio.get_running_loop().create_task(self._stop_after_handover())

    async def _stop_after_handover(self) -> None:
        """Stop once the answers went out and, when this member led, once the core has handed
        leadership to a remaining voter (or three election timeouts passed): a removed leader
        that stopped at once could leave a two-voter cluster unable to elect anyone."""
        await asyncio.sleep(0.2)
        deadline = time.monotonic() + 3 * self.config.election_ms / 1000
        while self.leader_id == self.member_id and time.monotonic() < deadline:
            await asyncio.sleep(self.config.heartbeat_ms / 1000)
        if self.on_removed is not None:
            self.on_removed()

    def _apply_change(self, data: bytes) -> Member | MembershipError | None:
        try:
            member, events = membership.apply_change(self.store, data, 0)  # no TTLs: time plays no part
        except MembershipError as error:
            return error
        self._notify_all(events)
        if member is not None and member.id in self._peers:
            self._sync_peers()
        return member

    def _notify_all(self, events: list[Event]) -> list[Event]:
        for event in events:
            if notify_watchers(self.hub, event):
                self._member_changed(event.key)
        return events

    def _member_changed(self, key: str) -> None:
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

    def _maybe_snapshot(self) -> None:
        """Every ``snapshot_count`` applied entries: snapshot, write it in the background, compact."""
        if self.applied_index - self.snapshot_index < self.config.snapshot_count or self._snapshot_task:
            return
        if self.applied_index > self.raw.applied:
            return
        self.raw.compact(self.applied_index, self.store.snapshot())
        self.snapshot_index = self.applied_index
        snap = self.storage.snapshot()
        self._snapshot_task = asyncio.get_running_loop().create_task(self._write_snapshot(snap))

    async def _write_snapshot(self, snap: RaftSnapshot) -> None:
        loop = asyncio.get_running_loop()
        try:
            await loop.run_in_executor(None, self.storage.save_snapshot_file, snap)
            margin = min(COMPACT_MARGIN, self.config.snapshot_count)
            assert self._log_thread is not None
            await self._log_thread.run(self.storage.compact_log, snap.index, margin)
            log.info("saved snapshot at index %d", snap.index)
        except Exception:
            log.exception("snapshot at index %d failed", snap.index)
        finally:
            self._snapshot_task = None
        if not self._stopping:
            self._maybe_snapshot()  # one skipped while this was written, or the log stays long when idle

    # ------------------------------------------------------------------ timers

    async def _tick_forever(self) -> None:
        interval = self.config.heartbeat_ms / 1000
        sweep_every = max(1, round(SWEEP_INTERVAL_S / interval))
        for n in itertools.count(1):
            await asyncio.sleep(interval)
            self.raw.tick()
            self._kick()
            if n % sweep_every == 0:
                self.tick()

    def tick(self) -> None:
        """Every 500 ms: time out proposals that cannot commit; the leader proposes a SYNC when a
        TTL is due (with its own time: every member expires the same keys at the same index)."""
        now_mono = time.monotonic()
        for key, (future, deadline) in list(self._waiters.items()):
            if deadline <= now_mono:
                del self._waiters[key]
                _settle(future, ProposalTimeout())
        due = self.store.next_expiry_ns()
        now = self.clock()
        if (due and due <= now and not self._sync_proposed and not self._stopping
                and self.raw.state == StateLeader):
            self._sync_proposed = True
            pid = self._next_id()
            self._submit(pid, TAG_SYNC + _ID_STAMP.pack(pid, now)).add_done_callback(self._sync_done)

    def _sync_done(self, future: asyncio.Future[Any]) -> None:
        self._sync_proposed = False
        if not future.cancelled() and future.exception() is not None:
            log.warning("TTL sweep failed: %s", future.exception())

    # ------------------------------------------------------------------ state for the HTTP layer

    @property
    def raft_index(self) -> int:
        """The committed index (X-Raft-Index)."""
        return int(self.raw.committed)

    @property
    def raft_term(self) -> int:
        return int(self.raw.term)

    @property
    def commit_index(self) -> int:
        return int(self.raw.committed)

    @property
    def sync_count(self) -> int:
        return self.storage.syncs

    @property
    def state(self) -> str:
        return str(STATE_NAMES[self.raw.state])

    @property
    def leader_id(self) -> int:
        return int(self.raw.lead)

    def is_healthy(self) -> bool:
        """A leader is known and, on the leader, a quorum of voters was heard from within an
        election timeout."""
        if self._stopping or not self.raw.lead:
            return False
        if self.raw.lead != self.member_id:
            return True
        voters = self.raw.status().voters
        window = time.monotonic() - self.config.election_ms / 1000
        active = sum(1 for v in voters if v == self.member_id or self._heard.get(v, 0.0) >= window)
        return active >= len(voters) // 2 + 1

    def members(self) -> list[Member]:
        """The current members, sorted by id."""
        return list(self._members)

    def cluster_info(self) -> dict[str, Any]:
        """What a process about to join is told (etcd's peer ``GET /members``): the cluster id, the
        members ``[id, name, peer URLs, client URLs]`` and the removed member ids."""
        return {"cluster_id": self.cluster_id,
                "members": [[m.id, m.name, list(m.peer_urls), list(m.client_urls)] for m in self._members],
                "removed": sorted(self._removed)}

    def leader_stats(self) -> dict[str, Any]:
        """``/v2/stats/leader`` on the leader: per-follower latency and counts from the transport."""
        followers: dict[str, Any] = {}
        for m in self._members:
            if m.id == self.member_id:
                continue
            try:
                followers[f"{m.id:x}"] = self.transport.stats(m.id).to_etcd()
            except (AttributeError, KeyError):
                followers[f"{m.id:x}"] = {"latency": {"current": 0, "average": 0, "standardDeviation": 0,
                                                      "minimum": 0, "maximum": 0},
                                          "counts": {"fail": 0, "success": 0}}
        return {"leader": f"{self.member_id:x}", "followers": followers}

    # ------------------------------------------------------------------ membership

    async def add_member(self, peer_urls: list[str]) -> Member:
        """Add a member (etcd's POST /v2/members): its id mixes the peer URLs, the cluster token
        and the current Unix time. One ConfChange carries the member's record."""
        member_id = identity.member_id(list(peer_urls), self.config.token, self.clock() // 1_000_000_000)
        await self._check_change(membership.CHANGE_ADD, member_id, peer_urls)
        record = membership.encode_change(membership.CHANGE_ADD, member_id, peer_urls)
        member: Member = await self._submit(("conf", ConfChangeAddNode, member_id),
                                            ConfChange(ConfChangeAddNode, member_id, record))
        return member

    async def remove_member(self, member_id: int) -> None:
        await self._check_change(membership.CHANGE_REMOVE, member_id, ())
        cc = ConfChange(ConfChangeRemoveNode, member_id)
        await self._submit(("conf", cc.type, member_id), cc)

    async def update_member(self, member_id: int, peer_urls: list[str]) -> None:
        """Change a member's peer URLs; every member validates the change when it applies it."""
        self._check_live()
        await self._submit_member(membership.CHANGE_UPDATE, member_id, peer_urls)

    def _check_live(self) -> None:
        if self._stopping:
            raise V2Error(300, STOPPED, 0)

    async def _check_change(self, kind: str, member_id: int, peer_urls: list[str] | tuple[str, ...]) -> None:
        """etcd's order: the strict reconfiguration check on this member (500), then the change
        goes through the log and every member validates it against the members it reads from
        its store. A change that cannot apply is sent through the log as a membership entry that
        only validates (so every member makes etcd's counted reads) and its error raised here."""
        self._check_live()
        if self.config.strict_reconfig:
            membership.check_strict_reconfig(self._members, kind, member_id)
            self._check_active_quorum(kind, member_id)
        try:
            membership.check_change(self._members, self._removed, kind, member_id, peer_urls)
        except MembershipError:
            await self._submit_member(kind, member_id, peer_urls)
            raise MembershipError(500, "Internal Server Error") from None  # valid after all: a race

    def _check_active_quorum(self, kind: str, member_id: int) -> None:
        """etcd's connectivity rule of the strict reconfiguration check: this member's links to
        the voters must have been up for ``HEALTH_INTERVAL_S``, all of them for an addition, a
        quorum of the remaining ones for the removal of a reachable member (500 otherwise)."""
        voters = [m.id for m in self._members]
        active_since: dict[int, float] = {}
        if self.transport is not None:
            active_since = {v: self.transport.active_since(v) for v in voters if v != self.member_id}
        membership.check_active_quorum(voters, self.member_id, kind, member_id, active_since,
                                       time.monotonic() - HEALTH_INTERVAL_S)

    def _submit_member(self, kind: str, member_id: int, peer_urls: list[str] | tuple[str, ...]
                       ) -> asyncio.Future[Any]:
        pid = self._next_id()
        change = membership.encode_change(kind, member_id, peer_urls)
        return self._submit(pid, TAG_MEMBER + _ID.pack(pid) + change)


def _settle(future: Waiter | None, result: Any) -> None:
    """Resolve a proposer's waiter with a result or an exception, unless it is settled already."""
    if future is None or future.done():
        return
    if isinstance(result, BaseException):
        future.set_exception(result)
    else:
        future.set_result(result)
