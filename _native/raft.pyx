# cython: language_level=3
"""The Raft consensus core: a deterministic state machine stepped by messages and ticks.

Nothing here performs I/O, reads a clock or uses global randomness. ``Raft.step`` and the tick
functions only change memory: they append outgoing messages to ``msgs`` and new entries to the
unstable part of the log. ``RawNode.ready()`` hands that work to the caller as a ``Ready`` value
whose contract (see ``Ready``) orders persistence before sending, and ``advance(ready)`` tells
the core that the work is done.

Section numbers refer to the Raft paper ("In Search of an Understandable Consensus Algorithm",
Ongaro & Ousterhout 2014); "thesis" is Ongaro's dissertation (2014).
"""


NONE = 0

MESSAGE_NAMES = (
    "MsgHup", "MsgBeat", "MsgProp", "MsgApp", "MsgAppResp", "MsgVote", "MsgVoteResp", "MsgPreVote",
    "MsgPreVoteResp", "MsgSnap", "MsgHeartbeat", "MsgHeartbeatResp", "MsgTransferLeader",
    "MsgTimeoutNow", "MsgReadIndex", "MsgReadIndexResp",
)
ENTRY_NAMES = ("EntryNormal", "EntryConfChange")
STATE_NAMES = ("StateFollower", "StateCandidate", "StateLeader", "StatePreCandidate")
PROGRESS_NAMES = ("StateProbe", "StateReplicate", "StateSnapshot")

# The context of a vote request that follows MsgTimeoutNow: voters grant it even inside their
# leader lease (thesis §3.10), because the current leader asked for it.
CAMPAIGN_TRANSFER = b"CampaignTransfer"

cdef u64 NO_LIMIT = 0xFFFFFFFFFFFFFFFF


class ProposalDropped(Exception):
    """The proposal was not accepted: no leader known, a leadership transfer is in progress,
    this member is not a voter, another configuration change is still pending, or the change
    would remove the last voter."""


class CompactedError(Exception):
    """The requested index precedes the first index still held by the storage."""


class UnavailableError(Exception):
    """The requested index is beyond the last index held by the storage."""


# ---------------------------------------------------------------------------------------------
# Value types
# ---------------------------------------------------------------------------------------------

cdef str quote(bytes data):
    """Go's %q of a byte string, close enough for logs: printable ASCII as is, the rest escaped."""
    return '"' + data.decode("utf-8", "backslashreplace").replace("\\", "\\\\").replace('"', '\\"') + '"'


cdef class Entry:
    """One log entry. ``index`` and ``term`` identify it (§5.3 Log Matching)."""

    def __init__(self, u64 term, u64 index, int type=EntryNormal, bytes data=b""):
        self.term = term
        self.index = index
        self.type = type
        self.data = data

    def to_wire(self):
        return (self.term, self.index, self.type, self.data)

    @staticmethod
    def from_wire(t):
        return Entry(t[0], t[1], t[2], t[3])

    def describe(self):
        if self.type == EntryConfChange:
            return f"{self.term}/{self.index} EntryConfChange {ConfChange.decode(self.data).describe()}"
        return f"{self.term}/{self.index} {ENTRY_NAMES[self.type]} {quote(self.data)}"

    def __eq__(self, other):
        if not isinstance(other, Entry):
            return NotImplemented
        cdef Entry o = other
        return self.term == o.term and self.index == o.index and self.type == o.type and self.data == o.data

    def __hash__(self):
        return hash((self.term, self.index, self.type, self.data))

    def __repr__(self):
        return f"Entry({self.describe()})"


cdef inline u64 entry_size(Entry e):
    return len(e.data) + 16


cdef class HardState:
    """What must be on stable storage before any message that depends on it is sent (§5, Figure 2:
    currentTerm, votedFor, and the commit index so that a restart does not re-apply less)."""

    def __init__(self, u64 term=0, u64 vote=0, u64 commit=0):
        self.term = term
        self.vote = vote
        self.commit = commit

    def to_wire(self):
        return (self.term, self.vote, self.commit)

    @staticmethod
    def from_wire(t):
        return HardState(t[0], t[1], t[2])

    def is_empty(self):
        return self.term == 0 and self.vote == 0 and self.commit == 0

    def describe(self):
        return f"HardState Term:{self.term} Vote:{self.vote} Commit:{self.commit}"

    def __eq__(self, other):
        if not isinstance(other, HardState):
            return NotImplemented
        cdef HardState o = other
        return self.term == o.term and self.vote == o.vote and self.commit == o.commit

    def __hash__(self):
        return hash((self.term, self.vote, self.commit))

    def __repr__(self):
        return self.describe()


cdef class Snapshot:
    """The application state as of ``index`` (whose entry had ``term``), with the voters of the
    configuration in force at that index (§7)."""

    def __init__(self, u64 index=0, u64 term=0, voters=(), bytes data=b""):
        self.index = index
        self.term = term
        self.voters = tuple(sorted(voters))
        self.data = data

    def to_wire(self):
        return (self.index, self.term, self.voters, self.data)

    @staticmethod
    def from_wire(t):
        return None if t is None else Snapshot(t[0], t[1], tuple(t[2]), t[3])

    def is_empty(self):
        return self.index == 0

    def describe(self):
        return f"Index:{self.index} Term:{self.term} Voters:{describe_ids(self.voters)}"

    def __repr__(self):
        return f"Snapshot({self.describe()})"


cdef str describe_ids(ids):
    return "(" + ",".join(str(i) for i in ids) + ")"


cdef class ConfChange:
    """Add or remove one voter (thesis §4.1: single-server changes, one at a time). ``context``
    is opaque to the core and travels with the change (the application's member record)."""

    def __init__(self, int type, u64 node_id, bytes context=b""):
        self.type = type
        self.node_id = node_id
        self.context = context

    def encode(self):
        head = b"%s %d" % (b"add" if self.type == ConfChangeAddNode else b"remove", self.node_id)
        return head + b" " + self.context if self.context else head

    @staticmethod
    def decode(bytes data):
        kind, _, rest = data.partition(b" ")
        node, _, context = rest.partition(b" ")
        return ConfChange(ConfChangeAddNode if kind == b"add" else ConfChangeRemoveNode, int(node), context)

    def describe(self):
        return f"{'add' if self.type == ConfChangeAddNode else 'remove'}={self.node_id}"

    def __repr__(self):
        return f"ConfChange({self.describe()})"


cdef class Message:
    """A Raft message. ``frm``/``to`` are member ids; ``term`` is 0 for local messages and for
    proposals and read requests forwarded to the leader."""

    def __init__(self, int type, u64 to=0, u64 frm=0, u64 term=0, u64 log_term=0, u64 index=0,
                 u64 commit=0, bint reject=False, u64 reject_hint=0, bytes context=b"", list entries=None,
                 Snapshot snapshot=None):
        self.type = type
        self.to = to
        self.frm = frm
        self.term = term
        self.log_term = log_term
        self.index = index
        self.commit = commit
        self.reject = reject
        self.reject_hint = reject_hint
        self.context = context
        self.entries = entries if entries is not None else []
        self.snapshot = snapshot

    def to_wire(self):
        """A msgpack-friendly tuple; ``Message.from_wire`` inverts it."""
        return (self.type, self.to, self.frm, self.term, self.log_term, self.index, self.commit,
                self.reject, self.reject_hint, self.context,
                [(<Entry>e).to_wire() for e in self.entries],
                None if self.snapshot is None else self.snapshot.to_wire())

    @staticmethod
    def from_wire(t):
        return Message(t[0], t[1], t[2], t[3], t[4], t[5], t[6], t[7], t[8], t[9],
                       [Entry(e[0], e[1], e[2], e[3]) for e in t[10]], Snapshot.from_wire(t[11]))

    def describe(self):
        """One line, e.g. ``1->2 MsgApp Term:2 Log:2/5 Commit:5 Entries:[2/6 EntryNormal "x"]``."""
        parts = [f"{self.frm}->{self.to} {MESSAGE_NAMES[self.type]} Term:{self.term} "
                 f"Log:{self.log_term}/{self.index}"]
        if self.reject:
            parts.append(f" Rejected (Hint: {self.reject_hint})")
        if self.commit:
            parts.append(f" Commit:{self.commit}")
        if self.context:
            parts.append(f" Context:{quote(self.context)}")
        if self.entries:
            parts.append(" Entries:[" + ", ".join(e.describe() for e in self.entries) + "]")
        if self.snapshot is not None:
            parts.append(" Snapshot: " + self.snapshot.describe())
        return "".join(parts)

    def __repr__(self):
        return f"Message({self.describe()})"


