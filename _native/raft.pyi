"""Type stubs for the Raft core (see raft.pyx and docs/raft.md)."""

import enum
from typing import Any, Protocol

class MessageType(enum.IntFlag):
    MsgHup = 0
    MsgBeat = 1
    MsgProp = 2
    MsgApp = 3
    MsgAppResp = 4
    MsgVote = 5
    MsgVoteResp = 6
    MsgPreVote = 7
    MsgPreVoteResp = 8
    MsgSnap = 9
    MsgHeartbeat = 10
    MsgHeartbeatResp = 11
    MsgTransferLeader = 12
    MsgTimeoutNow = 13
    MsgReadIndex = 14
    MsgReadIndexResp = 15

class EntryType(enum.IntFlag):
    EntryNormal = 0
    EntryConfChange = 1

class StateType(enum.IntFlag):
    StateFollower = 0
    StateCandidate = 1
    StateLeader = 2
    StatePreCandidate = 3

class ProgressState(enum.IntFlag):
    StateProbe = 0
    StateReplicate = 1
    StateSnapshot = 2

class ConfChangeType(enum.IntFlag):
    ConfChangeAddNode = 0
    ConfChangeRemoveNode = 1

MsgHup: MessageType
MsgBeat: MessageType
MsgProp: MessageType
MsgApp: MessageType
MsgAppResp: MessageType
MsgVote: MessageType
MsgVoteResp: MessageType
MsgPreVote: MessageType
MsgPreVoteResp: MessageType
MsgSnap: MessageType
MsgHeartbeat: MessageType
MsgHeartbeatResp: MessageType
MsgTransferLeader: MessageType
MsgTimeoutNow: MessageType
MsgReadIndex: MessageType
MsgReadIndexResp: MessageType
EntryNormal: EntryType
EntryConfChange: EntryType
StateFollower: StateType
StateCandidate: StateType
StateLeader: StateType
StatePreCandidate: StateType
StateProbe: ProgressState
StateReplicate: ProgressState
StateSnapshot: ProgressState
ConfChangeAddNode: ConfChangeType
ConfChangeRemoveNode: ConfChangeType

NONE: int
MESSAGE_NAMES: tuple[str, ...]
ENTRY_NAMES: tuple[str, ...]
STATE_NAMES: tuple[str, ...]
PROGRESS_NAMES: tuple[str, ...]
CAMPAIGN_TRANSFER: bytes

class ProposalDropped(Exception): ...
class CompactedError(Exception): ...
class UnavailableError(Exception): ...

class Entry:
    term: int
    index: int
    type: int
    data: bytes
    def __init__(self, term: int, index: int, type: int = ..., data: bytes = ...) -> None: ...
    def to_wire(self) -> tuple[int, int, int, bytes]: ...
    @staticmethod
    def from_wire(t: Any) -> Entry: ...
    def describe(self) -> str: ...

class HardState:
    term: int
    vote: int
    commit: int
    def __init__(self, term: int = 0, vote: int = 0, commit: int = 0) -> None: ...
    def to_wire(self) -> tuple[int, int, int]: ...
    @staticmethod
    def from_wire(t: Any) -> HardState: ...
    def is_empty(self) -> bool: ...
    def describe(self) -> str: ...

class Snapshot:
    index: int
    term: int
    voters: tuple[int, ...]
    data: bytes
    def __init__(self, index: int = 0, term: int = 0, voters: Any = (), data: bytes = b"") -> None: ...
    def to_wire(self) -> tuple[int, int, tuple[int, ...], bytes]: ...
    @staticmethod
    def from_wire(t: Any) -> Snapshot | None: ...
    def is_empty(self) -> bool: ...
    def describe(self) -> str: ...

class ConfChange:
    type: int
    node_id: int
    context: bytes
    def __init__(self, type: int, node_id: int, context: bytes = ...) -> None: ...
    def encode(self) -> bytes: ...
    @staticmethod
    def decode(data: bytes) -> ConfChange: ...
    def describe(self) -> str: ...

class Message:
    type: int
    to: int
    frm: int
    term: int
    log_term: int
    index: int
    commit: int
    reject: bool
    reject_hint: int
    context: bytes
    entries: list[Entry]
    snapshot: Snapshot | None
    def __init__(self, type: int, to: int = 0, frm: int = 0, term: int = 0, log_term: int = 0, index: int = 0,
                 commit: int = 0, reject: bool = False, reject_hint: int = 0, context: bytes = b"",
                 entries: list[Entry] | None = None, snapshot: Snapshot | None = None) -> None: ...
    def to_wire(self) -> tuple[Any, ...]: ...
    @staticmethod
    def from_wire(t: Any) -> Message: ...
    def describe(self) -> str: ...

