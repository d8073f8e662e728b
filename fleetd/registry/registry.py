"""fleet's registry on a live etcd: the writes of ``fleetd.registry.layout`` performed with their
preconditions, the reads parsed by its readers, the engine leader lease, watches and blob collection.

Contracts shared by every method: an ``EtcdUnavailable`` from the client propagates (the caller decides
whether to retry); a precondition that fails the way fleet expects it to fail is reported in the return
value (``False``/``None``), never as an exception; any other etcd error propagates.

Differences from fleet, all additive:

* ``read`` takes the whole cluster in one quorum GET of the prefix (fleet: one GET per directory, and
  once one per unit blob); parsed unit blobs are cached by hash, since a blob never changes.
* ``watch_jobs`` also reports a destroyed unit (deletion of ``job/<name>``), and a resync marker when
  etcd's event history was outrun, so a watcher never silently misses a change.
* ``collect_garbage`` deletes ``unit/<hash>`` blobs that no job references (fleet never deletes them).
* ``read_view``/``watch_section`` keep a ``RegistryView`` (the engine's copy of ``job/``, ``machines/``
  and ``engine/unplaced/``); ``watch_tree`` reads a watched directory again when the watch fell so far
  behind that one read is cheaper than walking etcd's history (``CatchUp``).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import math
import time
from collections.abc import AsyncGenerator, Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

from fleetd.etcd import (
    EtcdClient,
    EtcdCompareFailed,
    EtcdKeyNotFound,
    EtcdNodeExists,
    EtcdResult,
)
from fleetd.job import JobState, Unit, UnitState
from fleetd.machine import MachineState
from fleetd.registry.layout import (
    ENGINE_VERSION,
    EtcdOp,
    JobRecord,
    Layout,
    LayoutError,
    Lease,
    OpKind,
    RegistrySnapshot,
    Writes,
    build_snapshot,
    children,
    decode_lease,
    decode_unit_blob,
    leaf_values,
    read_jobs,
    read_machines,
    read_unit_blobs,
    read_unit_states,
)
from fleetd.registry.view import SECTIONS, RegistryView
from fleetd.unit import UnitFile

T = TypeVar("T")
#: Reads the registry issues together at most (blob fetches).
READ_CONCURRENCY = 16
#: A watch behind by fewer indexes than this walks etcd's history rather than reading again.
CATCH_UP_MIN_BACKLOG = 100
#: Seconds a big recursive read (``read``, ``read_view``, ``jobs``, a watch's catch-up read) may take
#: at least: 1,000 units make ``job/`` some 0.8 MB, which can take more than the usual 1 s request
#: timeout on a busy registry, and timing it out only repeats the work.
BIG_READ_TIMEOUT = 5.0


def catch_up_backlog(entries: int) -> int:
    """How many indexes a watch of a directory of ``entries`` children (units, machines) may fall behind
    before it reads the directory again rather than walking etcd's history one request per event. A
    recursive read of ``job/`` with 1,000 units (4,000 leaves) took about as long as 40 history watches
    (fastkv and the reference etcd alike), and about half the indexes of a busy cluster are under
    ``job/``: a quarter of the entries is some three times the break-even, which keeps reads rare."""
    return max(CATCH_UP_MIN_BACKLOG, entries // 4)


@dataclass
class CatchUp:
    """When a watch stops walking etcd's history and reads its directory again: once an event arrives
    more than ``backlog()`` indexes behind the store's index (``X-Etcd-Index`` of a watch answered from
    history). Reads are at least ``interval`` seconds apart; a watch behind again sooner waits for the
    interval to end instead of walking on. So a watcher that cannot keep up with the changes costs the
    registry one read per interval and not one request per change, and sees changes ``interval`` late
    at worst."""

    backlog: Callable[[], int]
    interval: float
    clock: Callable[[], float] = time.monotonic
    last: float = -math.inf

    def behind(self, event: EtcdResult) -> bool:
        """True when ``event`` came more than ``backlog()`` indexes behind the store."""
        return event.etcd_index - event.modified_index > self.backlog()

    async def due(self, event: EtcdResult) -> bool:
        """True when the watch should read instead of asking for the event after ``event``; waits until
        ``interval`` has passed since the previous read first (the read is counted as made then)."""
        if not self.behind(event):
            return False
        wait = self.last + self.interval - self.clock()
        if wait > 0:
            await asyncio.sleep(wait)
        self.last = self.clock()
        return True


async def bounded_gather(calls: Iterable[Callable[[], Awaitable[T]]], limit: int) -> list[T]:
    """Run ``calls`` with at most ``limit`` of them running at once (each is called only when it may
    start); their results in order. If any raised, the first exception (in order) is raised once all
    have finished."""
    semaphore = asyncio.Semaphore(limit)

    async def one(call: Callable[[], Awaitable[T]]) -> T:
        async with semaphore:
            return await call()
    results = await asyncio.gather(*(one(c) for c in calls), return_exceptions=True)
    for result in results:
        if isinstance(result, BaseException):
            raise result
    return results  # type: ignore[return-value]


@dataclass(frozen=True, slots=True)
class HeldLease:
    """The leader lease as stored: holder and version, the key's modifiedIndex (the CAS token) and
    the seconds it had left when read (None if it has no TTL)."""

    lease: Lease
    index: int
    ttl: float | None = None

    @property
    def machine_id(self) -> str:
        return self.lease.machine_id


@dataclass(frozen=True, slots=True)
class ClusterRead:
    """One consistent read of the registry and the etcd index it was taken at (watch from index+1);
    ``unplaced`` is what ``engine/unplaced/`` held (unit name -> reason)."""

    snapshot: RegistrySnapshot
    index: int
    jobs: tuple[JobRecord, ...]
    unplaced: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class JobEvent:
    """A change under ``job/`` the engine and agents react to.

    ``name`` is the unit's name; for a resync (etcd's history was outrun: re-read everything) it is
    ``""`` and ``resync`` is True, and ``jobs`` holds ``job/`` as re-read at ``index`` (the watch goes
    on from there). ``index`` is where the next watch continues from minus one.
    ``value`` is the key's new value (``""`` for deletions and directories).
    """

    name: str
    key: str
    action: str
    index: int
    value: str = ""
    jobs: tuple[JobRecord, ...] | None = None

    @property
    def resync(self) -> bool:
        return not self.name


class Registry:
    """fleet's registry under ``layout``'s prefix, through ``client``."""

    def __init__(self, client: EtcdClient, layout: Layout | None = None) -> None:
        self.client = client
        self.layout = layout or Layout()
        self.writes = Writes(self.layout)
        self._blobs: dict[str, UnitFile] = {}
        self._garbage: dict[str, int] = {}

    # -- writes ----------------------------------------------------------------------------------------

    async def apply(self, op: EtcdOp) -> EtcdResult | None:
        """Perform one ``EtcdOp``; a create that finds the key is None when ``ok_if_exists``."""
        try:
            if op.kind is OpKind.SET:
                return await self.client.set(op.key, op.value, ttl=op.ttl, prev_exist=op.prev_exist,
                                             prev_value=op.prev_value, prev_index=op.prev_index)
            return await self.client.delete(op.key, recursive=op.recursive, prev_value=op.prev_value,
                                            prev_index=op.prev_index)
        except EtcdNodeExists:
            if op.ok_if_exists:
                return None
            raise

    async def _apply_quietly(self, op: EtcdOp) -> bool:
        """``apply``, False when the precondition failed or the key is missing."""
        return await self.try_apply(op) is not None

    async def try_apply(self, op: EtcdOp) -> EtcdResult | None:
        """``apply`` for an op whose precondition may fail: etcd's answer (for ``RegistryView.apply``),
        None when the precondition failed or the key is missing. ``op`` must not be ``ok_if_exists``."""
        try:
            return await self.apply(op)
        except (EtcdKeyNotFound, EtcdCompareFailed, EtcdNodeExists):
            return None

    # -- units -----------------------------------------------------------------------------------------

    async def create_unit(self, unit: Unit) -> None:
        """Store the unit: its blob (kept if present), its job object and its desired state.
        Creating an existing name replaces its content and resets its desired state."""
        for op in self.writes.create_unit(unit):
            await self.apply(op)
        self._blobs[unit.hash] = unit.unit_file

    async def destroy_unit(self, name: str) -> bool:
        """Delete ``job/<name>`` and everything under it; False if there was no such unit."""
        return await self._apply_quietly(self.writes.destroy_unit(name))

    async def set_target_state(self, name: str, state: JobState) -> None:
        """Write the unit's desired state (only ``JobState`` values: fleet stored anything)."""
        await self.apply(self.writes.set_target_state(name, JobState(state)))

    def cached_unit_file(self, unit_hash: str) -> UnitFile | None:
        """The unit file of ``unit_hash`` if this registry has already read or written it (no I/O)."""
        return self._blobs.get(unit_hash)

    async def fetch_unit_files(self, hashes: Iterable[str], limit: int = READ_CONCURRENCY) -> None:
        """Read the blobs of ``hashes`` not cached yet, at most ``limit`` at a time (see ``unit_file``);
        more than ``limit`` of them are read in one GET of ``unit/``."""
        missing = sorted(set(hashes) - self._blobs.keys())
        if len(missing) > limit:  # many (a new engine leader's first round): one read of them all
            read_unit_blobs(await self._get_dir(self.layout.units_dir()), self._blobs)
            missing = [h for h in missing if h not in self._blobs]
        await bounded_gather((functools.partial(self.unit_file, h) for h in missing), limit)

    async def unit_file(self, unit_hash: str) -> UnitFile | None:
        """The unit file stored under ``unit/<hash>``, None if absent or not fleet's format."""
        if unit_hash in self._blobs:
            return self._blobs[unit_hash]
        try:
            result = await self.client.get(self.layout.unit_blob(unit_hash), quorum=True)
            self._blobs[unit_hash] = decode_unit_blob(result.value or "")
        except (EtcdKeyNotFound, LayoutError):
            return None
        return self._blobs[unit_hash]

    async def get_unit(self, name: str) -> Unit | None:
        """One unit (name, file, desired state), None if it does not exist or its blob is missing."""
        try:
            result = await self.client.get(self.layout.job_dir(name), recursive=True, quorum=True)
        except EtcdKeyNotFound:
            return None
        jobs = read_jobs({"nodes": [result.node]})
        unit_file = await self.unit_file(jobs[0].unit_hash.hex) if jobs else None
        return Unit(name, unit_file, jobs[0].target_state) if jobs and unit_file else None

    # -- schedule --------------------------------------------------------------------------------------

    async def schedule_unit(self, name: str, machine_id: str) -> bool:
        """Create ``job/<name>/target``; False if the unit is already scheduled somewhere."""
        return await self._apply_quietly(self.writes.schedule_unit(name, machine_id))

    async def unschedule_unit(self, name: str, machine_id: str) -> bool:
        """Delete ``job/<name>/target`` if it still names ``machine_id``; False otherwise."""
        return await self._apply_quietly(self.writes.unschedule_unit(name, machine_id))

    # -- machines --------------------------------------------------------------------------------------

    async def register_machine(self, machine: MachineState, ttl: float) -> bool:
        """Create the machine's presence key with ``ttl``; False if a live machine has this ID."""
        return await self._apply_quietly(self.writes.register_machine(machine, ttl))

    async def beat_machine(self, machine: MachineState, ttl: float) -> None:
        """Refresh the presence key (update-only), re-creating it if it had expired."""
        try:
            await self.apply(self.writes.beat_machine(machine, ttl))
        except EtcdKeyNotFound:
            await self.apply(self.writes.register_machine(machine, ttl))

    async def remove_machine(self, machine_id: str) -> None:
        """Delete the presence key (graceful shutdown); absent is fine."""
        await self._apply_quietly(self.writes.remove_machine(machine_id))

    async def set_machine_metadata(self, machine_id: str, name: str, value: str) -> None:
        """Write dynamic metadata; ``""`` removes the key from the machine's merged metadata."""
        await self.apply(self.writes.set_machine_metadata(machine_id, name, value))

    async def machine_metadata(self, machine_id: str) -> dict[str, str]:
        """The dynamic metadata written for ``machine_id`` (key -> value, ``""`` = removed key)."""
        return leaf_values(await self._get_dir(self.layout.key("machines", machine_id, "metadata")))

    async def machines(self) -> list[MachineState]:
        """Live machines, sorted by ID, dynamic metadata merged."""
        return read_machines(await self._get_dir(self.layout.machines_dir()))

    async def publish_api_address(self, machine_id: str, urls: str, ttl: float | None = None) -> None:
        """Publish the comma list of URLs the machine's fleetd API answers on (an addition to fleet)."""
        await self.apply(self.writes.publish_api(machine_id, urls, ttl))

    async def api_address(self, machine_id: str) -> list[str]:
        """The URLs ``machine_id``'s API answers on, ``[]`` if it published none."""
        return await self._read_list(self.layout.machine_api(machine_id))

    async def _read_list(self, key: str) -> list[str]:
        try:
            value = (await self.client.get(key, quorum=True)).value or ""
        except EtcdKeyNotFound:
            return []
        return [url.strip() for url in value.split(",") if url.strip()]

    # -- unit states and heartbeats ---------------------------------------------------------------------

    async def save_unit_state(self, state: UnitState, ttl: float) -> None:
        """Publish a unit's systemd state from its machine, living ``ttl`` seconds."""
        for op in self.writes.save_unit_state(state, ttl):
            await self.apply(op)

    async def remove_unit_state(self, name: str, machine_id: str | None = None) -> None:
        """Remove published states of ``name``: all of them (fleet), or only ``machine_id``'s (and the
        legacy ``state/<name>`` only if that machine wrote it last)."""
        if machine_id is None:
            for op in self.writes.remove_unit_state(name):
                await self._apply_quietly(op)
            return
        await self._delete_quietly(self.layout.unit_state(name, machine_id))
        try:
            legacy = await self.client.get(self.layout.legacy_unit_state(name))
        except EtcdKeyNotFound:
            return
        if machine_id in (legacy.value or ""):
            await self._apply_quietly(EtcdOp(OpKind.DELETE, legacy.key, prev_index=legacy.modified_index))

    async def _delete_quietly(self, key: str) -> bool:
        return await self._apply_quietly(EtcdOp(OpKind.DELETE, key))

    async def unit_states(self) -> list[UnitState]:
        """Every published unit state, sorted by (unit, machine)."""
        return read_unit_states(await self._get_dir(self.layout.states_dir()))

    async def job_heartbeat(self, name: str, machine_id: str, ttl: float) -> None:
        """Say ``machine_id`` runs ``name`` (``job/<name>/job-state``), for ``ttl`` seconds."""
        await self.apply(self.writes.job_heartbeat(name, machine_id, ttl))

    async def clear_job_heartbeat(self, name: str) -> None:
        """Remove the heartbeat after stopping the unit; absent is fine."""
        await self._apply_quietly(self.writes.clear_job_heartbeat(name))

    # -- reading the cluster ---------------------------------------------------------------------------

    @property
    def big_read_timeout(self) -> float:
        """The timeout of a big recursive read: the client's ``request_timeout``, at least
        ``BIG_READ_TIMEOUT``."""
        return max(self.client.request_timeout, BIG_READ_TIMEOUT)

    async def _get_dir(self, key: str) -> Mapping[str, Any] | None:
        try:
            return (await self.client.get(key, recursive=True, sort=True, quorum=True)).node
        except EtcdKeyNotFound:
            return None

    async def read(self) -> ClusterRead:
        """The whole registry in one quorum GET: units (with desired and current states), schedule,
        machines and unit states, plus the index to watch from (``index + 1``)."""
        try:
            result = await self.client.get(self.layout.key(), recursive=True, sort=True, quorum=True,
                                           timeout=self.big_read_timeout)
            root, index = result.node, result.etcd_index
        except EtcdKeyNotFound as err:
            root, index = None, err.index
        parts = dict(children(root))
        jobs = read_jobs(parts.get("job"))
        blobs = read_unit_blobs(parts.get("unit"), self._blobs)
        snapshot = build_snapshot(jobs, blobs, read_machines(parts.get("machines")),
                                  read_unit_states(parts.get("states")))
        unplaced = leaf_values(dict(children(parts.get("engine"))).get("unplaced"))
        return ClusterRead(snapshot, index, tuple(jobs), unplaced)

    async def read_view(self, view: RegistryView, sections: Iterable[str] = SECTIONS) -> None:
        """Reset ``sections`` of ``view`` from one quorum GET each (issued together): the engine's full
        read, without the unit states and blobs ``read`` also takes."""
        async def one(section: str) -> None:
            try:
                result = await self.client.get(self.layout.key(section), recursive=True, sort=True,
                                               quorum=True, timeout=self.big_read_timeout)
                view.reset(section, result.node, result.etcd_index)
            except EtcdKeyNotFound as err:
                view.reset(section, None, err.index)
        await asyncio.gather(*(one(section) for section in sections))

    async def watch_section(self, section: str, wait_index: int,
                            catch_up: CatchUp | None = None) -> AsyncGenerator[EtcdResult, None]:
        """Every change under ``section`` (``fleetd.registry.view.SECTIONS``) from ``wait_index`` on; a
        ``get`` result is a re-read of the section after etcd's history was outrun or ``catch_up`` chose
        to read (``RegistryView.reset`` it with ``section``). See ``watch_tree``."""
        async for event in self.watch_tree(self.layout.key(section), wait_index, catch_up):
            yield event

    async def jobs(self) -> tuple[list[JobRecord], int]:
        """Every ``job/<name>`` record (no unit blobs, no states) in one quorum GET, and the etcd index
        it was read at (watch ``job/`` from ``index + 1`` to miss nothing)."""
        try:
            result = await self.client.get(self.layout.jobs_dir(), recursive=True, sort=True, quorum=True,
                                           timeout=self.big_read_timeout)
        except EtcdKeyNotFound as err:
            return [], err.index
        return read_jobs(result.node), result.etcd_index

    async def units(self) -> dict[str, Unit]:
        """Every unit by name."""
        return dict((await self.read()).snapshot.units)

    # -- engine version and leader lease ----------------------------------------------------------------

    async def engine_version(self) -> int | None:
        """The cluster's engine version, None if never set."""
        try:
            return int((await self.client.get(self.layout.engine_version(), quorum=True)).value or 0)
        except EtcdKeyNotFound:
            return None
        except ValueError:
            return 0

    async def ensure_engine_version(self, version: int = ENGINE_VERSION) -> bool:
        """Raise the cluster's engine version to ``version`` if lower; True if this engine may take part
        (the cluster's version is not higher than ``version``)."""
        for _ in range(3):
            current = await self.engine_version()
            if current is not None and current >= version:
                return current == version
            if await self._apply_quietly(self.writes.set_engine_version(version, current)):
                return True
        return False

    @staticmethod
    def _held(result: EtcdResult) -> HeldLease | None:
        try:
            lease = decode_lease(result.value or "")
        except LayoutError:
            return None
        return HeldLease(lease, result.modified_index, result.ttl)

    async def get_lease(self) -> HeldLease | None:
        """The leader lease, None if nobody holds it (an unreadable value counts as held by nobody
        known: a ``HeldLease`` with machine ID ``""`` and version 0)."""
        try:
            result = await self.client.get(self.layout.lease(), quorum=True)
        except EtcdKeyNotFound:
            return None
        return self._held(result) or HeldLease(Lease("", 0), result.modified_index, result.ttl)

    async def _write_lease(self, op: EtcdOp) -> HeldLease | None:
        try:
            result = await self.apply(op)
        except (EtcdNodeExists, EtcdCompareFailed, EtcdKeyNotFound):
            return None
        return self._held(result) if result else None

    async def acquire_lease(self, machine_id: str, ttl: float,
                            version: int = ENGINE_VERSION) -> HeldLease | None:
        """Take the free lease for ``ttl`` seconds; None if someone holds it."""
        return await self._write_lease(self.writes.acquire_lease(machine_id, ttl, version))

    async def renew_lease(self, held: HeldLease, ttl: float, machine_id: str | None = None,
                          version: int | None = None) -> HeldLease | None:
        """Extend ``held`` (or take it over for ``machine_id``: a steal) by CAS on its index; None if
        it changed hands or expired meanwhile."""
        op = self.writes.renew_lease(machine_id or held.machine_id, ttl, held.index,
                                     held.lease.version if version is None else version)
        return await self._write_lease(op)

    async def release_lease(self, held: HeldLease) -> bool:
        """Give the lease up if it is still ``held``."""
        return await self._apply_quietly(self.writes.release_lease(held.index))

    # -- watching --------------------------------------------------------------------------------------

    async def watch_tree(self, key: str, wait_index: int,
                         catch_up: CatchUp | None = None) -> AsyncGenerator[EtcdResult, None]:
        """``EtcdClient.watch_forever`` of ``key`` recursively from ``wait_index``, which also yields a
        re-read of ``key`` (action ``get``) when ``catch_up`` says the watch fell too far behind, and
        goes on from that read: one read instead of walking etcd's history one event per request."""
        index = wait_index
        while True:
            events = self.client.watch_forever(key, recursive=True, wait_index=index)
            async with contextlib.aclosing(events):
                async for event in events:
                    yield event
                    if catch_up is not None and event.action != "get" and await catch_up.due(event):
                        break
            try:
                reread = await self.client.get(key, recursive=True, sort=True, timeout=self.big_read_timeout)
            except EtcdKeyNotFound as err:
                reread = EtcdResult("get", None, etcd_index=err.index)
            yield reread
            index = reread.etcd_index + 1

    async def watch_jobs(self, wait_index: int | None = None, *, triggers_only: bool = True,
                         catch_up: CatchUp | None = None) -> AsyncGenerator[JobEvent, None]:
        """Changes under ``job/`` from ``wait_index`` on (``ClusterRead.index + 1`` to miss nothing).

        With ``triggers_only`` only desired-state, target and unit-destroy changes are reported.
        A resync event (``resync``) means etcd's history was outrun (or ``catch_up`` chose to read
        instead of walking it): it carries ``job/`` as read then.
        """
        jobs_dir = self.layout.jobs_dir()
        async for event in self.watch_tree(jobs_dir, wait_index or 0, catch_up):
            if event.action == "get":
                yield JobEvent("", jobs_dir, "resync", event.etcd_index, jobs=tuple(read_jobs(event.node)))
                continue
            parts = self.layout.relative(event.key)
            destroyed = len(parts) == 2 and event.action in ("delete", "expire")
            wanted = destroyed or self.layout.is_job_trigger(event.key) or not triggers_only
            if len(parts) < 2 or not wanted:
                continue
            yield JobEvent(parts[1], event.key, event.action, event.modified_index, event.value or "")

    # -- why units are not scheduled (an addition to fleet) --------------------------------------------

    async def unplaced_reasons(self) -> dict[str, str]:
        """Unit name -> why the engine leaves it unscheduled, as last published by the engine leader."""
        return leaf_values(await self._get_dir(self.layout.unplaced_dir()))

    async def unplaced_reason(self, name: str) -> str | None:
        """Why the engine leaves ``name`` unscheduled, None if it published no reason."""
        try:
            return (await self.client.get(self.layout.unplaced_reason(name), quorum=True)).value or None
        except EtcdKeyNotFound:
            return None

    async def set_unplaced_reason(self, name: str, reason: str) -> None:
        """Publish why ``name`` is not scheduled (the engine leader only)."""
        await self.apply(self.writes.set_unplaced_reason(name, reason))

    async def clear_unplaced_reason(self, name: str) -> None:
        """Withdraw the reason once ``name`` is scheduled or gone; absent is fine."""
        await self._apply_quietly(self.writes.clear_unplaced_reason(name))

    # -- garbage ---------------------------------------------------------------------------------------

    async def collect_garbage(self, referenced: Iterable[str] | None = None) -> list[str]:
        """Delete unit blobs no job has referenced in this call and the previous one (and unchanged
        since); returns the hashes deleted. Call it periodically from one place (the engine leader):
        a unit being created between two calls keeps its blob because its job appears meanwhile.
        ``referenced``: the hashes the jobs refer to, when the caller knows them (else ``job/`` is read)."""
        if referenced is None:
            referenced = {job.unit_hash.hex for job in read_jobs(await self._get_dir(self.layout.jobs_dir()))}
        referenced = set(referenced)
        try:
            blobs = (await self.client.get(self.layout.units_dir(), quorum=True)).children
        except EtcdKeyNotFound:
            blobs = []
        unreferenced = {str(n["key"]).rsplit("/", 1)[-1]: int(n.get("modifiedIndex", 0)) for n in blobs}
        unreferenced = {h: i for h, i in unreferenced.items() if h not in referenced}
        deleted = []
        for unit_hash, index in sorted(unreferenced.items()):
            if self._garbage.get(unit_hash) == index and await self._apply_quietly(
                    EtcdOp(OpKind.DELETE, self.layout.unit_blob(unit_hash), prev_index=index)):
                deleted.append(unit_hash)
                self._blobs.pop(unit_hash, None)
        self._garbage = {h: i for h, i in unreferenced.items() if h not in deleted}
        return deleted