cdef class ReadState:
    """A linearizable read may be served once the applied index reaches ``index`` (thesis §6.4)."""

    def __init__(self, u64 index, bytes context):
        self.index = index
        self.context = context

    def describe(self):
        return f"ReadState Index:{self.index} Context:{quote(self.context)}"

    def __repr__(self):
        return self.describe()


cdef class SoftState:
    """Volatile state worth reporting: who leads, and this member's role."""

    def __init__(self, u64 lead, int state):
        self.lead = lead
        self.state = state

    def describe(self):
        return f"Lead:{self.lead} State:{STATE_NAMES[self.state]}"

    def __eq__(self, other):
        if not isinstance(other, SoftState):
            return NotImplemented
        cdef SoftState o = other
        return self.lead == o.lead and self.state == o.state

    def __hash__(self):
        return hash((self.lead, self.state))


# ---------------------------------------------------------------------------------------------
# Storage
# ---------------------------------------------------------------------------------------------

cdef class MemoryStorage:
    """The durable log kept in memory: what the core reads back after ``Ready`` work is saved.

    The interface the core uses (and a disk-backed storage implements): ``hard_state()``,
    ``snapshot()``, ``first_index()``, ``last_index()``, ``term(i)`` (raises ``CompactedError``
    below ``first_index() - 1`` and ``UnavailableError`` beyond ``last_index()``) and
    ``entries(lo, hi, max_size)`` (entries ``[lo, hi)``, at least one when any, at most
    ``max_size`` bytes otherwise). The application writes with ``save(ready)`` (or
    ``apply_snapshot``/``append``/``set_hard_state``) and compacts with ``create_snapshot`` and
    ``compact``.
    """

    def __init__(self):
        self._hard_state = HardState()
        self._snapshot = Snapshot()
        self._ents = [Entry(0, 0)]

    cpdef HardState hard_state(self):
        return self._hard_state

    cpdef Snapshot snapshot(self):
        return self._snapshot

    cpdef u64 first_index(self):
        return (<Entry>self._ents[0]).index + 1

    cpdef u64 last_index(self):
        return (<Entry>self._ents[0]).index + len(self._ents) - 1

    cpdef u64 term(self, u64 i) except? 0:
        cdef u64 offset = (<Entry>self._ents[0]).index
        if i < offset:
            raise CompactedError(i)
        if i - offset >= <u64>len(self._ents):
            raise UnavailableError(i)
        return (<Entry>self._ents[i - offset]).term

    cpdef list entries(self, u64 lo, u64 hi, u64 max_size):
        cdef u64 offset = (<Entry>self._ents[0]).index
        if lo <= offset:
            raise CompactedError(lo)
        if hi > self.last_index() + 1:
            raise UnavailableError(hi)
        return limit_size(self._ents[lo - offset:hi - offset], max_size)

    def set_hard_state(self, HardState hs):
        self._hard_state = hs

    def append(self, list ents):
        """Append entries, replacing any existing entries from the first new index on."""
        if not ents:
            return
        cdef u64 offset = (<Entry>self._ents[0]).index
        cdef Entry first = ents[0]
        if first.index + len(ents) - 1 <= offset:
            return  # all compacted already
        if first.index <= offset:
            ents = ents[offset + 1 - first.index:]
            first = ents[0]
        if first.index > self.last_index() + 1:
            raise ValueError(f"missing log entries: last {self.last_index()}, appending at {first.index}")
        del self._ents[first.index - offset:]
        self._ents.extend(ents)

    def apply_snapshot(self, Snapshot snap):
        """Replace the whole log by ``snap`` (a follower installing its leader's snapshot)."""
        if snap.index <= self._snapshot.index:
            return
        self._snapshot = snap
        self._ents = [Entry(snap.term, snap.index)]

    def create_snapshot(self, u64 index, voters, bytes data):
        """Record the application's state as of ``index`` (``index <= last_index()``)."""
        if index <= self._snapshot.index:
            return self._snapshot
        self._snapshot = Snapshot(index, self.term(index), voters, data)
        return self._snapshot

    def compact(self, u64 index):
        """Drop the entries before ``index``; ``index`` itself becomes the dummy entry."""
        cdef u64 offset = (<Entry>self._ents[0]).index
        if index <= offset:
            return
        if index > self.last_index():
            raise UnavailableError(index)
        cdef Entry dummy = self._ents[index - offset]
        self._ents = [Entry(dummy.term, dummy.index)] + self._ents[index - offset + 1:]

    def save(self, Ready rd):
        """Persist what ``rd`` asks for, in the order the contract requires: snapshot, entries,
        then hard state."""
        if rd.snapshot is not None:
            self.apply_snapshot(rd.snapshot)
        self.append(rd.entries)
        if rd.hard_state is not None:
            self.set_hard_state(rd.hard_state)


cdef list limit_size(list ents, u64 max_size):
    """The longest prefix of ``ents`` within ``max_size`` bytes, but never empty when ``ents`` is not."""
    if not ents or max_size == NO_LIMIT:
        return ents
    cdef u64 size = entry_size(ents[0])
    cdef Py_ssize_t k = 1, n = len(ents)
    while k < n:
        size += entry_size(ents[k])
        if size > max_size:
            break
        k += 1
    return ents if k == n else ents[:k]


# ---------------------------------------------------------------------------------------------
# The log: the storage's stable entries followed by the unstable ones
# ---------------------------------------------------------------------------------------------

