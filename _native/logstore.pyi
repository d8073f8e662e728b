"""The replicated log: entries ``(index, term, type, data)`` with a CRC each, the hard state
``(term, vote, commit)``, a compaction point and small metadata, in LMDB; the newest entries
also in a preallocated write-ahead file. One ``append`` is one sync: one record written to the
file and ``fdatasync``ed (or, now and then, one synced LMDB transaction that takes the entries
held in memory along)."""

WAL_NAME: str
WAL_BYTES: int
CHECKPOINT_ENTRIES: int

ENTRY_NORMAL: int
ENTRY_CONF: int
ENTRY_SYNC: int
ENTRY_EMPTY: int

Entry = tuple[int, int, int, bytes]

class CorruptLogError(Exception):
    """The log on disk is damaged (CRC mismatch, malformed record, unreadable LMDB file)."""

class LogFullError(Exception):
    """An append failed because the map or the disk is full; nothing of it was written."""

class LogStore:
    path: str
    first_index: int
    last_index: int
    compacted_index: int
    compacted_term: int
    def __init__(self, path: str, map_size: int = 1 << 30) -> None: ...
    @property
    def hard_state(self) -> tuple[int, int, int]: ...
    def append(self, entries: list[Entry], hard_state: tuple[int, int, int] | None = None) -> None:
        """Write entries (consecutive, starting in ``first_index .. last_index + 1``; later
        entries are replaced) and the hard state, durably, with one sync."""
    def entries(self, lo: int, hi: int) -> list[Entry]:
        """Entries ``lo <= index < hi``, CRC-checked; ``IndexError`` when ``lo`` is compacted."""
    def term(self, index: int) -> int:
        """Term of a held entry or of the compaction point; ``IndexError`` otherwise."""
    def compact(self, upto_index: int) -> None:
        """Drop entries ``<= upto_index``."""
    def reset(self, index: int, term: int, hard_state: tuple[int, int, int] | None = None) -> None:
        """Drop every entry; ``(index, term)`` becomes the compaction point (snapshot install)."""
    def get_meta(self, key: bytes) -> bytes | None: ...
    def put_meta(self, key: bytes, value: bytes) -> None: ...
    def sync(self) -> None:
        """Move the entries held in memory into LMDB (every write is durable already)."""
    def close(self) -> None:
        """Move the entries held in memory into LMDB and close. Idempotent."""