class EngineLeadership:
    """fleet's engine leader election over the lease (spec 5.3 step 2), one instance per engine.

    ``step(now)`` is called every reconcile round and answers "am I the leader for this round":
    the holder renews; others take a free lease, steal from a lower engine version (then lead only
    once the old holder's TTL has run out), or follow. ``now`` is a monotonic clock in seconds.
    """

    def __init__(self, registry: Registry, machine_id: str, ttl: float,
                 version: int = ENGINE_VERSION) -> None:
        self.registry = registry
        self.machine_id = machine_id
        self.ttl = ttl
        self.version = version
        self.held: HeldLease | None = None
        self._lead_from = 0.0

    async def step(self, now: float | None = None) -> bool:
        """Renew, acquire or steal the lease as fleet does; True while this engine leads."""
        now = time.monotonic() if now is None else now
        if self.held is not None:
            self.held = await self.registry.renew_lease(self.held, self.ttl)
            if self.held is not None:
                return now >= self._lead_from
        current = await self.registry.get_lease()
        if current is None:
            self.held = await self.registry.acquire_lease(self.machine_id, self.ttl, self.version)
            self._lead_from = now
        elif current.machine_id == self.machine_id or current.lease.version < self.version:
            self.held = await self.registry.renew_lease(current, self.ttl, self.machine_id, self.version)
            same = current.machine_id == self.machine_id
            self._lead_from = now if same else now + (current.ttl or 0)
        return self.held is not None and now >= self._lead_from

    async def release(self) -> None:
        """Give the lease up (graceful shutdown)."""
        if self.held is not None:
            await self.registry.release_lease(self.held)
            self.held = None
