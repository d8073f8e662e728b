"""The log's writers: a thread for the jobs that need Python, and a compiled sync queue for records.

Jobs (``submit``, ``run``) run one at a time, in submission order, on one daemon thread: saves
that go through LMDB, snapshots, compaction. Each job's outcome is handed back to the event loop
with one ``call_soon_threadsafe``, a thinner hand-off than ``run_in_executor``.

Records (``submit_record``) are write-ahead records the loop staged (``LogStore.stage``): a
``SyncQueue`` thread writes them at their offsets and syncs once per group, never taking the
GIL, and its eventfd wakes the loop, which gets each record's outcome in order.

The two never write at the same time: a record is only submitted while no job is pending
(``pending == 0``), and a job submitted while records are outstanding is held until they are
all done. A failed record makes every later one fail unwritten (the queue's failure is
sticky); after ``abandon_records`` the outcomes of those outstanding are dropped, and the queue
is reset once they are all in.
"""

from __future__ import annotations

import asyncio
import queue
import threading
from collections import deque
from collections.abc import Callable
from typing import Any

from fastkv._native.ioqueue import SyncQueue

Done = Callable[[Any, BaseException | None], None]
RecordDone = Callable[[int, float], None]  # (0 or -errno, seconds the group's sync took or 0)


class LogThread:
    """``fn(arg)`` jobs in order on one daemon thread, ``done(result, error)`` on ``loop``; and
    staged records written by a sync queue on ``wal_fd`` (see the module doc)."""

    def __init__(self, loop: asyncio.AbstractEventLoop, wal_fd: int, name: str = "fastkv-log") -> None:
        self._loop = loop
        self.pending = 0  # jobs submitted whose ``done`` has not run yet (0: no job, none held)
        self._jobs: queue.SimpleQueue[tuple[Callable[[Any], Any], Any, Done] | None] = queue.SimpleQueue()
        self._held: list[tuple[Callable[[Any], Any], Any, Done]] = []  # until no record is outstanding
        self._thread = threading.Thread(target=self._work, name=name, daemon=True)
        self._thread.start()
        self._sync = SyncQueue(wal_fd)
        self._records: deque[RecordDone | None] = deque()  # outstanding, oldest first (None: abandoned)
        self._reset_when_drained = False  # the queue failed: reset it once no record is outstanding
        self._sync_thread = threading.Thread(target=self._sync.serve, name=f"{name}-sync", daemon=True)
        self._sync_thread.start()
        loop.add_reader(self._sync.event_fd, self._collect)

    @property
    def records(self) -> int:
        """Records submitted whose outcome has not been handed back yet."""
        return len(self._records)

    def submit(self, fn: Callable[[Any], Any], arg: Any, done: Done) -> None:
        """Queue ``fn(arg)``; ``done(result, None)`` or ``done(None, error)`` follows on the loop."""
        self.pending += 1
        if self._records:
            self._held.append((fn, arg, done))
        else:
            self._jobs.put((fn, arg, done))

    def submit_record(self, offset: int, record: bytes, done: RecordDone) -> None:
        """Queue a staged record; ``done(outcome, seconds)`` follows on the loop, in order. Only
        while no job is pending."""
        if self.pending:
            raise RuntimeError("a record while a log job is pending")
        self._records.append(done)
        self._sync.submit(offset, record)

    def abandon_records(self) -> None:
        """After a failed record: drop the outcomes of those outstanding (void too), and let the
        queue write again once they are all in."""
        self._records = deque(None for _ in self._records)
        if self._records:
            self._reset_when_drained = True
        else:
            self._sync.reset()

    def _collect(self) -> None:
        for outcome, seconds in self._sync.collect():
            done = self._records.popleft()
            if done is not None:
                done(outcome, seconds)
        if self._records:
            return
        if self._reset_when_drained:
            self._reset_when_drained = False
            self._sync.reset()
        held, self._held = self._held, []
        for job in held:
            self._jobs.put(job)

    def _finished(self, done: Done, result: Any, error: BaseException | None) -> None:
        self.pending -= 1
        done(result, error)

    def run(self, fn: Callable[..., Any], *args: Any) -> asyncio.Future[Any]:
        """Queue ``fn(*args)``; the returned future (of the loop) gets its result or error."""
        future: asyncio.Future[Any] = self._loop.create_future()

        def settle(result: Any, error: BaseException | None) -> None:
            if future.done():
                return
            if error is not None:
                future.set_exception(error)
            else:
                future.set_result(result)

        self.submit(lambda packed: fn(*packed), args, settle)
        return future

    def stop(self) -> None:
        """Finish the queued jobs and records, then end both threads (blocks until they have)."""
        self._loop.remove_reader(self._sync.event_fd)
        self._sync.stop()
        self._sync_thread.join()
        self._jobs.put(None)
        self._thread.join()

    def _work(self) -> None:
        while True:
            job = self._jobs.get()
            if job is None:
                return
            fn, arg, done = job
            try:
                result, error = fn(arg), None
            except BaseException as exc:  # handed to the loop, which decides
                result, error = None, exc
            try:
                self._loop.call_soon_threadsafe(self._finished, done, result, error)
            except RuntimeError:  # the loop is closed: nobody waits any more
                return