cdef class RaftLog:
    """The log as the core sees it. Invariant: ``applied <= committed <= last_index()``."""

    def __init__(self, storage):
        self.storage = storage
        self._unstable = []
        self._offset = storage.last_index() + 1
        self._pending_snapshot = None
        self._saving_to = self._offset - 1
        self._snapshot_saving = False
        self.committed = storage.first_index() - 1
        self.applying = self.applied = storage.first_index() - 1

    cdef u64 first_index(self):
        if self._pending_snapshot is not None:
            return self._pending_snapshot.index + 1
        return self.storage.first_index()

    cdef u64 last_index(self):
        if self._unstable:
            return self._offset + len(self._unstable) - 1
        if self._pending_snapshot is not None:
            return self._pending_snapshot.index
        return self.storage.last_index()

    cdef u64 last_term(self):
        return self.term(self.last_index())

    cdef u64 term(self, u64 i):
        """The term of entry ``i``, or 0 when it is compacted away or not in the log."""
        if i >= self._offset:
            if i - self._offset < <u64>len(self._unstable):
                return (<Entry>self._unstable[i - self._offset]).term
            return 0
        if self._pending_snapshot is not None:
            if i == self._pending_snapshot.index:
                return self._pending_snapshot.term
            return 0
        if i + 1 < self.storage.first_index() or i > self.storage.last_index():
            return 0
        return self.storage.term(i)

    cdef bint match_term(self, u64 i, u64 t):
        return self.term(i) == t

    cdef bint is_up_to_date(self, u64 last_index, u64 term):
        """§5.4.1: a candidate's log is at least as up to date as ours when its last term is
        higher, or equal with an index at least as high."""
        cdef u64 my_term = self.last_term()
        return term > my_term or (term == my_term and last_index >= self.last_index())

    cdef u64 find_conflict(self, list ents):
        """The index of the first entry of ``ents`` that is new or conflicts with ours, else 0."""
        cdef Entry e
        for e in ents:
            if not self.match_term(e.index, e.term):
                return e.index
        return 0

    cdef u64 append(self, list ents):
        """Append ``ents`` to the unstable log, truncating whatever follows their first index."""
        if not ents:
            return self.last_index()
        cdef u64 after = (<Entry>ents[0]).index
        if after < self.committed + 1:
            raise AssertionError(f"append at {after} would overwrite committed {self.committed}")
        if after == self._offset + len(self._unstable):
            self._unstable.extend(ents)
        elif after <= self._offset:
            # Replaces entries the storage already has; they are truncated when this is saved.
            self._offset = after
            self._unstable = list(ents)
        else:
            self._unstable = self._unstable[:after - self._offset] + ents
        if after <= self._saving_to:
            self._saving_to = after - 1  # the replacements go out in the next Ready
        return self.last_index()

    cdef bint maybe_append(self, u64 index, u64 log_term, u64 committed, list ents,
                           u64* last_new) except -1:
        """§5.3: accept ``ents`` following ``index`` only if our entry at ``index`` has
        ``log_term`` (the AppendEntries consistency check). Never overwrites committed entries."""
        if not self.match_term(index, log_term):
            return False
        last_new[0] = index + len(ents)
        cdef u64 ci = self.find_conflict(ents)
        if ci != 0:
            if ci <= self.committed:
                raise AssertionError(f"entry {ci} conflicts with committed entry (committed {self.committed})")
            self.append(ents[ci - index - 1:])
        self.commit_to(min(committed, last_new[0]))
        return True

    cdef bint maybe_commit(self, u64 max_index, u64 term) except -1:
        """§5.4.2: only an entry of the current term is committed by counting replicas."""
        if max_index > self.committed and self.term(max_index) == term:
            self.commit_to(max_index)
            return True
        return False

    cdef int commit_to(self, u64 to) except -1:
        if to > self.committed:
            if self.last_index() < to:
                raise AssertionError(f"commit {to} beyond last index {self.last_index()}")
            self.committed = to
        return 0

    cdef int applied_to(self, u64 i) except -1:
        if i == 0:
            return 0
        if i > self.committed or i < self.applied:
            raise AssertionError(f"applied {i} outside [{self.applied}, {self.committed}]")
        self.applied = i
        if self.applying < i:
            self.applying = i
        return 0

    cdef list slice(self, u64 lo, u64 hi, u64 max_size):
        """Entries ``[lo, hi)`` within ``max_size`` bytes (at least one); None if compacted."""
        if lo >= hi:
            return []
        if lo < self.first_index():
            return None
        cdef list ents = []
        if lo < self._offset:
            try:
                ents = self.storage.entries(lo, min(hi, self._offset), max_size)
            except CompactedError:
                return None
            if len(ents) < <Py_ssize_t>(min(hi, self._offset) - lo):
                return ents  # limited by size
        if hi > self._offset:
            ents = ents + self._unstable[max(lo, self._offset) - self._offset:hi - self._offset]
        return limit_size(ents, max_size)

    cdef list next_committed_entries(self):
        """Committed entries not yet handed out for applying, in log order; from now on they
        are being applied."""
        cdef u64 lo = max(self.applying + 1, self.first_index())
        cdef list ents
        if self.committed + 1 > lo:
            ents = self.slice(lo, self.committed + 1, NO_LIMIT)
            self.applying = self.committed
            return ents
        return []

    cdef bint has_next_committed_entries(self):
        return self.committed + 1 > max(self.applying + 1, self.first_index())

    cdef bint has_unsaved(self):
        """Unstable entries or a snapshot that no Ready has handed out yet."""
        return (self._saving_to + 1 < self._offset + len(self._unstable)
                or (self._pending_snapshot is not None and not self._snapshot_saving))

    cdef list take_unsaved(self):
        """The unstable entries no Ready has handed out yet; from now on they are being saved."""
        cdef list ents = self._unstable[self._saving_to + 1 - self._offset:]
        self._saving_to = self._offset + len(self._unstable) - 1
        return ents

    cdef int restore(self, Snapshot snap) except -1:
        self.committed = snap.index
        self._pending_snapshot = snap
        self._snapshot_saving = False
        self._unstable = []
        self._offset = snap.index + 1
        self._saving_to = snap.index
        if self.applying < snap.index:
            self.applying = snap.index  # the snapshot itself brings the state up to it
        return 0

    cdef int stable_to(self, u64 index, u64 term) except -1:
        """Entries up to ``index`` (whose term was ``term``) are on stable storage now."""
        if index < self._offset or index - self._offset >= <u64>len(self._unstable):
            return 0
        if (<Entry>self._unstable[index - self._offset]).term != term:
            return 0  # replaced since the Ready was made; the newer entries are still unstable
        del self._unstable[:index + 1 - self._offset]
        self._offset = index + 1
        if self._saving_to < index:
            self._saving_to = index
        return 0

    cdef int stable_snap_to(self, u64 index) except -1:
        if self._pending_snapshot is not None and self._pending_snapshot.index == index:
            self._pending_snapshot = None
            self._snapshot_saving = False
        return 0

    def entries_from(self, u64 lo):
        """All entries from ``lo`` to the last index (for tests and the log dump)."""
        return self.slice(max(lo, self.first_index()), self.last_index() + 1, NO_LIMIT)

    def term_at(self, u64 i):
        return self.term(i)

    @property
    def first(self):
        return self.first_index()

    @property
    def last(self):
        return self.last_index()


# ---------------------------------------------------------------------------------------------
# Per-follower progress (held by the leader)
# ---------------------------------------------------------------------------------------------

cdef class Inflights:
    """The last index of each MsgApp sent in replicate state and not yet acknowledged; at most
    ``capacity`` (flow control)."""

    def __init__(self, int capacity):
        self.capacity = capacity
        self._last_indices = []

    cdef bint full(self):
        return len(self._last_indices) >= self.capacity

    cdef void add(self, u64 last):
        self._last_indices.append(last)

    cdef void free_le(self, u64 index):
        cdef Py_ssize_t k = 0, n = len(self._last_indices)
        while k < n and <u64>self._last_indices[k] <= index:
            k += 1
        if k:
            del self._last_indices[:k]

    cdef void free_first_one(self):
        if self._last_indices:
            del self._last_indices[0]

    cdef void reset(self):
        self._last_indices = []


cdef class Progress:
    """The leader's view of one follower (§5.3 nextIndex/matchIndex), plus the replication state:
    probe (one MsgApp per heartbeat until the match is found), replicate (optimistic pipelining
    up to ``max_inflight`` messages) or snapshot (waiting for an InstallSnapshot to land).
    Invariant: ``match < next``."""

    def __init__(self, u64 next, int max_inflight):
        self.match = 0
        self.next = next
        self.state = StateProbe
        self.probe_sent = False
        self.pending_snapshot = 0
        self.recent_active = True
        self.inflights = Inflights(max_inflight)

    cdef void become_probe(self):
        if self.state == StateSnapshot:
            self.next = max(self.match + 1, self.pending_snapshot + 1)
        else:
            self.next = self.match + 1
        self.state = StateProbe
        self.probe_sent = False
        self.pending_snapshot = 0
        self.inflights.reset()

    cdef void become_replicate(self):
        self.state = StateReplicate
        self.next = self.match + 1
        self.probe_sent = False
        self.inflights.reset()

    cdef void become_snapshot(self, u64 index):
        self.state = StateSnapshot
        self.pending_snapshot = index
        self.probe_sent = False
        self.inflights.reset()

    cdef bint maybe_update(self, u64 n):
        """The follower acknowledged entries up to ``n``; False when that is old news."""
        cdef bint updated = False
        if self.match < n:
            self.match = n
            updated = True
            self.probe_sent = False
        if self.next < n + 1:
            self.next = n + 1
        return updated

    cdef bint maybe_decr_to(self, u64 rejected, u64 match_hint):
        """The follower rejected the MsgApp at ``rejected``; False when that rejection is stale."""
        if self.state == StateReplicate:
            if rejected <= self.match:
                return False
            self.next = self.match + 1
            return True
        if self.next == 0 or self.next - 1 != rejected:
            return False
        self.next = max(min(rejected, match_hint + 1), 1)
        self.probe_sent = False
        return True

    cdef bint is_paused(self):
        if self.state == StateProbe:
            return self.probe_sent
        if self.state == StateReplicate:
            return self.inflights.full()
        return True

    def describe(self):
        text = f"{PROGRESS_NAMES[self.state]} match={self.match} next={self.next}"
        if self.state == StateSnapshot:
            text += f" pending_snap={self.pending_snapshot}"
        if self.state == StateReplicate and self.inflights._last_indices:
            text += f" inflight={len(self.inflights._last_indices)}"
            if self.inflights.full():
                text += "[full]"
        if self.probe_sent:
            text += " paused"
        return text


