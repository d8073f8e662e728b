"""The engine's copy of the registry, kept current from changes instead of re-read every round (an
addition to fleet, whose engine reads the whole registry on every reconcile).

``RegistryView`` holds the leaves of the sections the engine plans from -- ``job/`` (units, desired
states, schedule, heartbeats), ``machines/`` (presence, dynamic metadata) and ``engine/unplaced/`` --
as etcd last reported them: one full read of a section (``reset``), then every change to it, whether it
comes from a watch event or from the answer to a write of this process (``apply``). The parsed records
(``jobs``, ``machines``, ``unplaced``) equal what ``fleetd.registry.layout``'s readers make of a full read
of the same sections at the same index.

Ordering: a change can reach the view more than once and out of order (a write's answer races the watch
event of the same write; a full read races the watch). Every leaf remembers the ``modifiedIndex`` of the
last change applied to it, a deleted directory the index of its deletion, a section the index of the read
it was reset from; a change at or below any of these for its key is already reflected and is ignored. A
read older than changes already applied is brought forward by replaying the section's recent changes;
when those no longer reach back to the read, the section is marked ``stale`` (read it again).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Mapping
from typing import Any

from fleetd.etcd import EtcdResult
from fleetd.machine import MachineState
from fleetd.registry.layout import JobRecord, Layout, job_record, machine_record

JOBS = "job"
MACHINES = "machines"
UNPLACED = "engine/unplaced"
#: The sections a view holds, as paths below the prefix.
SECTIONS = (JOBS, MACHINES, UNPLACED)
#: Leaves whose changes never alter a scheduling decision: (section, leaf name).
QUIET_LEAVES = frozenset({(JOBS, "job-state"), (MACHINES, "api")})
#: How many recent changes of a section are kept to bring an older read forward.
HISTORY = 20_000
_DELETIONS = frozenset({"delete", "expire", "compareAndDelete"})


class _Section:
    """One section: group (unit name, machine ID) -> leaf path below the group -> value."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.head = name.split("/")
        self.groups: dict[str, dict[str, str]] = {}
        self.floor = 0
        self.history: deque[tuple[int, EtcdResult]] = deque(maxlen=HISTORY)
        self.forgotten = 0  # the highest index pushed out of ``history``
        self.stale = False

    def remember(self, index: int, change: EtcdResult) -> None:
        if len(self.history) == self.history.maxlen:
            self.forgotten = max(self.forgotten, self.history[0][0])
        self.history.append((index, change))


