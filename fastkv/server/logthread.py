"""The log thread: the one thread that writes the log, so that a sync never blocks the event loop.

Jobs run one at a time in the order they were submitted (the log is written by nobody else);
each job's outcome is handed back to the event loop with one ``call_soon_threadsafe``. This is
a thinner hand-off than ``run_in_executor`` (no concurrent future chained to an asyncio future),
which matters on the write path: every Ready that carries entries makes one round trip.
"""

from __future__ import annotations

import asyncio
import queue
import threading
from collections.abc import Callable
from typing import Any

Done = Callable[[Any, BaseException | None], None]


class LogThread:
    """Run ``fn(arg)`` jobs in order on one daemon thread; ``done(result, error)`` runs on ``loop``."""

    def __init__(self, loop: asyncio.AbstractEventLoop, name: str = "fastkv-log") -> None:
        self._loop = loop
        self.pending = 0  # jobs submitted whose ``done`` has not run yet (0: the thread is idle)
        self._jobs: queue.SimpleQueue[tuple[Callable[[Any], Any], Any, Done] | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._work, name=name, daemon=True)
        self._thread.start()

    def submit(self, fn: Callable[[Any], Any], arg: Any, done: Done) -> None:
        """Queue ``fn(arg)``; ``done(result, None)`` or ``done(None, error)`` follows on the loop."""
        self.pending += 1
        self._jobs.put((fn, arg, done))

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
        """Finish the queued jobs, then end the thread (blocks until it has ended)."""
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
