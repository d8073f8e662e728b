"""Each unit's journal: its processes' output and the runtime's messages about it, kept in files.

Layout under the journal directory, per unit ``N``:

* ``N.out`` — raw stdout+stderr of every process of the unit. Processes write it directly (opened with
  ``O_APPEND``), so they never depend on the runtime being alive to read a pipe: a unit keeps running,
  and keeps logging, across a restart of the runtime. ``N.out.pos`` records how far it was read.
* ``N.log`` (and the previous generation ``N.log.1``) — the journal proper, one entry per line in
  journalctl's short format: ``Mon DD HH:MM:SS host ident[pid]: message``. Output lines get the unit's
  name and main PID as identifier; the runtime's own messages use ``fleetd``. When ``N.log`` would
  exceed ``max_bytes`` it becomes ``N.log.1`` (replacing the older one): at most ``2 * max_bytes`` kept.

``pump`` moves complete output lines into the journal, stamped with the time they were read (so output
written while no runtime was running is stamped when it is picked up). Once everything written so far
is read and ``N.out`` is larger than ``max_bytes``, it is truncated to keep it bounded; output written
in the instant between that last read and the truncation is lost (an accepted, tiny window).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import BinaryIO

from fleetd.files import write_atomically

DEFAULT_MAX_BYTES = 1 << 20
#: A line longer than this is cut into entries of this size (journald's line_max is 48 KiB).
LINE_MAX = 48 * 1024


def format_entry(stamp: float, hostname: str, ident: str, pid: int | None, message: str) -> str:
    """One journal line (no newline): journalctl's short format with local time."""
    who = f"{ident}[{pid}]" if pid else ident
    return f"{time.strftime('%b %d %H:%M:%S', time.localtime(stamp))} {hostname} {who}: {message}"


def _read_tail(path: Path, count: int) -> list[str]:
    """The last ``count`` lines of ``path`` (fewer if it has fewer; none if it does not exist)."""
    if count <= 0:
        return []
    try:
        with open(path, "rb") as handle:
            end = handle.seek(0, os.SEEK_END)
            data = b""
            pos = end
            while pos > 0 and data.count(b"\n") <= count:
                step = min(65536, pos)
                pos -= step
                handle.seek(pos)
                data = handle.read(step) + data
    except FileNotFoundError:
        return []
    return data.decode(errors="replace").splitlines()[-count:]