class RegistryView:
    """The sections ``SECTIONS`` of the registry under ``layout``'s prefix; see the module docstring.

    Until a section is ``reset`` it is empty and ``loaded`` is False.
    """

    def __init__(self, layout: Layout | None = None) -> None:
        self.layout = layout or Layout()
        self._sections = {name: _Section(name) for name in SECTIONS}
        self._indexes: dict[str, int] = {}  # relative key of a leaf or directory -> last change applied
        self._loaded: set[str] = set()
        self._jobs: dict[str, JobRecord | None] = {}
        self._machines: dict[str, MachineState | None] = {}
        #: Grows with every change ``apply`` reports and every reset that changed such leaves: equal
        #: generations, same scheduling decisions.
        self.generation = 0

    # -- state -----------------------------------------------------------------------------------------

    @property
    def loaded(self) -> bool:
        """True once every section has been read."""
        return self._loaded == set(SECTIONS)

    @property
    def stale(self) -> bool:
        """True when a section must be read again (a read could not be brought forward)."""
        return any(section.stale for section in self._sections.values())

    def mark_stale(self, section: str | None = None) -> None:
        """Say that changes to ``section`` (all sections: None) may have been missed."""
        for name in SECTIONS if section is None else (section,):
            self._sections[name].stale = True

    def size(self, section: str) -> int:
        """How many entries (units, machines, reasons) ``section`` holds."""
        return len(self._sections[section].groups)

    def index(self, section: str) -> int:
        """The etcd index of the last read of ``section``: watch it from ``index + 1``."""
        return self._sections[section].floor

    # -- input -----------------------------------------------------------------------------------------

    def reset(self, section: str, node: Mapping[str, Any] | None, index: int) -> None:
        """Replace ``section`` with a recursive read of its directory (``node``, None when absent) taken
        at etcd index ``index``, then replay the changes applied since that index."""
        state = self._sections[section]
        replay = sorted(((i, change) for i, change in state.history if i > index), key=lambda entry: entry[0])
        before = _decisive(state)
        state.stale = state.forgotten > index
        state.groups, state.floor = {}, index
        state.history.clear()
        self._forget_indexes(section)
        self._invalidate(section, None)
        depth = len(state.head)
        for leaf in _leaves(node):
            parts = self.layout.relative(str(leaf.get("key", "")))[depth:]
            if len(parts) >= 1:
                group, rest = parts[0], "/".join(parts[1:])
                state.groups.setdefault(group, {})[rest] = str(leaf.get("value", ""))
        self._loaded.add(section)
        for _, change in replay:
            self.apply(change)
        self.generation += int(_decisive(state) != before)

    def apply(self, change: EtcdResult) -> bool:
        """Fold in one change (a watch event or a write's answer) under the view's sections; True when it
        changed something a scheduling decision depends on. Changes already reflected are ignored."""
        parts = self.layout.relative(change.key)
        if not parts and change.key.rstrip("/") != self.layout.key():
            return False
        index = change.modified_index
        if change.action in _DELETIONS:
            changed = self._delete(parts, index, change)
        elif change.dir or change.value is None:
            return False
        else:
            changed = self._set(parts, change.value, index, change)
        self.generation += int(changed)
        return changed

    # -- output ----------------------------------------------------------------------------------------

    def jobs(self) -> list[JobRecord]:
        """Every ``job/<name>`` with a valid object, by name (as ``read_jobs``)."""
        groups = self._sections[JOBS].groups
        for name in groups.keys() - self._jobs.keys():
            self._jobs[name] = job_record(name, {k: v for k, v in groups[name].items() if "/" not in k})
        return [record for name, record in sorted(self._jobs.items()) if record is not None]

    def machines(self) -> list[MachineState]:
        """Registered machines by ID, dynamic metadata merged (as ``read_machines``)."""
        groups = self._sections[MACHINES].groups
        for machine_id in groups.keys() - self._machines.keys():
            leaves = groups[machine_id]
            obj = leaves.get("object")
            metadata = {k.split("/", 1)[1]: v for k, v in leaves.items()
                        if k.startswith("metadata/") and k.count("/") == 1}
            self._machines[machine_id] = None if obj is None else machine_record(obj, metadata)
        return [machine for _, machine in sorted(self._machines.items()) if machine is not None]

    def unplaced(self) -> dict[str, str]:
        """Unit name -> published reason (as ``leaf_values`` of ``engine/unplaced``)."""
        groups = self._sections[UNPLACED].groups
        return {name: leaves[""] for name, leaves in sorted(groups.items()) if "" in leaves}

    # -- internals -------------------------------------------------------------------------------------

    def _locate(self, parts: list[str]) -> tuple[_Section, str, str] | None:
        """(section, group, leaf path) of a key's parts below the prefix, None outside the sections."""
        for section in self._sections.values():
            head = section.head
            if parts[:len(head)] == head and len(parts) > len(head):
                rest = parts[len(head):]
                return section, rest[0], "/".join(rest[1:])
        return None

    def _reflected(self, parts: list[str], index: int) -> bool:
        """True when a change at ``index`` to the key ``parts`` is already reflected in the view."""
        located = self._locate(parts) if parts else None
        if located is not None and index <= located[0].floor:
            return True
        keys = ("/".join(parts[:depth]) for depth in range(len(parts) + 1))
        return any(self._indexes.get(key, 0) >= index for key in keys)

    def _set(self, parts: list[str], value: str, index: int, change: EtcdResult) -> bool:
        located = self._locate(parts)
        if located is None or self._reflected(parts, index):
            return False
        section, group, leaf = located
        section.remember(index, change)
        self._indexes["/".join(parts)] = index
        leaves = section.groups.setdefault(group, {})
        if leaves.get(leaf) == value:
            return False
        leaves[leaf] = value
        self._invalidate(section.name, group)
        return (section.name, leaf) not in QUIET_LEAVES

    def _delete(self, parts: list[str], index: int, change: EtcdResult) -> bool:
        if self._reflected(parts, index):
            return False
        changed = False
        for section in self._sections.values():
            if section.head[:len(parts)] == parts:  # the section or a directory above it
                section.remember(index, change)
                for group in list(section.groups):
                    changed = self._delete_below(section, group, "", index) or changed
        located = self._locate(parts)
        if located is not None:
            section, group, leaf = located
            section.remember(index, change)
            changed = self._delete_below(section, group, leaf, index) or changed
        self._indexes["/".join(parts)] = index  # after: it marks what this deletion already covers
        return changed

    def _delete_below(self, section: _Section, group: str, path: str, index: int) -> bool:
        """Apply a deletion at ``index`` of the leaf ``path`` of ``group`` and everything below it (the
        whole group for ``""``): leaves set after ``index`` (a later write whose answer came first)
        stay. True when a leaf a scheduling decision depends on went."""
        leaves = section.groups.get(group)
        if leaves is None:
            return False
        below = f"{section.name}/{group}"
        gone = [k for k in leaves if (not path or k == path or k.startswith(path + "/"))
                and self._indexes.get(f"{below}/{k}" if k else below, 0) < index]
        for key in gone:
            del leaves[key]
        if not leaves:
            del section.groups[group]
        if gone:
            self._invalidate(section.name, group)
        return bool(gone) and not all((section.name, k) in QUIET_LEAVES for k in gone)

    def _invalidate(self, section: str, group: str | None) -> None:
        """Drop parsed records of ``group`` (all of the section: None)."""
        cache = {JOBS: self._jobs, MACHINES: self._machines}.get(section)
        if cache is None:
            return
        if group is None:
            cache.clear()
        else:
            cache.pop(group, None)

    def _forget_indexes(self, section: str) -> None:
        """Forget per-key indexes under ``section`` (its floor now covers them)."""
        prefix = section + "/"
        for key in [k for k in self._indexes if k.startswith(prefix)]:
            del self._indexes[key]


def _decisive(section: _Section) -> dict[str, dict[str, str]]:
    """The leaves of ``section`` a scheduling decision can depend on (``QUIET_LEAVES`` left out)."""
    return {group: {leaf: value for leaf, value in leaves.items() if (section.name, leaf) not in QUIET_LEAVES}
            for group, leaves in section.groups.items()}


def _leaves(node: Mapping[str, Any] | None) -> Iterable[Mapping[str, Any]]:
    """Every file node of a recursive read."""
    stack = [node] if node else []
    while stack:
        current = stack.pop()
        if current.get("dir"):
            stack.extend(current.get("nodes") or [])
        else:
            yield current
