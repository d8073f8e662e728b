"""The data directory: layout, creation, locking and the checks made before a member starts.

Layout::

    <data-dir>/member/log/         the LMDB log (entries, hard state, identity metadata)
    <data-dir>/member/log/wal      its write-ahead file: the newest entries, one sync per append
    <data-dir>/member/snap/        store snapshots (*.fksnap)
    <data-dir>/member/lock         held (flock) while a server uses the directory

A new directory is prepared under ``member.tmp`` and renamed to ``member`` once its identity is
recorded, so a crash during creation leaves nothing that looks like a member. An existing
directory is refused, with a message saying why, when it was written by etcd, is damaged, is in
use by another process, or belongs to another member.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from fastkv._native.logstore import CorruptLogError, LogStore
from fastkv.storage.snapshot import Snapshotter, fsync_dir

FORMAT_VERSION = 1
IDENTITY_KEY = b"identity"


class DataDirError(Exception):
    """A data directory this member must not start on; the message says why and what to do."""


@dataclass(frozen=True)
class Identity:
    """Which member a data directory belongs to."""

    name: str
    member_id: int
    cluster_id: int
    token: str

    def encode(self) -> bytes:
        return json.dumps({"format": FORMAT_VERSION, "name": self.name, "member_id": f"{self.member_id:x}",
                           "cluster_id": f"{self.cluster_id:x}", "token": self.token}).encode()

    @staticmethod
    def decode(raw: bytes) -> Identity:
        data: dict[str, Any] = json.loads(raw)
        if data.get("format") != FORMAT_VERSION:
            raise ValueError(f"unknown data directory format {data.get('format')!r}")
        return Identity(data["name"], int(data["member_id"], 16), int(data["cluster_id"], 16), data["token"])


@dataclass
class DataDir:
    """An open, locked data directory: its log, its snapshots and whose it is.

    ``fresh`` is True when this start created it.
    """

    path: Path
    log: LogStore
    snapshots: Snapshotter
    identity: Identity
    fresh: bool
    _lock: IO[bytes]

    def close(self) -> None:
        """Close the log (if still open) and release the lock."""
        self.log.close()
        self._lock.close()


def is_initialised(path: str | Path) -> bool:
    """Whether ``path`` already holds a member's log (a restart: the initial-cluster flags are ignored)."""
    return (Path(path) / "member" / "log").is_dir()


def _looks_like_etcd(member: Path) -> bool:
    wal = member / "wal"
    return (member / "snap" / "db").exists() or (wal.is_dir() and any(wal.glob("*.wal")))


def _lock(member: Path) -> IO[bytes]:
    handle = open(member / "lock", "ab")  # noqa: SIM115 - held for the life of the server
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        handle.close()
        raise DataDirError(f"data directory {member.parent} is in use by another process") from None
    return handle


def _create(path: Path, identity: Identity, map_size: int) -> None:
    """Prepare ``member.tmp`` with an empty log that records ``identity``, then rename it."""
    tmp = path / "member.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    (tmp / "snap").mkdir(parents=True)
    log = LogStore(str(tmp / "log"), map_size)
    log.put_meta(IDENTITY_KEY, identity.encode())
    log.close()
    fsync_dir(tmp)
    os.rename(tmp, path / "member")
    fsync_dir(path)


def open_data_dir(path: str | Path, expected: Identity, map_size: int = 1 << 30,
                  check_member_id: bool = True) -> DataDir:
    """Open (creating it when absent) the data directory for the member ``expected`` describes.

    Raises ``DataDirError`` when the directory cannot be used as it is. ``check_member_id``
    compares the member id derived from the flags with the recorded one (it cannot be derived
    for a member added at run time).
    """
    path = Path(path)
    member = path / "member"
    fresh = not member.exists()
    try:
        path.mkdir(parents=True, exist_ok=True)
        if fresh:
            _create(path, expected, map_size)
    except OSError as exc:
        raise DataDirError(f"cannot create data directory {path}: {exc}") from None
    if _looks_like_etcd(member):
        raise DataDirError(f"data directory {path} was written by etcd (member/wal, member/snap/db); "
                           "fastkv keeps its own format and cannot read it: use a new --data-dir")
    if not (member / "log" / "data.mdb").is_file():
        raise DataDirError(f"data directory {path} is damaged or not a fastkv data directory: "
                           "member/log/data.mdb is missing")
    lock = _lock(member)
    try:
        log = LogStore(str(member / "log"), map_size)
    except (CorruptLogError, OSError) as exc:
        lock.close()
        raise DataDirError(f"data directory {path} is damaged: {exc}") from None
    try:
        identity = _read_identity(path, log)
        _check_identity(path, identity, expected, check_member_id)
    except DataDirError:
        log.close()
        lock.close()
        raise
    return DataDir(path, log, Snapshotter(member / "snap"), identity, fresh, lock)


def _read_identity(path: Path, log: LogStore) -> Identity:
    raw = log.get_meta(IDENTITY_KEY)
    if raw is None:
        raise DataDirError(f"data directory {path} is damaged: it does not record which member it belongs to")
    try:
        return Identity.decode(raw)
    except (ValueError, KeyError, TypeError) as exc:
        raise DataDirError(f"data directory {path} is damaged: unreadable identity record ({exc})") from None


def _check_identity(path: Path, found: Identity, expected: Identity, check_member_id: bool) -> None:
    if found.name != expected.name:
        raise DataDirError(
            f"data directory {path} belongs to member {found.name!r} (id {found.member_id:x}), "
            f"not to {expected.name!r}: start with --name {found.name} or use another --data-dir")
    if check_member_id and found.member_id != expected.member_id:
        raise DataDirError(
            f"data directory {path} belongs to member {found.member_id:x} of cluster {found.cluster_id:x}, "
            f"but these flags (peer URLs, --initial-cluster-token {expected.token}) describe member "
            f"{expected.member_id:x}: use the flags it was created with or another --data-dir")