class ReadState:
    index: int
    context: bytes
    def __init__(self, index: int, context: bytes) -> None: ...
    def describe(self) -> str: ...

class SoftState:
    lead: int
    state: int
    def __init__(self, lead: int, state: int) -> None: ...
    def describe(self) -> str: ...

class Storage(Protocol):
    """What the core reads; a disk-backed log implements the same methods."""
    def hard_state(self) -> HardState: ...
    def snapshot(self) -> Snapshot: ...
    def first_index(self) -> int: ...
    def last_index(self) -> int: ...
    def term(self, i: int) -> int: ...
    def entries(self, lo: int, hi: int, max_size: int) -> list[Entry]: ...
    def create_snapshot(self, index: int, voters: tuple[int, ...], data: bytes) -> Snapshot: ...
    def compact(self, index: int) -> None: ...

class MemoryStorage:
    def __init__(self) -> None: ...
    def hard_state(self) -> HardState: ...
    def snapshot(self) -> Snapshot: ...
    def first_index(self) -> int: ...
    def last_index(self) -> int: ...
    def term(self, i: int) -> int: ...
    def entries(self, lo: int, hi: int, max_size: int) -> list[Entry]: ...
    def set_hard_state(self, hs: HardState) -> None: ...
    def append(self, ents: list[Entry]) -> None: ...
    def apply_snapshot(self, snap: Snapshot) -> None: ...
    def create_snapshot(self, index: int, voters: Any, data: bytes) -> Snapshot: ...
    def compact(self, index: int) -> None: ...
    def save(self, rd: Ready) -> None: ...

class Progress:
    match: int
    next: int
    state: int
    probe_sent: bool
    pending_snapshot: int
    recent_active: bool
    def describe(self) -> str: ...

class Config:
    id: int
    peers: tuple[int, ...]
    election_tick: int
    heartbeat_tick: int
    pre_vote: bool
    check_quorum: bool
    max_size_per_msg: int
    max_inflight: int
    rng: Any
    applied: int
    def __init__(self, id: int, peers: Any = (), election_tick: int = 10, heartbeat_tick: int = 1,
                 pre_vote: bool = True, check_quorum: bool = True, max_size_per_msg: int = ...,
                 max_inflight: int = 256, rng: Any = None, applied: int = 0) -> None: ...

class Ready:
    soft_state: SoftState | None
    hard_state: HardState | None
    read_states: list[ReadState]
    entries: list[Entry]
    snapshot: Snapshot | None
    committed_entries: list[Entry]
    messages: list[Message]
    must_sync: bool
    def describe(self) -> str: ...

class Status:
    id: int
    term: int
    vote: int
    lead: int
    state: int
    commit: int
    applied: int
    voters: tuple[int, ...]
    lead_transferee: int
    progress: dict[int, Progress]
    def describe(self) -> str: ...

class Raft:
    id: int
    term: int
    vote: int
    lead: int
    state: int
    lead_transferee: int
    pending_conf_index: int
    randomized_election_timeout: int
    election_elapsed: int
    prs: dict[int, Progress]
    msgs: list[Message]
    read_states: list[ReadState]
    def step(self, m: Message) -> int: ...
    def tick(self) -> None: ...

class RawNode:
    raft: Raft
    storage: Any
    id: int
    term: int
    state: int
    lead: int
    first_index: int
    last_index: int
    committed: int
    applied: int
    def __init__(self, config: Config, storage: Any) -> None: ...
    def tick(self) -> None: ...
    def step(self, m: Message) -> None: ...
    def campaign(self) -> None: ...
    def propose(self, data: bytes) -> None: ...
    def propose_many(self, datas: list[bytes]) -> None:
        """Propose each as a normal entry, in order, in one step; ``ProposalDropped`` drops all."""
    def propose_conf_change(self, cc: ConfChange) -> None: ...
    def transfer_leader(self, to: int) -> None: ...
    def read_index(self, ctx: bytes) -> None: ...
    def has_ready(self) -> bool: ...
    def ready(self) -> Ready: ...
    def advance(self, rd: Ready) -> None: ...
    def compact(self, index: int, data: bytes) -> None: ...
    def status(self) -> Status: ...
    def log_term(self, index: int) -> int: ...
    def log_entries(self, lo: int = 1) -> list[Entry]: ...
    def ticks_to_election(self) -> int: ...
