"""A small Prometheus text-format registry and the server's metrics, named like etcd's.

Other modules update the module-level objects (``wal_fsync_seconds.observe(s)``,
``proposals_committed.inc()``, ``proposals_applied.inc()``, ``proposals_pending.set(n)``);
``render()`` writes every registered metric in the text exposition format 0.0.4.
Counters mirrored from another source of truth (the store's own statistics) are
brought up to date with ``set_total`` just before rendering.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import TypeVar

__all__ = [
    "CONTENT_TYPE",
    "Counter",
    "Gauge",
    "Histogram",
    "Registry",
    "render",
]

CONTENT_TYPE = b"text/plain; version=0.0.4; charset=utf-8"


def _format_value(value: float) -> str:
    """Go's ``strconv.FormatFloat(v, 'g', -1, 64)`` as Prometheus prints values."""
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if value == int(value) and abs(value) < 1e15:
        return str(int(value))
    return repr(value)


def _escape_label(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _label_text(names: tuple[str, ...], values: tuple[str, ...], extra: str = "") -> str:
    parts = [f'{n}="{_escape_label(v)}"' for n, v in zip(names, values, strict=True)]
    if extra:
        parts.append(extra)
    return "{" + ",".join(parts) + "}" if parts else ""


class _Metric:
    """Name, help text and label names shared by every metric kind."""

    kind = "untyped"

    def __init__(self, name: str, help_text: str, labelnames: Iterable[str] = ()) -> None:
        self.name = name
        self.help = help_text
        self.labelnames = tuple(labelnames)

    def header(self) -> list[str]:
        return [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} {self.kind}"]

    def lines(self) -> list[str]:
        raise NotImplementedError


class _Value:
    """One time series holding a number."""

    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value = 0.0

    def inc(self, amount: float = 1.0) -> None:
        self.value += amount

    def set(self, value: float) -> None:
        self.value = value


class _ValueMetric(_Metric):
    """A counter or gauge, with or without labels."""

    def __init__(self, name: str, help_text: str, labelnames: Iterable[str] = ()) -> None:
        super().__init__(name, help_text, labelnames)
        self._children: dict[tuple[str, ...], _Value] = {}
        if not self.labelnames:
            self._children[()] = _Value()

    def labels(self, *values: str, **named: str) -> _Value:
        """The series for these label values (created at 0 on first use)."""
        key = tuple(values) if values else tuple(named[n] for n in self.labelnames)
        child = self._children.get(key)
        if child is None:
            if len(key) != len(self.labelnames):
                raise ValueError(f"{self.name} takes labels {self.labelnames}")
            child = self._children[key] = _Value()
        return child

    @property
    def value(self) -> float:
        return self._children[()].value

    def lines(self) -> list[str]:
        return [f"{self.name}{_label_text(self.labelnames, key)} {_format_value(child.value)}"
                for key, child in sorted(self._children.items())]


class Counter(_ValueMetric):
    """A monotonically increasing count."""

    kind = "counter"

    def inc(self, amount: float = 1.0) -> None:
        if amount < 0:
            raise ValueError("a counter only goes up")
        self._children[()].inc(amount)

    def set_total(self, value: float, *labelvalues: str) -> None:
        """Mirror a total kept elsewhere (e.g. the store's statistics)."""
        self.labels(*labelvalues).set(value)


class Gauge(_ValueMetric):
    """A value that goes up and down."""

    kind = "gauge"

    def set(self, value: float) -> None:
        self._children[()].set(value)

    def inc(self, amount: float = 1.0) -> None:
        self._children[()].inc(amount)


class Histogram(_Metric):
    """Observations counted in cumulative ``le`` buckets, plus their sum and count."""

    kind = "histogram"

    def __init__(self, name: str, help_text: str, buckets: Iterable[float]) -> None:
        super().__init__(name, help_text)
        self.buckets = tuple(sorted(buckets))
        self._counts = [0] * len(self.buckets)
        self.sum = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        for i, bound in enumerate(self.buckets):
            if value <= bound:
                self._counts[i] += 1
                break
        self.sum += value
        self.count += 1

    def lines(self) -> list[str]:
        out, cumulative = [], 0
        for bound, n in zip(self.buckets, self._counts, strict=True):
            cumulative += n
            out.append(f'{self.name}_bucket{{le="{_format_value(bound)}"}} {cumulative}')
        out.append(f'{self.name}_bucket{{le="+Inf"}} {self.count}')
        out.append(f"{self.name}_sum {_format_value(self.sum)}")
        out.append(f"{self.name}_count {self.count}")
        return out


M = TypeVar("M", bound=_Metric)


class Registry:
    """The metrics to render, in name order."""

    def __init__(self) -> None:
        self._metrics: dict[str, _Metric] = {}

    def register(self, metric: M) -> M:
        if metric.name in self._metrics:
            raise ValueError(f"metric {metric.name} registered twice")
        self._metrics[metric.name] = metric
        return metric

    def render(self) -> bytes:
        out: list[str] = []
        for name in sorted(self._metrics):
            metric = self._metrics[name]
            out.extend(metric.header())
            out.extend(metric.lines())
        return ("\n".join(out) + "\n").encode()


REGISTRY = Registry()
_r = REGISTRY.register

has_leader = _r(Gauge("etcd_server_has_leader", "Whether or not a leader exists. 1 is existence, 0 is not."))
is_leader = _r(Gauge("etcd_server_is_leader",
                     "Whether or not this member is a leader. 1 if is, 0 otherwise."))
proposals_committed = _r(Counter("etcd_server_proposals_committed_total",
                                 "The total number of consensus proposals committed."))
proposals_applied = _r(Counter("etcd_server_proposals_applied_total",
                               "The total number of consensus proposals applied."))
proposals_pending = _r(Gauge("etcd_server_proposals_pending",
                             "The current number of pending proposals to commit."))
wal_fsync_seconds = _r(Histogram("etcd_disk_wal_fsync_duration_seconds",
                                 "The latency distributions of fsync called by WAL.",
                                 [0.001 * 2 ** i for i in range(14)]))
store_writes = _r(Counter("etcd_debugging_store_writes_total",
                          "Total number of writes in the store by action.", ["action"]))
store_reads = _r(Counter("etcd_debugging_store_reads_total",
                         "Total number of reads from the store by action.", ["action"]))
store_watchers = _r(Gauge("etcd_debugging_store_watchers", "Count of currently active watchers."))
store_expires = _r(Counter("etcd_debugging_store_expires_total", "Total number of expired keys."))
http_received = _r(Counter("etcd_http_received_total",
                           "Counter of requests received into the system (successfully parsed).",
                           ["method"]))


def render() -> bytes:
    """Every registered metric in the Prometheus text format."""
    return REGISTRY.render()