# ---------------------------------------------------------------------------------------------
# Config
# ---------------------------------------------------------------------------------------------

cdef class Config:
    """Static parameters of one member.

    ``election_tick`` must exceed ``heartbeat_tick``; the randomized election timeout is drawn
    from ``[election_tick, 2 * election_tick)`` with ``rng.randrange`` (§5.2: randomized timeouts
    make split votes rare). ``applied`` is the index the application's state already reflects
    on restart. ``max_size_per_msg`` bounds the entry bytes per MsgApp (at least one entry is
    sent), ``max_inflight`` the MsgApps in flight to a follower in replicate state.
    """

    def __init__(self, u64 id, peers=(), int election_tick=10, int heartbeat_tick=1, bint pre_vote=True,
                 bint check_quorum=True, u64 max_size_per_msg=1024 * 1024, int max_inflight=256,
                 rng=None, u64 applied=0):
        if id == 0:
            raise ValueError("id must not be 0")
        if heartbeat_tick <= 0 or election_tick <= heartbeat_tick:
            raise ValueError("need 0 < heartbeat_tick < election_tick")
        if max_inflight <= 0:
            raise ValueError("max_inflight must be positive")
        if rng is None:
            import random
            rng = random.Random(id)
        self.id = id
        self.peers = tuple(sorted(peers))
        self.election_tick = election_tick
        self.heartbeat_tick = heartbeat_tick
        self.pre_vote = pre_vote
        self.check_quorum = check_quorum
        self.max_size_per_msg = max_size_per_msg
        self.max_inflight = max_inflight
        self.rng = rng
        self.applied = applied


# ---------------------------------------------------------------------------------------------
# Role behaviour: step and tick functions swapped by become_x
# ---------------------------------------------------------------------------------------------

cdef int tick_election(Raft r) except -1:
    """Followers and candidates: campaign when no leader was heard from for a randomized
    election timeout (§5.2)."""
    r.election_elapsed += 1
    if r.promotable() and r.past_election_timeout():
        r.election_elapsed = 0
        r.step(Message(MsgHup, frm=r.id))
    return 0


cdef int tick_heartbeat(Raft r) except -1:
    """Leaders: heartbeat every ``heartbeat_tick``; every ``election_tick`` check the quorum
    (thesis §6.2: a leader that cannot reach a majority steps down) and give up a transfer that
    did not finish in time (thesis §3.10)."""
    r.heartbeat_elapsed += 1
    r.election_elapsed += 1
    if r.election_elapsed >= r.election_timeout:
        r.election_elapsed = 0
        if r.id not in r.prs:
            # Removed: it accepts nothing, so it needs no quorum; it leads on (the others may not
            # know that the removal committed) and tries again, maybe with another successor.
            r.hand_over()
        elif r.check_quorum and not maybe_keep_leadership(r):
            return 0
        else:
            r.lead_transferee = 0
    if r.state != StateLeader:
        return 0
    if r.heartbeat_elapsed >= r.heartbeat_timeout:
        r.heartbeat_elapsed = 0
        r.step(Message(MsgBeat, frm=r.id))
    return 0


cdef bint maybe_keep_leadership(Raft r) except -1:
    """Count the voters heard from since the last check; step down without a quorum."""
    cdef int active = 0
    cdef Progress pr
    for vid, pr in r.prs.items():
        if vid == r.id or pr.recent_active:
            active += 1
        pr.recent_active = vid == r.id
    if active >= r.quorum():
        return True
    r.become_follower(r.term, NONE)
    return False


cdef int step_leader(Raft r, Message m) except -1:
    cdef Progress pr
    cdef Entry e
    cdef u64 i
    cdef bint old_paused
    if m.type == MsgBeat:
        r.bcast_heartbeat(b"")
        return 0
    if m.type == MsgProp:
        if not m.entries:
            raise ValueError("empty proposal")
        if r.id not in r.prs or r.lead_transferee != NONE:
            raise ProposalDropped("not accepting proposals" if r.lead_transferee == NONE
                                  else f"transferring leadership to {r.lead_transferee}")
        for e in m.entries:
            if e.type == EntryConfChange:
                # Thesis §4.1: one change at a time; the next waits until this one is applied.
                if r.pending_conf_index > r.log.applied:
                    raise ProposalDropped(f"configuration change pending at {r.pending_conf_index}")
                # No change pending: ours applies to the configuration in force, which must keep a
                # voter (with none, nobody could ever campaign again).
                cc = ConfChange.decode(e.data)
                if cc.type == ConfChangeRemoveNode and r.prs.keys() == {cc.node_id}:
                    raise ProposalDropped(f"cannot remove the last voter {cc.node_id}")
        r.append_entries(m.entries)
        r.bcast_append()
        return 0
    if m.type == MsgReadIndex:
        return r.handle_read_index(m)

    pr = r.prs.get(m.frm)
    if pr is None:
        return 0
    if m.type == MsgAppResp:
        pr.recent_active = True
        if m.reject:
            if pr.maybe_decr_to(m.index, m.reject_hint):
                if pr.state == StateReplicate:
                    pr.become_probe()
                r.maybe_send_append(m.frm, True)
            return 0
        old_paused = pr.is_paused()
        if not pr.maybe_update(m.index):
            return 0
        if pr.state == StateProbe:
            pr.become_replicate()
        elif pr.state == StateSnapshot and pr.match >= pr.pending_snapshot:
            pr.become_probe()
            pr.become_replicate()
        elif pr.state == StateReplicate:
            pr.inflights.free_le(m.index)
        if r.maybe_commit():
            r.bcast_append()
        elif old_paused:
            r.maybe_send_append(m.frm, True)
        # Pipelining: keep sending while the window allows and entries remain.
        while r.maybe_send_append(m.frm, False):
            pass
        if m.frm == r.lead_transferee and pr.match == r.log.last_index():
            r.send_timeout_now(m.frm)
        return 0
    if m.type == MsgHeartbeatResp:
        pr.recent_active = True
        pr.probe_sent = False
        if pr.state == StateReplicate and pr.inflights.full():
            pr.inflights.free_first_one()
        elif pr.state == StateSnapshot:
            # The snapshot may have been lost: probe again (a duplicate snapshot is harmless).
            pr.become_probe()
        if pr.match < r.log.last_index():
            r.maybe_send_append(m.frm, True)
        if m.context:
            r.handle_read_ack(m.frm, m.context)
        if r.id not in r.prs and m.frm == r.lead_transferee and pr.match == r.log.last_index():
            r.send_timeout_now(m.frm)  # removed: repeat until the successor takes over
        return 0
    if m.type == MsgTransferLeader:
        return r.handle_transfer_leader(m)
    return 0


