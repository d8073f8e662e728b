"""Per-peer counters and round-trip latency, shaped for etcd's ``/v2/stats/leader``.

Latency is kept as running aggregates (Welford's method), never as a growing list of samples.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

__all__ = ["LatencyStats", "PeerStats"]


@dataclass
class LatencyStats:
    """Round-trip times in seconds: the last one, the mean, the spread and the extremes."""

    count: int = 0
    current: float = 0.0
    average: float = 0.0
    minimum: float = math.inf
    maximum: float = 0.0
    _m2: float = 0.0  # sum of squared differences from the running mean

    def observe(self, seconds: float) -> None:
        """Add one round-trip time."""
        self.count += 1
        self.current = seconds
        delta = seconds - self.average
        self.average += delta / self.count
        self._m2 += delta * (seconds - self.average)
        self.minimum = min(self.minimum, seconds)
        self.maximum = max(self.maximum, seconds)

    @property
    def standard_deviation(self) -> float:
        """Population standard deviation of the samples (0 with fewer than two)."""
        return math.sqrt(self._m2 / self.count) if self.count > 1 else 0.0

    def to_etcd(self) -> dict[str, float]:
        """etcd's follower ``latency`` object, in milliseconds."""
        return {"current": self.current * 1e3, "average": self.average * 1e3,
                "standardDeviation": self.standard_deviation * 1e3,
                "minimum": (self.minimum if self.count else 0.0) * 1e3, "maximum": self.maximum * 1e3}


@dataclass
class PeerStats:
    """What happened to the frames addressed to one peer.

    ``sent``: frames handed to a live connection. ``failed``: frames lost because the peer was
    unreachable or its connection broke before they were written. ``dropped``: frames refused
    because the peer's queue was full. ``writes``: socket writes (``sent / writes`` is the
    batching factor). ``connects`` / ``connect_failures``: outbound connection attempts.
    """

    sent: int = 0
    failed: int = 0
    dropped: int = 0
    writes: int = 0
    connects: int = 0
    connect_failures: int = 0
    latency: LatencyStats = field(default_factory=LatencyStats)

    def to_etcd(self) -> dict[str, Any]:
        """etcd's per-follower object: ``{"latency": {...}, "counts": {"fail": .., "success": ..}}``."""
        return {"latency": self.latency.to_etcd(),
                "counts": {"fail": self.failed + self.dropped, "success": self.sent}}
