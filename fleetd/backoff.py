"""Keeping fleetd's long-running loops alive: delays between retries after unexpected errors.

Every loop that must run for the life of the daemon (heartbeats, watches, reconciles, state publishing)
catches what it expects (registry trouble) with its own handling, and anything else with
``Backoff``: the error is logged with its traceback and the loop goes on after a delay that doubles
with each consecutive failure, so a persistent bug neither kills the loop nor floods the log.
"""

from __future__ import annotations

import logging

#: Bounds of the delay after consecutive unexpected errors, in seconds.
DEFAULT_BOUNDS = (1.0, 30.0)


class Backoff:
    """Delays for consecutive failures: ``first``, then doubled up to ``cap``; ``reset`` after success."""

    def __init__(self, first: float | None = None, cap: float | None = None) -> None:
        """Bounds default to ``DEFAULT_BOUNDS`` as it is when the loop starts."""
        self.first = DEFAULT_BOUNDS[0] if first is None else first
        self.cap = DEFAULT_BOUNDS[1] if cap is None else cap
        self.failures = 0

    def next_delay(self) -> float:
        """Count a failure; the seconds to wait before trying again."""
        delay = min(self.first * 2 ** self.failures, self.cap)
        self.failures += 1
        return delay

    def reset(self) -> None:
        """A round succeeded: the next failure waits ``first`` again."""
        self.failures = 0

    def unexpected(self, log: logging.Logger, what: str) -> float:
        """Log the exception being handled (with traceback) as a failure of ``what``; the delay to wait.
        Call it from an ``except`` block."""
        delay = self.next_delay()
        log.exception("%s failed unexpectedly; retrying in %.1fs", what, delay)
        return delay