cdef int step_candidate(Raft r, Message m) except -1:
    """Candidates and pre-candidates (§5.2)."""
    cdef int result
    cdef int my_resp = MsgPreVoteResp if r.state == StatePreCandidate else MsgVoteResp
    if m.type == MsgProp:
        raise ProposalDropped("no leader")
    if m.type == MsgApp:
        r.become_follower(m.term, m.frm)  # a leader of our term exists (§5.2)
        return r.handle_append_entries(m)
    if m.type == MsgHeartbeat:
        r.become_follower(m.term, m.frm)
        return r.handle_heartbeat(m)
    if m.type == MsgSnap:
        r.become_follower(m.term, m.frm)
        return r.handle_snapshot(m)
    if m.type == my_resp:
        result = r.poll(m.frm, not m.reject)
        if result == 1:
            if r.state == StatePreCandidate:
                r.campaign(MsgVote, b"")
            else:
                r.become_leader()
                r.bcast_append()
        elif result == -1:
            r.become_follower(r.term, NONE)
        return 0
    if m.type == MsgReadIndex or m.type == MsgTransferLeader:
        raise ProposalDropped("no leader")
    return 0


cdef int step_follower(Raft r, Message m) except -1:
    if m.type == MsgProp or m.type == MsgReadIndex or m.type == MsgTransferLeader:
        if r.lead == NONE:
            raise ProposalDropped("no leader")
        m.to = r.lead
        if m.type == MsgTransferLeader:
            m.term = r.term
            r.msgs.append(m)  # m.frm names the transferee and must survive forwarding
        else:
            r.send(m)  # forwarded proposals and reads carry no term
        return 0
    if m.type == MsgApp:
        r.election_elapsed = 0
        r.lead = m.frm
        return r.handle_append_entries(m)
    if m.type == MsgHeartbeat:
        r.election_elapsed = 0
        r.lead = m.frm
        return r.handle_heartbeat(m)
    if m.type == MsgSnap:
        r.election_elapsed = 0
        r.lead = m.frm
        return r.handle_snapshot(m)
    if m.type == MsgTimeoutNow:
        # Thesis §3.10: the leader asked us to take over; skip pre-vote and ignore leases.
        return r.hup(MsgVote, CAMPAIGN_TRANSFER)
    if m.type == MsgReadIndexResp:
        r.read_states.append(ReadState(m.index, m.context))
        return 0
    return 0


# ---------------------------------------------------------------------------------------------
# The state machine
# ---------------------------------------------------------------------------------------------

