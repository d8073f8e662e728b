"""Store snapshots on disk: one file per snapshot, written atomically, checked on load.

A file ``<term:016x>-<index:016x>.fksnap`` holds a header (magic, index, term, length, CRC32 of
the payload) and the payload (``Store.snapshot()`` bytes). ``save`` writes a temporary file,
fsyncs it, renames it into place and fsyncs the directory, so a crash leaves either the old
set of snapshots or the new one, never a half-written file under a snapshot name.
"""

from __future__ import annotations

import os
import struct
import zlib
from dataclasses import dataclass, field
from pathlib import Path

MAGIC = b"FKVSNAP\x01"
SUFFIX = ".fksnap"
_HEADER = struct.Struct(">QQQI")  # index, term, payload length, crc32


class SnapshotError(Exception):
    """A snapshot file is damaged (bad magic, length or CRC)."""


@dataclass(frozen=True)
class Snapshot:
    """A snapshot of the applied state at log position ``(index, term)``."""

    index: int
    term: int
    data: bytes


def fsync_dir(path: Path) -> None:
    """Make a rename or a new file in ``path`` durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def encode(snapshot: Snapshot) -> bytes:
    """The file contents of ``snapshot``."""
    header = _HEADER.pack(snapshot.index, snapshot.term, len(snapshot.data), zlib.crc32(snapshot.data))
    return MAGIC + header + snapshot.data


def decode(raw: bytes, name: str = "snapshot") -> Snapshot:
    """The snapshot in ``raw``; ``SnapshotError`` when anything does not check out."""
    start = len(MAGIC) + _HEADER.size
    if len(raw) < start or not raw.startswith(MAGIC):
        raise SnapshotError(f"{name}: not a fastkv snapshot (bad header)")
    index, term, length, crc = _HEADER.unpack_from(raw, len(MAGIC))
    data = raw[start:]
    if len(data) != length:
        raise SnapshotError(f"{name}: truncated ({len(data)} of {length} payload bytes)")
    if zlib.crc32(data) != crc:
        raise SnapshotError(f"{name}: CRC mismatch")
    return Snapshot(index, term, data)


@dataclass
class Snapshotter:
    """The snapshot files of one member in ``directory``.

    ``skipped`` lists the damaged files ``load_latest`` passed over (for the log).
    """

    directory: Path
    skipped: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.directory = Path(self.directory)
        self.directory.mkdir(parents=True, exist_ok=True)

    def names(self) -> list[str]:
        """Snapshot file names, oldest first (by index, then term)."""
        found = [p.name for p in self.directory.iterdir() if p.name.endswith(SUFFIX)]
        return sorted(found, key=lambda n: (n[17:33], n[:16]))

    def save(self, snapshot: Snapshot) -> Path:
        """Write ``snapshot`` durably and atomically; returns its path."""
        name = f"{snapshot.term:016x}-{snapshot.index:016x}{SUFFIX}"
        final = self.directory / name
        tmp = self.directory / (name + ".tmp")
        with open(tmp, "wb") as f:
            f.write(encode(snapshot))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, final)
        fsync_dir(self.directory)
        return final

    def load_latest(self) -> Snapshot | None:
        """The newest snapshot that reads back intact, or None; damaged ones go to ``skipped``."""
        self.skipped = []
        for name in reversed(self.names()):
            try:
                return decode((self.directory / name).read_bytes(), name)
            except (OSError, SnapshotError) as exc:
                self.skipped.append(str(exc))
        return None

    def indices(self) -> list[int]:
        """The log index of every snapshot file, oldest first."""
        return [int(n[17:33], 16) for n in self.names()]

    def prune(self, keep: int) -> None:
        """Delete all but the newest ``keep`` snapshots, and stale temporary files."""
        for name in self.names()[:-keep] if keep else self.names():
            (self.directory / name).unlink(missing_ok=True)
        for path in self.directory.glob("*" + SUFFIX + ".tmp"):
            path.unlink(missing_ok=True)
