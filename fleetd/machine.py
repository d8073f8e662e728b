"""Machines: identity, public IP and metadata, and the metadata test units are scheduled by.

A machine publishes static metadata (``metadata`` in fleet.conf) in its ``object``; the API's PATCH
adds dynamic metadata under ``machines/<id>/metadata/<key>`` which wins over it, an empty value
deleting the key (``merge_metadata``). ``MachineMetadata=`` requirements match with OR between values
of one key and AND across keys; the machine must have every key (``has_metadata``).
"""

from __future__ import annotations

from collections.abc import Mapping
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field

from fleetd.job import omit_empty

#: Length of the short machine ID shown by fleetctl and accepted by ``MachineID=``.
SHORT_ID_LEN = 8


@dataclass(frozen=True)
class MachineState:
    """One machine as fleet sees it (``machine.MachineState``).

    ``metadata`` should already be merged with dynamic metadata; ``capabilities`` and ``version`` are
    what the machine advertised in its ``object``.
    """

    id: str
    public_ip: str = ""
    metadata: Mapping[str, str] = field(default_factory=dict)
    capabilities: Mapping[str, bool] = field(default_factory=dict)
    version: str = ""

    @property
    def short_id(self) -> str:
        """The first 8 characters of the ID (the whole ID if shorter)."""
        return self.id[:SHORT_ID_LEN]

    def match_id(self, wanted: str) -> bool:
        """True when ``wanted`` is this machine's full ID or its 8-character short ID."""
        return wanted in (self.id, self.short_id)

    def has_metadata(self, required: Mapping[str, AbstractSet[str]]) -> bool:
        """True when, for every required key, this machine has the key with one of the accepted values."""
        return all(key in self.metadata and self.metadata[key] in values for key, values in required.items())

    def missing_metadata(self, required: Mapping[str, AbstractSet[str]]) -> list[str]:
        """Human-readable reasons ``has_metadata`` fails, one per unmet key (sorted by key)."""
        reasons = []
        for key in sorted(required):
            wanted = ",".join(sorted(required[key]))
            if key not in self.metadata:
                reasons.append(f"no metadata {key} (wants {wanted})")
            elif self.metadata[key] not in required[key]:
                reasons.append(f"metadata {key}={self.metadata[key]} (wants {wanted})")
        return reasons

    def legend(self, full: bool = False) -> str:
        """fleetctl's machine legend: ``1234abcd.../10.0.0.1``; the full ID with ``full``; no IP if unset."""
        ident = self.id if full else self.short_id + "..."
        return f"{ident}/{self.public_ip}" if self.public_ip else ident

    def with_metadata(self, metadata: Mapping[str, str]) -> MachineState:
        """A copy with other metadata."""
        return MachineState(self.id, self.public_ip, dict(metadata), self.capabilities, self.version)

    def to_api(self) -> dict[str, object]:
        """The API's ``Machine``: ``{"id","metadata","primaryIP"}``, empty fields omitted."""
        return omit_empty({"id": self.id, "metadata": dict(sorted(self.metadata.items())),
                           "primaryIP": self.public_ip})


def merge_metadata(static: Mapping[str, str], dynamic: Mapping[str, str]) -> dict[str, str]:
    """Static metadata overlaid with dynamic metadata; a dynamic ``""`` deletes the key."""
    merged = dict(static)
    for key, value in dynamic.items():
        if value:
            merged[key] = value
        else:
            merged.pop(key, None)
    return merged


def parse_metadata(text: str) -> dict[str, str]:
    """Parse fleet.conf's ``metadata``: ``k=v,k2=v2``, quotes optional, spaces trimmed, last duplicate wins.

    Pairs without ``=`` or with an empty key are skipped.
    """
    result: dict[str, str] = {}
    for pair in text.strip().strip('"').split(","):
        key, sep, value = pair.partition("=")
        key, value = key.strip().strip('"'), value.strip().strip('"')
        if sep and key:
            result[key] = value
    return result


def format_metadata(metadata: Mapping[str, str]) -> str:
    """fleetctl's METADATA column: ``k=v`` pairs sorted by key, joined by ``,``; ``-`` if none."""
    return ",".join(f"{k}={v}" for k, v in sorted(metadata.items())) or "-"