cdef class Raft:
    """One member's Raft state. Stepped by ``step(msg)`` and ticked by ``tick()``; all output is
    in ``msgs``, ``read_states`` and the unstable log."""

    def __init__(self, Config config, storage):
        self.id = config.id
        self.log = RaftLog(storage)
        self.msgs = []
        self.read_states = []
        self.max_size_per_msg = config.max_size_per_msg
        self.max_inflight = config.max_inflight
        self.pre_vote = config.pre_vote
        self.check_quorum = config.check_quorum
        self.election_timeout = config.election_tick
        self.heartbeat_timeout = config.heartbeat_tick
        self.rng = config.rng
        self.votes = {}
        self.read_queue = []
        self.read_by_ctx = {}
        self.pending_read_msgs = []
        self.lead_transferee = NONE
        self.pending_conf_index = 0
        cdef Snapshot snap = storage.snapshot()
        cdef tuple voters = snap.voters if snap.index else config.peers
        if not voters:
            raise ValueError("no voters: give peers, or a storage holding a snapshot")
        self.prs = {}
        self.conf_history = []
        self.apply_conf(voters, snap.index)
        cdef HardState hs = storage.hard_state()
        if not hs.is_empty():
            if hs.commit < self.log.committed or hs.commit > self.log.last_index():
                raise ValueError(f"hard state commit {hs.commit} outside the log")
            self.log.committed = hs.commit
        if config.applied:
            self.log.applied_to(min(config.applied, self.log.committed))
        self.replay_conf_changes(snap.index + 1, self.log.applied)
        self.become_follower(hs.term, NONE)
        self.vote = hs.vote

    def replay_conf_changes(self, u64 lo, u64 hi):
        """Configuration changes already applied by the application before a restart."""
        cdef Entry e
        if hi < lo:
            return
        for e in self.log.slice(lo, hi + 1, NO_LIMIT) or ():
            if e.type == EntryConfChange:
                self.apply_conf_change(ConfChange.decode(e.data), e.index)

    # --- helpers ----------------------------------------------------------------------------

    cdef tuple voters(self):
        return tuple(sorted(self.prs))

    cdef int quorum(self):
        return len(self.prs) // 2 + 1

    cdef bint promotable(self):
        """Only a voter of the current configuration campaigns."""
        return self.id in self.prs

    cdef bint past_election_timeout(self):
        return self.election_elapsed >= self.randomized_election_timeout

    cdef int reset_randomized_election_timeout(self) except -1:
        self.randomized_election_timeout = self.election_timeout + self.rng.randrange(self.election_timeout)
        return 0

    cdef int send(self, Message m) except -1:
        """Queue ``m``; stamp our id and, except on votes, proposals and reads, our term."""
        m.frm = self.id
        if m.type == MsgVote or m.type == MsgVoteResp or m.type == MsgPreVote or m.type == MsgPreVoteResp:
            if m.term == 0:
                raise AssertionError(f"vote message without term: {m.describe()}")
        elif m.type == MsgProp or m.type == MsgReadIndex:
            m.term = 0
        else:
            m.term = self.term
        self.msgs.append(m)
        return 0

    # --- replication (§5.3) ------------------------------------------------------------------

    cdef bint maybe_send_append(self, u64 to, bint send_if_empty) except -1:
        """Send the follower the entries it lacks, or a snapshot when they are compacted away.
        Returns False when nothing was sent (paused, or nothing to send)."""
        cdef Progress pr = self.prs[to]
        if pr.is_paused():
            return False
        cdef u64 prev = pr.next - 1
        cdef u64 prev_term = self.log.term(prev)
        cdef list ents = self.log.slice(pr.next, self.log.last_index() + 1, self.max_size_per_msg)
        cdef Snapshot snap
        if ents is None or (prev_term == 0 and prev != 0):
            # §7: the entries are gone; install the snapshot instead.
            if not pr.recent_active:
                return False
            snap = self.log.storage.snapshot()
            if snap.index == 0:
                raise AssertionError("need a snapshot but the storage has none")
            pr.become_snapshot(snap.index)
            self.send(Message(MsgSnap, to=to, snapshot=snap))
            return True
        if not ents and not send_if_empty:
            return False
        self.send(Message(MsgApp, to=to, index=prev, log_term=prev_term, entries=ents,
                          commit=self.log.committed))
        if ents:
            if pr.state == StateReplicate:
                pr.next = (<Entry>ents[len(ents) - 1]).index + 1
                pr.inflights.add(pr.next - 1)
            elif pr.state == StateProbe:
                pr.probe_sent = True
        elif pr.state == StateProbe:
            pr.probe_sent = True
        return True

    cdef int send_heartbeat(self, u64 to, bytes ctx) except -1:
        # The commit never exceeds the follower's match: it may lack the entries beyond it.
        cdef Progress pr = self.prs[to]
        self.send(Message(MsgHeartbeat, to=to, commit=min(pr.match, self.log.committed), context=ctx))
        return 0

    cdef int send_timeout_now(self, u64 to) except -1:
        self.send(Message(MsgTimeoutNow, to=to))
        return 0

    cdef int bcast_append(self) except -1:
        for vid in self.prs:
            if vid != self.id:
                self.maybe_send_append(vid, True)
        return 0

    cdef int bcast_heartbeat(self, bytes ctx) except -1:
        for vid in self.prs:
            if vid != self.id:
                self.send_heartbeat(vid, ctx)
        return 0

    cdef bint maybe_commit(self) except -1:
        """§5.3/§5.4.2: the highest index replicated on a quorum is committed if its entry is
        from the current term; earlier entries are committed with it (Log Matching)."""
        cdef list matches = sorted([(<Progress>pr).match for pr in self.prs.values()], reverse=True)
        cdef bint was_committed_in_term = self.log.term(self.log.committed) == self.term
        if not self.log.maybe_commit(matches[self.quorum() - 1], self.term):
            return False
        if not was_committed_in_term and self.pending_read_msgs:
            pending, self.pending_read_msgs = self.pending_read_msgs, []
            for m in pending:
                self.handle_read_index(m)
        return True

    cdef bint append_entries(self, list ents) except -1:
        """Leader: stamp ``ents`` with our term and the next indices and append them (§5.3)."""
        cdef u64 li = self.log.last_index()
        cdef Entry e
        cdef list stamped = []
        for e in ents:
            li += 1
            stamped.append(Entry(self.term, li, e.type, e.data))
            if e.type == EntryConfChange:
                self.pending_conf_index = li
        self.log.append(stamped)
        # The leader's own copy counts toward the quorum once the Ready carrying it is saved,
        # which happens before any message of that Ready is sent.
        (<Progress>self.prs[self.id]).maybe_update(li)
        self.maybe_commit()
        return True

    # --- roles -------------------------------------------------------------------------------

    cdef int reset(self, u64 term) except -1:
        if self.term != term:
            self.term = term
            self.vote = NONE
        self.lead = NONE
        self.election_elapsed = 0
        self.heartbeat_elapsed = 0
        self.reset_randomized_election_timeout()
        self.lead_transferee = NONE
        self.votes = {}
        self.read_queue = []
        self.read_by_ctx = {}
        self.pending_read_msgs = []
        cdef u64 last = self.log.last_index()
        cdef Progress pr
        for vid in self.prs:
            pr = Progress(last + 1, self.max_inflight)
            if vid == self.id:
                pr.match = last
            self.prs[vid] = pr
        return 0

    cdef int become_follower(self, u64 term, u64 lead) except -1:
        self._step = step_follower
        self._tick = tick_election
        self.reset(term)
        self.lead = lead
        self.state = StateFollower
        return 0

    cdef int become_pre_candidate(self) except -1:
        # Thesis §9.6: neither the term nor the vote change until a real election can be won.
        if self.state == StateLeader:
            raise AssertionError("leader cannot become pre-candidate")
        self._step = step_candidate
        self._tick = tick_election
        self.votes = {}
        self.lead = NONE
        self.state = StatePreCandidate
        return 0

    cdef int become_candidate(self) except -1:
        # §5.2: increment the term and vote for ourselves.
        if self.state == StateLeader:
            raise AssertionError("leader cannot become candidate")
        self._step = step_candidate
        self._tick = tick_election
        self.reset(self.term + 1)
        self.vote = self.id
        self.state = StateCandidate
        return 0

    cdef int become_leader(self) except -1:
        if self.state == StateFollower:
            raise AssertionError("follower cannot become leader")
        self._step = step_leader
        self._tick = tick_heartbeat
        self.reset(self.term)
        self.lead = self.id
        self.state = StateLeader
        (<Progress>self.prs[self.id]).become_replicate()
        # An uncommitted configuration change may be in the log: no new one until it applies.
        self.pending_conf_index = self.log.last_index()
        # §8 / §5.4.2: an empty entry of our term lets us commit what earlier leaders left.
        self.append_entries([Entry(0, 0)])
        return 0

    cdef int campaign(self, int vote_type, bytes ctx) except -1:
        cdef u64 term
        if vote_type == MsgPreVote:
            self.become_pre_candidate()
            term = self.term + 1  # the term we would campaign for; ours stays
        else:
            self.become_candidate()
            term = self.term
        if self.poll(self.id, True) == 1:
            # A single voter wins at once.
            if vote_type == MsgPreVote:
                return self.campaign(MsgVote, ctx)
            self.become_leader()
            return 0
        for vid in self.prs:
            if vid != self.id:
                self.send(Message(vote_type, to=vid, term=term, index=self.log.last_index(),
                                  log_term=self.log.last_term(), context=ctx))
        return 0

    cdef int poll(self, u64 id, bint granted) except? -2:
        """Record a vote; 1 when a quorum granted, -1 when a quorum refused, else 0."""
        if id not in self.votes:
            self.votes[id] = granted
        cdef int yes = 0, no = 0
        for vid, v in self.votes.items():
            if vid in self.prs:
                if v:
                    yes += 1
                else:
                    no += 1
        if yes >= self.quorum():
            return 1
        if no >= self.quorum():
            return -1
        return 0

    # --- stepping ----------------------------------------------------------------------------

    cpdef int step(self, Message m) except -1:
        """Apply one message (§5.1: a higher term makes us a follower; a lower term is stale)."""
        cdef bint in_lease
        cdef bint can_vote
        cdef int resp_type
        if m.term == 0:
            pass  # local message, or a forwarded proposal/read
        elif m.term > self.term:
            if m.type == MsgVote or m.type == MsgPreVote:
                # Thesis §4.2.3/§9.6: a member that heard from a leader within the minimum election
                # timeout ignores vote requests, so a removed or partitioned member cannot disrupt.
                in_lease = (self.check_quorum and self.lead != NONE
                            and self.election_elapsed < self.election_timeout)
                if in_lease and m.context != CAMPAIGN_TRANSFER:
                    return 0
            if m.type == MsgPreVote or (m.type == MsgPreVoteResp and not m.reject):
                pass  # pre-votes never change terms; a granted pre-vote carries the future term
            elif m.type == MsgApp or m.type == MsgHeartbeat or m.type == MsgSnap:
                self.become_follower(m.term, m.frm)
            else:
                self.become_follower(m.term, NONE)
        elif m.term < self.term:
            if (self.check_quorum or self.pre_vote) and (m.type == MsgHeartbeat or m.type == MsgApp):
                # A stale leader (e.g. healed from a partition) learns of the new term; without this
                # it could never hear of it when its pre-votes are refused.
                self.send(Message(MsgAppResp, to=m.frm))
            elif m.type == MsgPreVote:
                self.send(Message(MsgPreVoteResp, to=m.frm, term=self.term, reject=True))
            return 0

        if m.type == MsgHup:
            return self.hup(MsgPreVote if self.pre_vote else MsgVote, b"")
        if m.type == MsgVote or m.type == MsgPreVote:
            # §5.2: one vote per term, first come first served; §5.4.1: only for an up-to-date log.
            can_vote = (self.vote == m.frm or (self.vote == NONE and self.lead == NONE)
                        or (m.type == MsgPreVote and m.term > self.term))
            resp_type = MsgVoteResp if m.type == MsgVote else MsgPreVoteResp
            if can_vote and self.log.is_up_to_date(m.index, m.log_term):
                self.send(Message(resp_type, to=m.frm, term=m.term))
                if m.type == MsgVote:
                    self.election_elapsed = 0
                    self.vote = m.frm
            else:
                self.send(Message(resp_type, to=m.frm, term=self.term, reject=True))
            return 0
        return self._step(self, m)

    cdef int hup(self, int vote_type, bytes ctx) except -1:
        """Campaign, unless leading already or not a voter. §6: not before applying a committed
        configuration change either, which may remove us (a transfer's campaign included)."""
        if self.state == StateLeader or not self.promotable():
            return 0
        if self.log.committed > self.log.applied and self.has_pending_conf():
            return 0
        return self.campaign(vote_type, ctx)

    def has_pending_conf(self):
        cdef Entry e
        for e in self.log.slice(self.log.applied + 1, self.log.committed + 1, NO_LIMIT) or ():
            if e.type == EntryConfChange:
                return True
        return False

    def tick(self):
        self._tick(self)

    cdef int handle_append_entries(self, Message m) except -1:
        cdef u64 last_new = 0
        if m.index < self.log.committed:
            self.send(Message(MsgAppResp, to=m.frm, index=self.log.committed))
            return 0
        if self.log.maybe_append(m.index, m.log_term, m.commit, m.entries, &last_new):
            self.send(Message(MsgAppResp, to=m.frm, index=last_new))
        else:
            self.send(Message(MsgAppResp, to=m.frm, index=m.index, reject=True,
                              reject_hint=min(m.index, self.log.last_index())))
        return 0

    cdef int handle_heartbeat(self, Message m) except -1:
        self.log.commit_to(m.commit)
        self.send(Message(MsgHeartbeatResp, to=m.frm, context=m.context))
        return 0

    cdef int handle_snapshot(self, Message m) except -1:
        if self.restore(m.snapshot):
            self.send(Message(MsgAppResp, to=m.frm, index=self.log.last_index()))
        else:
            self.send(Message(MsgAppResp, to=m.frm, index=self.log.committed))
        return 0

    cdef bint restore(self, Snapshot snap) except -1:
        """§7: install a snapshot unless our log already holds (and commits) its last entry."""
        if snap.index <= self.log.committed:
            return False
        if self.log.match_term(snap.index, snap.term):
            self.log.commit_to(snap.index)  # we have it: fast-forward the commit only
            return False
        self.log.restore(snap)
        self.prs = {}
        self.apply_conf(snap.voters, snap.index)
        cdef u64 last = self.log.last_index()
        for vid in self.prs:
            (<Progress>self.prs[vid]).next = last + 1
        return True

    # --- ReadIndex (thesis §6.4) -----------------------------------------------------------

    cdef int handle_read_index(self, Message m) except -1:
        if self.id not in self.prs:
            raise ProposalDropped("removed from the configuration: handing leadership over")
        if len(self.prs) == 1:
            return self.release_read(m.frm, self.log.committed, m.context)
        if self.log.term(self.log.committed) != self.term:
            # Until an entry of our term commits we do not know the latest commit index (§6.4 step 1).
            self.pending_read_msgs.append(m)
            return 0
        if m.context in self.read_by_ctx:
            return 0
        req = [m.context, self.log.committed, m.frm, {self.id}]
        self.read_queue.append(req)
        self.read_by_ctx[m.context] = req
        self.bcast_heartbeat(m.context)
        return 0

    cdef int handle_read_ack(self, u64 frm, bytes ctx) except -1:
        """A heartbeat round for ``ctx`` reached a quorum: we were still leader when the read
        arrived, so it and every earlier read may be served at their recorded indices."""
        req = self.read_by_ctx.get(ctx)
        if req is None:
            return 0
        req[3].add(frm)
        # Only voters of the configuration in force count: a voter removed since it answered no
        # longer belongs to the majorities whose overlap proves we are still leader.
        if len(req[3] & self.prs.keys()) < self.quorum():
            return 0
        cdef Py_ssize_t k = self.read_queue.index(req) + 1
        done, self.read_queue = self.read_queue[:k], self.read_queue[k:]
        for d in done:
            del self.read_by_ctx[d[0]]
            self.release_read(d[2], d[1], d[0])
        return 0

    cdef int release_read(self, u64 to, u64 index, bytes ctx) except -1:
        if to == NONE or to == self.id:
            self.read_states.append(ReadState(index, ctx))
        else:
            self.send(Message(MsgReadIndexResp, to=to, index=index, context=ctx))
        return 0

    # --- leadership transfer (thesis §3.10) --------------------------------------------------

    cdef int handle_transfer_leader(self, Message m) except -1:
        cdef u64 transferee = m.frm
        if transferee == self.id or transferee not in self.prs:
            return 0
        if self.lead_transferee == transferee:
            return 0
        self.lead_transferee = transferee
        self.election_elapsed = 0  # the transfer must finish within an election timeout
        if (<Progress>self.prs[transferee]).match == self.log.last_index():
            self.send_timeout_now(transferee)
        else:
            self.maybe_send_append(transferee, True)
        return 0

    # --- membership (§6, thesis §4.1) --------------------------------------------------------

    cdef int apply_conf(self, tuple voters, u64 index) except -1:
        cdef u64 last = self.log.last_index()
        for vid in list(self.prs):
            if vid not in voters:
                del self.prs[vid]
        for vid in voters:
            if vid not in self.prs:
                self.prs[vid] = Progress(last + 1, self.max_inflight)
        self.conf_history.append((index, tuple(sorted(voters))))
        return 0

    def apply_conf_change(self, ConfChange cc, u64 index):
        """Apply a committed single-member change; returns the new voters."""
        voters = set(self.prs)
        if cc.type == ConfChangeAddNode:
            voters.add(cc.node_id)
        else:
            voters.discard(cc.node_id)
        self.apply_conf(tuple(sorted(voters)), index)
        if self.state != StateLeader:
            if self.id not in self.prs and self.state != StateFollower:
                self.become_follower(self.term, NONE)  # removed while campaigning: give up
            return self.voters()
        if self.id not in self.prs:
            # Removed: accept nothing more, but lead until a successor that holds our whole log
            # takes over. Stepping down at once could leave the others unaware that the removal
            # committed, still counting on our vote, which our longer log would refuse them.
            self.hand_over()
            return self.voters()
        if cc.node_id == self.lead_transferee and cc.node_id not in self.prs:
            self.lead_transferee = NONE
        # A smaller quorum may commit more; a new voter needs the log.
        if self.maybe_commit():
            self.bcast_append()
        elif cc.type == ConfChangeAddNode and cc.node_id != self.id:
            self.maybe_send_append(cc.node_id, True)
        return self.voters()

    cdef int hand_over(self) except -1:
        """A removed leader transfers leadership to the voter that holds most of its log."""
        cdef Progress pr
        cdef u64 best = NONE
        cdef long long best_match = -1
        for vid, pr in sorted(self.prs.items()):
            if <long long>pr.match > best_match:
                best, best_match = vid, pr.match
        if best == NONE:
            return 0
        self.lead_transferee = best
        if best_match == self.log.last_index():
            self.send_timeout_now(best)
        else:
            self.maybe_send_append(best, True)
        return 0

    def voters_at(self, u64 index):
        """The voters of the configuration applied at ``index`` (``index`` must be applied)."""
        result = None
        for at, voters in self.conf_history:
            if at <= index:
                result = voters
        if result is None:
            raise ValueError(f"no configuration known at index {index}")
        return result