class Journal:
    """The journals of all units of one runtime, in ``directory``.

    All methods are called from the event loop thread; writes are small appends. ``clock`` gives the
    wall-clock time of entries.
    """

    def __init__(self, directory: Path, hostname: str, *, max_bytes: int = DEFAULT_MAX_BYTES,
                 clock: Callable[[], float] = time.time) -> None:
        self.directory = directory
        self.hostname = hostname
        self.max_bytes = max_bytes
        self.clock = clock
        self._partial: dict[str, bytes] = {}
        self._positions: dict[str, int] = {}
        self._changed: dict[str, asyncio.Event] = {}
        #: Unit name -> the main PID its output lines are attributed to.
        self.main_pids: dict[str, int] = {}
        directory.mkdir(parents=True, exist_ok=True)

    # --- paths ------------------------------------------------------------------------------------

    def log_path(self, name: str) -> Path:
        """The current journal file of unit ``name``."""
        return self.directory / f"{name}.log"

    def output_path(self, name: str) -> Path:
        """The raw output file the unit's processes write."""
        return self.directory / f"{name}.out"

    def _pos_path(self, name: str) -> Path:
        return self.directory / f"{name}.out.pos"

    # --- writing ----------------------------------------------------------------------------------

    def open_output(self, name: str) -> int:
        """A new write-only, append-mode descriptor on the unit's raw output, for a child's stdout/stderr.

        The caller closes it after handing it to the child.
        """
        return os.open(self.output_path(name), os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o640)

    def write(self, name: str, message: str, *, ident: str = "fleetd", pid: int | None = None) -> None:
        """Append one entry per line of ``message`` to unit ``name``'s journal (after pending output)."""
        self.pump(name)
        self._append(name, [format_entry(self.clock(), self.hostname, ident, pid, line)
                            for line in message.splitlines() or [""]])

    def _append(self, name: str, entries: list[str]) -> None:
        """Append entries, rotating first when the current file would outgrow ``max_bytes``; of a batch
        larger than ``max_bytes`` only the newest entries that fit are kept."""
        if not entries:
            return
        encoded = [(entry + "\n").encode() for entry in entries]
        total, keep = 0, len(encoded)
        while keep > 0 and total + len(encoded[keep - 1]) <= self.max_bytes:
            keep -= 1
            total += len(encoded[keep])
        data = b"".join(encoded[keep:]) if keep < len(encoded) else encoded[-1][-self.max_bytes:]
        path = self.log_path(name)
        with contextlib.suppress(FileNotFoundError):
            if path.stat().st_size + len(data) > self.max_bytes:
                os.replace(path, self.directory / f"{name}.log.1")
        with open(path, "ab") as handle:
            handle.write(data)
        event = self._changed.get(name)
        if event is not None:
            event.set()

    def pump(self, name: str) -> int:
        """Move the complete lines written to ``name``'s raw output since the last pump into its journal,
        as entries from ``name[main PID]`` (the PID set by ``set_main_pid``, if any).

        Returns the number of entries written. A trailing partial line waits for its newline, unless it
        grew to ``LINE_MAX``.
        """
        path = self.output_path(name)
        try:
            size = path.stat().st_size
        except FileNotFoundError:
            return 0
        pos = self._read_pos(name)
        if size < pos:  # truncated by someone else: start over
            pos, self._partial[name] = 0, b""
        if size == pos:
            return 0
        with open(path, "rb") as handle:
            handle.seek(pos)
            data = self._partial.pop(name, b"") + handle.read(size - pos)
        *lines, rest = data.split(b"\n")
        while len(rest) >= LINE_MAX:
            lines.append(rest[:LINE_MAX])
            rest = rest[LINE_MAX:]
        if rest:
            self._partial[name] = rest
        stamp, pid = self.clock(), self.main_pids.get(name)
        self._append(name, [format_entry(stamp, self.hostname, name, pid, line.decode(errors="replace"))
                            for line in lines])
        if size > self.max_bytes and path.stat().st_size == size:
            os.truncate(path, 0)
            size = 0
        self._write_pos(name, size)
        return len(lines)

    def _read_pos(self, name: str) -> int:
        if name not in self._positions:
            try:
                self._positions[name] = int(self._pos_path(name).read_text() or 0)
            except (FileNotFoundError, ValueError):
                self._positions[name] = 0
        return self._positions[name]

    def _write_pos(self, name: str, pos: int) -> None:
        self._positions[name] = pos
        write_atomically(self._pos_path(name), str(pos))

    def forget_output(self, name: str) -> None:
        """Drop the raw output file (after it was pumped) when no process of the unit is left."""
        for path in (self.output_path(name), self._pos_path(name)):
            path.unlink(missing_ok=True)
        self._partial.pop(name, None)
        self._positions.pop(name, None)

    # --- reading ----------------------------------------------------------------------------------

    def tail(self, name: str, lines: int) -> list[str]:
        """The last ``lines`` entries of ``name``'s journal, oldest first (both generations)."""
        current = _read_tail(self.log_path(name), lines)
        if len(current) >= lines:
            return current
        return _read_tail(self.directory / f"{name}.log.1", lines - len(current)) + current

    async def read(self, name: str, lines: int = 10, follow: bool = False,
                   poll_interval: float = 0.5) -> AsyncIterator[str]:
        """Yield the last ``lines`` entries; with ``follow`` keep yielding new entries until closed.

        Following survives rotation. New entries written through this object wake the reader at once;
        entries written by another process are noticed within ``poll_interval`` seconds.
        """
        path = self.log_path(name)
        handle: BinaryIO | None = None
        try:
            handle = open(path, "rb") if path.exists() else None  # noqa: SIM115 - kept open while following
            for entry in self.tail(name, lines):
                yield entry
            if not follow:
                return
            if handle is not None:
                handle.seek(0, os.SEEK_END)
            event = self._changed.setdefault(name, asyncio.Event())
            buffered = b""
            while True:
                if handle is None and path.exists():
                    handle = open(path, "rb")  # noqa: SIM115
                if handle is not None:
                    buffered += handle.read()
                    *complete, buffered = buffered.split(b"\n")
                    for raw in complete:
                        yield raw.decode(errors="replace")
                    if self._rotated(handle, path):
                        handle.close()
                        handle = None
                        continue
                event.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(event.wait(), poll_interval)
        finally:
            if handle is not None:
                handle.close()

    @staticmethod
    def _rotated(handle: BinaryIO, path: Path) -> bool:
        """True when ``path`` no longer names the file ``handle`` reads (and the handle is drained)."""
        try:
            return os.stat(path).st_ino != os.fstat(handle.fileno()).st_ino
        except FileNotFoundError:
            return False
