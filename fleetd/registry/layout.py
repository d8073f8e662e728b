"""fleet's etcd v2 key layout and value formats (spec 5.1), encode and decode, without I/O.

Keys under the prefix (default ``/_coreos.com/fleet/``)::

    engine/version                  = 1                                  cluster engine version
    lease/engine-leader             = {"MachineID":..,"Version":1}       TTL 5 x reconcile interval
    machines/<mid>/object           = {"ID","PublicIP","Metadata","Capabilities","Version"}   TTL agent_ttl
    machines/<mid>/metadata/<key>   = value, "" = deleted               dynamic metadata (API PATCH)
    unit/<sha1 hex>                 = {"Raw": serialized unit text}      content-addressed, never deleted
    job/<name>/object               = {"Name":..,"UnitHash":[20 ints]}
    job/<name>/target-state         = inactive|loaded|launched
    job/<name>/target               = <mid>                              engine; absent = unscheduled
    job/<name>/job-state            = <mid>                              TTL agent_ttl, agent heartbeat
    engine/unplaced/<name>          = why the engine leaves the unit unscheduled    (addition)
    machines/<mid>/api              = comma list of the machine's API URLs          (addition)
    states/<name>/<mid>             = {"loadState",..,"machineState":{..},"unitHash"}         TTL agent_ttl
                                      (+ "containers":["<id> <state>",..] when the unit has any: addition)
    state/<name>                    = the same JSON (legacy, last writer wins)                TTL agent_ttl

Values are written exactly as Go's ``encoding/json`` writes them (``go_json``): struct fields in
declaration order, map keys sorted, compact, ``<>&`` escaped. Reading goes from etcd v2 response
nodes (``{"key","value","dir","nodes"}``) to the value types of ``fleetd.job`` and ``fleetd.machine``.
Writes are described as ``EtcdOp`` values carrying fleet's preconditions; an adapter performs them.
"""

from __future__ import annotations

import enum
import json
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from fleetd.job import JobState, Unit, UnitState, determine_job_state
from fleetd.machine import MachineState, merge_metadata
from fleetd.unit import UnitFile, UnitHash, UnitParseError

DEFAULT_PREFIX = "/_coreos.com/fleet/"
ENGINE_LEADER_LEASE = "engine-leader"
#: The engine version this implementation runs (``engine/version``).
ENGINE_VERSION = 1

# ---------------------------------------------------------------------------------------------------
# Go's JSON

_GO_HTML_ESCAPES = {"<": "\\u003c", ">": "\\u003e", "&": "\\u0026", "\u2028": "\\u2028", "\u2029": "\\u2029"}
_GO_CONTROL_ESCAPES = {"b": "\\u0008", "f": "\\u000c"}


def go_json(obj: Any) -> str:
    """Encode as Go's ``json.Marshal``: compact, UTF-8, ``<``/``>``/``&``/U+2028/U+2029 escaped.

    Dict order is kept (pass struct fields in declaration order; ``go_map`` sorts a map's keys).
    """
    text = json.dumps(obj, ensure_ascii=False, separators=(",", ":"))
    text = re.sub(r"\\(.)", lambda m: _GO_CONTROL_ESCAPES.get(m.group(1), m.group(0)), text)
    return re.sub("[<>&\u2028\u2029]", lambda m: _GO_HTML_ESCAPES[m.group(0)], text)