# ---------------------------------------------------------------------------------------------
# Ready and RawNode
# ---------------------------------------------------------------------------------------------

cdef class Ready:
    """Work the application must do, in this order, before calling ``RawNode.advance(ready)``:

    1. Persist ``snapshot`` (if any), then ``entries``, then ``hard_state`` (if any), and sync
       when ``must_sync``. Nothing of this Ready may be sent before that (§5: a vote or an
       acknowledgement is a promise about stable storage).
    2. Send ``messages``.
    3. Restore the state machine from ``snapshot`` (if any), then apply ``committed_entries``
       in order (they may include entries of this Ready's ``entries``, now persisted).
       ``read_states`` may be served once the applied index reaches their index.
    4. ``advance(ready)``.

    ``soft_state`` is None when lead and role did not change; ``hard_state`` is None when
    unchanged.
    """

    def describe(self):
        """The Ready as lines of text (one line per message and entry)."""
        lines = []
        if self.soft_state is not None:
            lines.append(self.soft_state.describe())
        if self.hard_state is not None:
            lines.append(self.hard_state.describe())
        if self.read_states:
            lines.append("ReadStates:")
            lines.extend(rs.describe() for rs in self.read_states)
        if self.entries:
            lines.append("Entries:")
            lines.extend(e.describe() for e in self.entries)
        if self.snapshot is not None:
            lines.append("Snapshot " + self.snapshot.describe())
        if self.committed_entries:
            lines.append("CommittedEntries:")
            lines.extend(e.describe() for e in self.committed_entries)
        if self.messages:
            lines.append("Messages:")
            lines.extend(m.describe() for m in self.messages)
        return "\n".join(lines)

    def __repr__(self):
        return f"Ready({self.describe()!r})"


cdef class Status:
    """A snapshot of a member's Raft state, for status pages and tests."""

    def describe(self):
        lines = [f"{self.id}: {STATE_NAMES[self.state]} Term:{self.term} Lead:{self.lead} "
                 f"Commit:{self.commit} Applied:{self.applied}"]
        for vid, pr in sorted(self.progress.items()):
            lines.append(f"{vid}: {pr.describe()}")
        return "\n".join(lines)


cdef class RawNode:
    """The application's handle on one member: drive it with ``tick``/``step``/``propose``,
    collect work with ``ready()``, report it done with ``advance(ready)``."""

    def __init__(self, Config config, storage):
        self.raft = Raft(config, storage)
        self.storage = storage
        self.prev_soft = SoftState(self.raft.lead, self.raft.state)
        self.prev_hard = storage.hard_state()

    # --- input ---------------------------------------------------------------------------

    def tick(self):
        """Advance logical time by one tick."""
        self.raft._tick(self.raft)

    def step(self, Message m):
        """Feed a message received from a peer. Local message types are refused; messages from
        members unknown to the configuration are still stepped (they may carry a newer term)."""
        if m.type == MsgHup or m.type == MsgBeat:
            raise ValueError(f"{MESSAGE_NAMES[m.type]} is local; use campaign() or tick()")
        try:
            self.raft.step(m)
        except ProposalDropped:
            pass  # a forwarded proposal or read that cannot be served now: the sender times out

    def campaign(self):
        """Start an election now (pre-vote first when enabled)."""
        self.raft.step(Message(MsgHup, frm=self.raft.id))

    def propose(self, bytes data):
        """Propose ``data`` as a normal entry; raises ``ProposalDropped`` when it surely failed."""
        self.raft.step(Message(MsgProp, frm=self.raft.id, entries=[Entry(0, 0, EntryNormal, data)]))

    def propose_many(self, list datas):
        """Propose every ``bytes`` of ``datas`` as a normal entry, in order, in one step (one
        append, one MsgApp per follower); raises ``ProposalDropped`` when they surely failed
        (all of them: the step is atomic)."""
        cdef bytes data
        if not datas:
            return
        self.raft.step(Message(MsgProp, frm=self.raft.id,
                               entries=[Entry(0, 0, EntryNormal, data) for data in datas]))

    def propose_conf_change(self, ConfChange cc):
        """Propose a single-member change; it takes effect when applied (``advance``)."""
        self.raft.step(Message(MsgProp, frm=self.raft.id, entries=[Entry(0, 0, EntryConfChange, cc.encode())]))

    def transfer_leader(self, u64 to):
        """Ask the leader to hand leadership to ``to`` (forwarded when we are not the leader)."""
        self.raft.step(Message(MsgTransferLeader, frm=to, to=self.raft.id))

    def read_index(self, bytes ctx):
        """Request a linearizable read; a ``ReadState`` with ``ctx`` appears in a later Ready.
        ``ctx`` must be unique among outstanding requests."""
        self.raft.step(Message(MsgReadIndex, frm=self.raft.id, entries=[], context=ctx))

    # --- output --------------------------------------------------------------------------

    def has_ready(self):
        """Whether ``ready()`` has new work (beyond what earlier Readies handed out)."""
        cdef Raft r = self.raft
        if r.msgs or r.read_states or r.log.has_unsaved():
            return True
        if r.log.has_next_committed_entries():
            return True
        if r.lead != self.prev_soft.lead or r.state != self.prev_soft.state:
            return True
        cdef HardState hs = self.prev_hard
        return r.term != hs.term or r.vote != hs.vote or r.log.committed != hs.commit

    def ready(self):
        """The new work (see ``Ready``): what earlier Readies did not hand out.

        Readies may be pipelined: ``ready()`` may be called again before ``advance`` of the
        previous one, provided the application persists Readies in the order it got them,
        sends a Ready's messages only once every earlier Ready is persisted (and, except a
        leader's appends, once this one is), applies committed entries in order, each only once
        its own Ready is persisted, and advances Readies in order."""
        cdef Raft r = self.raft
        cdef RaftLog log = r.log
        cdef Ready rd = Ready()
        soft = SoftState(r.lead, r.state)
        rd.soft_state = None if soft == self.prev_soft else soft
        hard = HardState(r.term, r.vote, log.committed)
        rd.hard_state = None if hard == self.prev_hard else hard
        rd.entries = log.take_unsaved()
        if log._pending_snapshot is not None and not log._snapshot_saving:
            rd.snapshot = log._pending_snapshot
            log._snapshot_saving = True
        rd.committed_entries = log.next_committed_entries()
        rd.messages = r.msgs
        rd.read_states = r.read_states
        rd.must_sync = bool(rd.entries) or (rd.hard_state is not None and (
            hard.term != self.prev_hard.term or hard.vote != self.prev_hard.vote))
        r.msgs = []
        r.read_states = []
        if rd.soft_state is not None:
            self.prev_soft = rd.soft_state
        if rd.hard_state is not None:
            self.prev_hard = rd.hard_state
        return rd

    def advance(self, Ready rd):
        """The work of ``rd`` is done: its entries and hard state are stable and its committed
        entries applied. Committed configuration changes take effect here."""
        cdef Raft r = self.raft
        cdef Entry e
        if rd.snapshot is not None:
            r.log.stable_snap_to(rd.snapshot.index)
            if rd.snapshot.index > r.log.applied:
                r.log.applied = rd.snapshot.index
        if rd.entries:
            e = rd.entries[len(rd.entries) - 1]
            r.log.stable_to(e.index, e.term)
        for e in rd.committed_entries:
            if e.index <= r.log.applied:
                continue
            r.log.applied_to(e.index)
            if e.type == EntryConfChange:
                r.apply_conf_change(ConfChange.decode(e.data), e.index)

    # --- maintenance ---------------------------------------------------------------------

    def compact(self, u64 index, bytes data):
        """Record a snapshot of the application state as of ``index`` (already applied) and
        drop the log before it. Followers behind it will be sent this snapshot."""
        if index > self.raft.log.applied:
            raise ValueError(f"index {index} not applied yet (applied {self.raft.log.applied})")
        self.storage.create_snapshot(index, self.raft.voters_at(index), data)
        self.storage.compact(index)

    def status(self):
        cdef Raft r = self.raft
        cdef Status s = Status()
        s.id = r.id
        s.term = r.term
        s.vote = r.vote
        s.lead = r.lead
        s.state = r.state
        s.commit = r.log.committed
        s.applied = r.log.applied
        s.voters = r.voters()
        s.lead_transferee = r.lead_transferee
        s.progress = dict(r.prs) if r.state == StateLeader else {}
        return s

    @property
    def id(self):
        return self.raft.id

    @property
    def term(self):
        return self.raft.term

    @property
    def state(self):
        return self.raft.state

    @property
    def lead(self):
        return self.raft.lead

    def log_term(self, u64 index):
        """The term of the entry at ``index``; 0 when compacted away or absent."""
        return self.raft.log.term(index)

    def log_entries(self, u64 lo=1):
        return self.raft.log.entries_from(lo)

    @property
    def first_index(self):
        return self.raft.log.first_index()

    @property
    def last_index(self):
        return self.raft.log.last_index()

    @property
    def committed(self):
        return self.raft.log.committed

    @property
    def applied(self):
        return self.raft.log.applied

    def ticks_to_election(self):
        """Ticks until this member acts on its election timer (campaign, or the leader's quorum check)."""
        cdef Raft r = self.raft
        if r.state == StateLeader:
            return max(1, r.election_timeout - r.election_elapsed)
        return max(1, r.randomized_election_timeout - r.election_elapsed)