def go_map(mapping: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """A Go map for ``go_json``: keys sorted; None stays None (JSON ``null``)."""
    return None if mapping is None else dict(sorted(mapping.items()))


# ---------------------------------------------------------------------------------------------------
# Keys


@dataclass(frozen=True, slots=True)
class Layout:
    """Key names under one prefix. Keys are joined like Go's ``path.Join``: no trailing slash."""

    prefix: str = DEFAULT_PREFIX

    def key(self, *parts: str) -> str:
        """``prefix/part/part`` with duplicate slashes removed."""
        joined = "/".join([self.prefix.rstrip("/"), *parts])
        return re.sub("/+", "/", "/" + joined.lstrip("/")).rstrip("/") or "/"

    # engine
    def engine_version(self) -> str:
        return self.key("engine", "version")

    def unplaced_dir(self) -> str:
        """``engine/unplaced``: why the engine leaves units unscheduled (an addition to fleet's layout)."""
        return self.key("engine", "unplaced")

    def unplaced_reason(self, name: str) -> str:
        """``engine/unplaced/<name>`` = the reason ``name`` wants to run but is not scheduled."""
        return self.key("engine", "unplaced", name)

    def lease(self, name: str = ENGINE_LEADER_LEASE) -> str:
        return self.key("lease", name)

    # machines
    def machines_dir(self) -> str:
        return self.key("machines")

    def machine_object(self, machine_id: str) -> str:
        return self.key("machines", machine_id, "object")

    def machine_metadata(self, machine_id: str, name: str) -> str:
        return self.key("machines", machine_id, "metadata", name)

    # unit blobs
    def units_dir(self) -> str:
        return self.key("unit")

    def unit_blob(self, unit_hash: UnitHash | str) -> str:
        return self.key("unit", str(unit_hash))

    # jobs
    def jobs_dir(self) -> str:
        return self.key("job")

    def job_dir(self, name: str) -> str:
        return self.key("job", name)

    def job_object(self, name: str) -> str:
        return self.key("job", name, "object")

    def job_target_state(self, name: str) -> str:
        return self.key("job", name, "target-state")

    def job_target(self, name: str) -> str:
        return self.key("job", name, "target")

    def job_heartbeat(self, name: str) -> str:
        return self.key("job", name, "job-state")

    # unit states
    def states_dir(self, name: str | None = None) -> str:
        return self.key("states", name) if name else self.key("states")

    def unit_state(self, name: str, machine_id: str) -> str:
        return self.key("states", name, machine_id)

    def legacy_unit_state(self, name: str) -> str:
        return self.key("state", name)

    # an addition (not in fleet): where a machine's API is reached
    def machine_api(self, machine_id: str) -> str:
        """``machines/<id>/api``: comma list of URLs of the machine's fleetd API (``http://``, ``unix://``)."""
        return self.key("machines", machine_id, "api")

    def relative(self, key: str) -> list[str]:
        """The parts of ``key`` below the prefix (``[]`` for keys outside it)."""
        root = self.key()
        if key != root and not key.startswith(root.rstrip("/") + "/"):
            return []
        return [p for p in key[len(root):].split("/") if p]

    def is_job_trigger(self, key: str) -> bool:
        """True for watch events the engine and agents react to: ``job/<name>/target[-state]``."""
        parts = self.relative(key)
        return len(parts) == 3 and parts[0] == "job" and parts[2] in ("target", "target-state")


# ---------------------------------------------------------------------------------------------------
# Values


class LayoutError(ValueError):
    """A stored value does not have fleet's format."""


def _load(value: str, what: str) -> Any:
    try:
        return json.loads(value)
    except ValueError as err:
        raise LayoutError(f"invalid {what} JSON: {err}") from None


def encode_unit_blob(unit_file: UnitFile) -> str:
    """``unit/<hash>``: ``{"Raw": serialized text}``."""
    return go_json({"Raw": unit_file.text})


def decode_unit_blob(value: str) -> UnitFile:
    """Parse ``unit/<hash>``; raises ``LayoutError`` if it is not fleet's format or does not parse."""
    obj = _load(value, "unit")
    if not isinstance(obj, dict) or not isinstance(obj.get("Raw"), str):
        raise LayoutError("unit blob without Raw text")
    try:
        return UnitFile.from_text(obj["Raw"])
    except UnitParseError as err:
        raise LayoutError(f"unit blob does not parse: {err}") from None


def encode_job_object(name: str, unit_hash: UnitHash) -> str:
    """``job/<name>/object``: ``{"Name":..,"UnitHash":[20 ints]}`` (a Go ``[20]byte``)."""
    return go_json({"Name": name, "UnitHash": unit_hash.to_ints()})


def decode_job_object(value: str) -> tuple[str, UnitHash]:
    """Parse ``job/<name>/object`` into (name, hash)."""
    obj = _load(value, "job")
    try:
        return str(obj["Name"]), UnitHash.from_ints(obj["UnitHash"])
    except (KeyError, TypeError, ValueError) as err:
        raise LayoutError(f"invalid job object: {err}") from None


def decode_target_state(value: str) -> JobState:
    """Parse ``job/<name>/target-state``; anything invalid reads as ``inactive`` (as fleet does)."""
    try:
        return JobState(value)
    except ValueError:
        return JobState.INACTIVE


def _machine_state_json(machine: MachineState | None, machine_id: str = "") -> dict[str, Any]:
    if machine is None:
        return {"ID": machine_id, "PublicIP": "", "Metadata": None, "Capabilities": None, "Version": ""}
    return {"ID": machine.id, "PublicIP": machine.public_ip, "Metadata": go_map(machine.metadata),
            "Capabilities": go_map(machine.capabilities), "Version": machine.version}


def encode_machine_object(machine: MachineState) -> str:
    """``machines/<id>/object``: ``{"ID","PublicIP","Metadata","Capabilities","Version"}``."""
    return go_json(_machine_state_json(machine))


def decode_machine_object(value: str, dynamic_metadata: Mapping[str, str] | None = None) -> MachineState:
    """Parse ``machines/<id>/object`` and overlay dynamic metadata (``""`` deletes a key)."""
    obj = _load(value, "machine")
    if not isinstance(obj, dict) or not isinstance(obj.get("ID"), str):
        raise LayoutError("machine object without ID")
    metadata = {str(k): str(v) for k, v in (obj.get("Metadata") or {}).items()}
    return MachineState(
        id=obj["ID"], public_ip=str(obj.get("PublicIP") or ""),
        metadata=merge_metadata(metadata, dynamic_metadata or {}),
        capabilities={str(k): bool(v) for k, v in (obj.get("Capabilities") or {}).items()},
        version=str(obj.get("Version") or ""))


def encode_unit_state(state: UnitState) -> str:
    """``states/<name>/<mid>`` and ``state/<name>``: systemd states, a bare machine state and the hash,
    byte for byte fleet's; a state with containers adds ``"containers":["<id> <state>",...]`` at the end
    (Go's decoder, so fleet's tools, ignores the unknown field)."""
    record: dict[str, Any] = {
        "loadState": state.load_state, "activeState": state.active_state, "subState": state.sub_state,
        "machineState": _machine_state_json(None, state.machine_id), "unitHash": state.unit_hash}
    return go_json({**record, "containers": list(state.containers)} if state.containers else record)


def decode_unit_state(value: str, unit_name: str, machine_id: str = "") -> UnitState:
    """Parse a unit state; the machine ID comes from the value, else from ``machine_id`` (the key)."""
    obj = _load(value, "unit state")
    if not isinstance(obj, dict):
        raise LayoutError("unit state is not an object")
    machine = obj.get("machineState") or {}
    containers = obj.get("containers")
    return UnitState(unit_name=unit_name, machine_id=str(machine.get("ID") or machine_id),
                      unit_hash=str(obj.get("unitHash") or ""), load_state=str(obj.get("loadState") or ""),
                      active_state=str(obj.get("activeState") or ""),
                      sub_state=str(obj.get("subState") or ""),
                      containers=tuple(str(c) for c in containers) if isinstance(containers, list) else ())


@dataclass(frozen=True, slots=True)
class Lease:
    """The engine leader lease: who holds it and the engine version it runs."""

    machine_id: str
    version: int = ENGINE_VERSION


def encode_lease(lease: Lease) -> str:
    """``lease/engine-leader``: ``{"MachineID":..,"Version":..}``."""
    return go_json({"MachineID": lease.machine_id, "Version": lease.version})


def decode_lease(value: str) -> Lease:
    """Parse the leader lease."""
    obj = _load(value, "lease")
    try:
        return Lease(str(obj["MachineID"]), int(obj.get("Version", 0)))
    except (KeyError, TypeError, ValueError) as err:
        raise LayoutError(f"invalid lease: {err}") from None


# ---------------------------------------------------------------------------------------------------
# Reading recursive GETs


def children(node: Mapping[str, Any] | None) -> Iterator[tuple[str, Mapping[str, Any]]]:
    """(last path component, child node) of a directory node, sorted by key."""
    for child in sorted((node or {}).get("nodes") or [], key=lambda n: n.get("key", "")):
        yield str(child.get("key", "")).rsplit("/", 1)[-1], child


def leaf_values(node: Mapping[str, Any] | None) -> dict[str, str]:
    """Leaf name -> value of the non-directory children of a directory node."""
    return {leaf: str(child.get("value", "")) for leaf, child in children(node) if not child.get("dir")}


@dataclass(frozen=True, slots=True)
class JobRecord:
    """One ``job/<name>`` directory: the unit's hash, desired state, target machine and heartbeat."""

    name: str
    unit_hash: UnitHash
    target_state: JobState = JobState.INACTIVE
    target_machine_id: str = ""
    heartbeat: str = ""


def job_record(name: str, leaves: Mapping[str, str]) -> JobRecord | None:
    """The record of ``job/<name>`` from its leaves (leaf name -> value); None without a valid ``object``."""
    if "object" not in leaves:
        return None
    try:
        _, unit_hash = decode_job_object(leaves["object"])
    except LayoutError:
        return None
    return JobRecord(name, unit_hash, decode_target_state(leaves.get("target-state", "")),
                     leaves.get("target", ""), leaves.get("job-state", ""))


def read_jobs(jobs_node: Mapping[str, Any] | None) -> list[JobRecord]:
    """Parse a recursive GET of ``job/``; directories without a valid ``object`` are skipped."""
    records = (job_record(name, leaf_values(job_dir)) for name, job_dir in children(jobs_node))
    return [record for record in records if record is not None]


def read_unit_blobs(units_node: Mapping[str, Any] | None,
                    cache: dict[str, UnitFile] | None = None) -> dict[str, UnitFile]:
    """Parse a recursive GET of ``unit/`` into hash hex -> unit file; unparsable blobs are skipped.

    With ``cache`` (hash -> parsed file, filled in here), only blobs not in it are parsed: a blob's
    content never changes under its hash.
    """
    cache = {} if cache is None else cache
    blobs = {}
    for key, child in children(units_node):
        if key not in cache:
            try:
                cache[key] = decode_unit_blob(str(child.get("value", "")))
            except LayoutError:
                continue
        blobs[key] = cache[key]
    return blobs


def read_machines(machines_node: Mapping[str, Any] | None) -> list[MachineState]:
    """Parse a recursive GET of ``machines/``: objects with dynamic metadata merged; dirs without
    ``object`` (left behind by expired machines) are skipped."""
    machines = []
    for _, machine_dir in children(machines_node):
        leaves = dict(children(machine_dir))
        obj = leaves.get("object")
        machine = None if obj is None else machine_record(str(obj.get("value", "")),
                                                           leaf_values(leaves.get("metadata")))
        if machine is not None:
            machines.append(machine)
    return machines


def machine_record(object_value: str, dynamic_metadata: Mapping[str, str]) -> MachineState | None:
    """A machine from its ``object`` value and dynamic metadata; None if the object is not fleet's."""
    try:
        return decode_machine_object(object_value, dynamic_metadata)
    except LayoutError:
        return None


def read_dynamic_metadata(machines_node: Mapping[str, Any] | None) -> dict[str, dict[str, str]]:
    """Dynamic metadata of every machine directory, registered or not (machine ID -> key -> value)."""
    result = {}
    for machine_id, machine_dir in children(machines_node):
        leaves = dict(children(machine_dir))
        result[machine_id] = leaf_values(leaves.get("metadata"))
    return result


def read_unit_states(states_node: Mapping[str, Any] | None) -> list[UnitState]:
    """Parse a recursive GET of ``states/``, sorted by (unit name, machine ID); bad values are skipped."""
    states = []
    for name, unit_dir in children(states_node):
        for machine_id, child in children(unit_dir):
            try:
                states.append(decode_unit_state(str(child.get("value", "")), name, machine_id))
            except LayoutError:
                continue
    return states


@dataclass(frozen=True, slots=True)
class RegistrySnapshot:
    """The cluster as read from etcd: units, the non-global schedule, current states, machines."""

    units: Mapping[str, Unit]
    schedule: Mapping[str, str]
    current_states: Mapping[str, JobState]
    machines: tuple[MachineState, ...]
    unit_states: tuple[UnitState, ...]


def build_snapshot(jobs: Iterable[JobRecord], blobs: Mapping[str, UnitFile], machines: Iterable[MachineState],
                   unit_states: Iterable[UnitState]) -> RegistrySnapshot:
    """Join job records with their unit blobs and states (fleet's ``Units``/``Schedule`` views).

    Jobs whose blob is missing are skipped. A global unit has no schedule entry and no current state.
    """
    states = tuple(unit_states)
    published = {(s.unit_name, s.machine_id) for s in states}
    units: dict[str, Unit] = {}
    schedule: dict[str, str] = {}
    current: dict[str, JobState] = {}
    for job in jobs:
        unit_file = blobs.get(job.unit_hash.hex)
        if unit_file is None:
            continue
        unit = Unit(job.name, unit_file, job.target_state)
        units[job.name] = unit
        if unit.is_global:
            continue
        if job.target_machine_id:
            schedule[job.name] = job.target_machine_id
        has_state = (job.name, job.target_machine_id) in published
        current[job.name] = determine_job_state(job.target_machine_id, has_state, job.heartbeat)
    return RegistrySnapshot(units, schedule, current, tuple(machines), states)


# ---------------------------------------------------------------------------------------------------
# Writes


class OpKind(enum.Enum):
    """etcd v2 operations fleet uses."""

    SET = "set"
    DELETE = "delete"


@dataclass(frozen=True, slots=True)
class EtcdOp:
    """One etcd v2 write with fleet's preconditions; ``ok_if_exists`` means a "node exists" error is success.

    ``prev_exist``: None = unconditional, False = create only, True = update only.
    """

    kind: OpKind
    key: str
    value: str = ""
    ttl: float | None = None
    prev_exist: bool | None = None
    prev_value: str | None = None
    prev_index: int | None = None
    recursive: bool = False
    ok_if_exists: bool = False


class Writes:
    """Builders for every registry write fleet makes, each following spec 5.1's write semantics."""

    def __init__(self, layout: Layout | None = None) -> None:
        self.layout = layout or Layout()

    def create_unit(self, unit: Unit) -> list[EtcdOp]:
        """Store the blob (create-only, existing is fine), the job object and the desired state."""
        lay, unit_hash = self.layout, unit.unit_file.hash
        return [EtcdOp(OpKind.SET, lay.unit_blob(unit_hash), encode_unit_blob(unit.unit_file),
                       prev_exist=False, ok_if_exists=True),
                EtcdOp(OpKind.SET, lay.job_object(unit.name), encode_job_object(unit.name, unit_hash)),
                self.set_target_state(unit.name, unit.target_state)]

    def set_target_state(self, name: str, state: JobState | str) -> EtcdOp:
        """Write ``job/<name>/target-state``."""
        return EtcdOp(OpKind.SET, self.layout.job_target_state(name), str(state))

    def destroy_unit(self, name: str) -> EtcdOp:
        """Delete ``job/<name>`` recursively (the blob stays)."""
        return EtcdOp(OpKind.DELETE, self.layout.job_dir(name), recursive=True)

    def schedule_unit(self, name: str, machine_id: str) -> EtcdOp:
        """Create ``job/<name>/target`` (fails if already scheduled)."""
        return EtcdOp(OpKind.SET, self.layout.job_target(name), machine_id, prev_exist=False)

    def unschedule_unit(self, name: str, machine_id: str) -> EtcdOp:
        """Delete ``job/<name>/target`` only if it still names ``machine_id``."""
        return EtcdOp(OpKind.DELETE, self.layout.job_target(name), prev_value=machine_id)

    def register_machine(self, machine: MachineState, ttl: float) -> EtcdOp:
        """Create the machine's object (fails if another fleetd has the same ID)."""
        return EtcdOp(OpKind.SET, self.layout.machine_object(machine.id), encode_machine_object(machine),
                      ttl=ttl, prev_exist=False)

    def beat_machine(self, machine: MachineState, ttl: float) -> EtcdOp:
        """Refresh the machine's object (update-only; fall back to ``register_machine`` if it expired)."""
        return EtcdOp(OpKind.SET, self.layout.machine_object(machine.id), encode_machine_object(machine),
                      ttl=ttl, prev_exist=True)

    def remove_machine(self, machine_id: str) -> EtcdOp:
        """Delete the machine's object on graceful shutdown."""
        return EtcdOp(OpKind.DELETE, self.layout.machine_object(machine_id))

    def set_machine_metadata(self, machine_id: str, name: str, value: str) -> EtcdOp:
        """Write dynamic metadata; ``""`` is the tombstone of a removed key."""
        return EtcdOp(OpKind.SET, self.layout.machine_metadata(machine_id, name), value)

    def job_heartbeat(self, name: str, machine_id: str, ttl: float) -> EtcdOp:
        """Write ``job/<name>/job-state`` = machine ID while the unit is launched here."""
        return EtcdOp(OpKind.SET, self.layout.job_heartbeat(name), machine_id, ttl=ttl)

    def clear_job_heartbeat(self, name: str) -> EtcdOp:
        """Delete ``job/<name>/job-state`` after stopping the unit."""
        return EtcdOp(OpKind.DELETE, self.layout.job_heartbeat(name))

    def save_unit_state(self, state: UnitState, ttl: float) -> list[EtcdOp]:
        """Publish a unit state under ``states/<name>/<mid>`` and the legacy ``state/<name>``."""
        value = encode_unit_state(state)
        return [EtcdOp(OpKind.SET, self.layout.unit_state(state.unit_name, state.machine_id), value, ttl=ttl),
                EtcdOp(OpKind.SET, self.layout.legacy_unit_state(state.unit_name), value, ttl=ttl)]

    def remove_unit_state(self, name: str) -> list[EtcdOp]:
        """fleet's ``RemoveUnitState``: delete ``state/<name>`` and the whole ``states/<name>`` directory."""
        return [EtcdOp(OpKind.DELETE, self.layout.legacy_unit_state(name)),
                EtcdOp(OpKind.DELETE, self.layout.states_dir(name), recursive=True)]

    def publish_api(self, machine_id: str, urls: str, ttl: float | None = None) -> EtcdOp:
        """Write where the machine's API answers (``machines/<id>/api``); no TTL by default, it is only
        read for machines whose presence key is live."""
        return EtcdOp(OpKind.SET, self.layout.machine_api(machine_id), urls, ttl=ttl)

    def set_unplaced_reason(self, name: str, reason: str) -> EtcdOp:
        """Say why ``name`` wants to run but is not scheduled (``engine/unplaced/<name>``, the engine
        leader only; it withdraws the reason once the unit is placed or gone)."""
        return EtcdOp(OpKind.SET, self.layout.unplaced_reason(name), reason)

    def clear_unplaced_reason(self, name: str) -> EtcdOp:
        """The unit was placed (or is gone): forget why it was not."""
        return EtcdOp(OpKind.DELETE, self.layout.unplaced_reason(name))

    def acquire_lease(self, machine_id: str, ttl: float, version: int = ENGINE_VERSION) -> EtcdOp:
        """Create the leader lease (fails if held)."""
        return EtcdOp(OpKind.SET, self.layout.lease(), encode_lease(Lease(machine_id, version)), ttl=ttl,
                      prev_exist=False)

    def renew_lease(self, machine_id: str, ttl: float, index: int, version: int = ENGINE_VERSION) -> EtcdOp:
        """Renew (or steal from a lower version) the lease held at ``index``."""
        return EtcdOp(OpKind.SET, self.layout.lease(), encode_lease(Lease(machine_id, version)), ttl=ttl,
                      prev_index=index)

    def release_lease(self, index: int) -> EtcdOp:
        """Give the lease up."""
        return EtcdOp(OpKind.DELETE, self.layout.lease(), prev_index=index)

    def set_engine_version(self, version: int, previous: int | None) -> EtcdOp:
        """Raise ``engine/version`` (create when absent, else compare-and-swap on the old value)."""
        if previous is None:
            return EtcdOp(OpKind.SET, self.layout.engine_version(), str(version), prev_exist=False)
        return EtcdOp(OpKind.SET, self.layout.engine_version(), str(version), prev_value=str(previous))
