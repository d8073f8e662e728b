"""The agent: makes this machine run what the registry schedules on it (spec 5.5, 5.6).

Three pieces, each a thin adapter around pure code:

* ``MachinePresence`` keeps ``machines/<id>/object`` alive with TTL ``agent_ttl``: it registers at
  start (create-only, retried with backoff while another live fleetd holds the ID), refreshes every
  ``agent_ttl / 2`` and deletes the key when the machine leaves (graceful shutdown). A fleetd restarted
  on the same machine takes its predecessor's key over instead of waiting for it to expire, so the
  engine never sees the machine vanish and never moves its units: the state directory remembers the
  key's ``createdIndex``, and only a key with exactly that index is taken over (a duplicate machine ID
  on another machine is not).
* ``JobView`` is the agent's copy of ``job/``: one GET of the directory, then kept current from the
  values carried by the watch events; a resync (etcd's history outrun, or the watch so far behind that
  one read is cheaper than walking the history: ``CatchUp``) or a broken watch reads it again,
  and so does a periodic (not event-driven) reconcile once ``VIEW_REFRESH_INTERVAL`` seconds have passed
  since the last read, so the view converges to the registry even if an event was missed. The view
  carries the etcd index it reflects and never moves backwards. An event costs no GET, so registry load
  grows with the number of changes, not with machines times changes. Unit blobs are fetched only for
  units that can concern this machine (scheduled here, or wanting to run without a target: global units
  and units waiting for the engine) and cached by hash; a unit waiting for the engine whose blob is
  known and not global concerns no agent, and neither wakes nor enters a reconcile.
* ``Agent`` reconciles on every event that may concern this machine (a unit scheduled here or taken
  away, the desired state or content of such a unit, a global unit, a unit whose blob is not known yet)
  and every ``RECONCILE_INTERVAL`` seconds: desired (``fleetd.agent.plan.desired_units``) against
  current (what the runtime has loaded and the state the agent drove it to) gives ordered tasks,
  executed through the runtime and logged with their reasons. Every ``STATE_POLL_INTERVAL`` it
  publishes the runtime's state of each loaded unit when it changed, re-publishes it before its TTL
  runs out, and heartbeats launched units (``PUBLISH_CONCURRENCY`` writes at a time). When the runtime
  tracks Docker containers (it has an ``engine``: ``fleetd.runtime.containers``), the same poll lists
  this machine's containers once and a unit's state carries its containers (``<short ID> <state>``),
  so a container that starts, stops or goes is published within ``STATE_POLL_INTERVAL``.

Differences from fleet:

* a failing task skips the remaining tasks of the same unit only (fleet abandons the whole round, so
  one broken unit blocked every start after it);
* at startup each unit the runtime already has counts as launched when active and loaded otherwise,
  so a restarted fleetd neither restarts nor reloads units it had running (they are re-adopted);
* a unit's published state is removed for this machine only (fleet removed every machine's state of
  the unit, which made global units flicker);
* the registry going away never stops a unit: the agent keeps acting on its last view.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import json
import logging
import math
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from fleetd.agent import plan as agent_plan
from fleetd.agent.plan import AgentTask, AgentTaskKind, LoadedUnit
from fleetd.backoff import Backoff
from fleetd.etcd import EtcdCompareFailed, EtcdException, EtcdKeyNotFound, EtcdNodeExists
from fleetd.files import write_atomically
from fleetd.job import JobState, Unit, UnitState, requirements_of
from fleetd.machine import MachineState, merge_metadata
from fleetd.registry.layout import (
    EtcdOp,
    JobRecord,
    OpKind,
    decode_job_object,
    decode_target_state,
)
from fleetd.registry.registry import CatchUp, JobEvent, Registry, bounded_gather, catch_up_backlog
from fleetd.runtime.base import UnitRuntime, UnitRuntimeError
from fleetd.runtime.containers import DockerEngine, DockerError
from fleetd.unit import go_quote

log = logging.getLogger("fleetd.agent")

#: Seconds between two reconciles when nothing happens (fleet: 5 s, fixed).
RECONCILE_INTERVAL = 5.0
#: Seconds after which a periodic reconcile reads ``job/`` again (the watch keeps the view current).
VIEW_REFRESH_INTERVAL = 60.0
#: Seconds between two reads of ``job/`` by a watch that fell behind (``CatchUp``).
CATCH_UP_INTERVAL = 5.0
#: Unit states and heartbeats a publish writes together at most.
PUBLISH_CONCURRENCY = 8
#: Seconds between two attempts to read ``job/`` again after the registry failed, at most (the delay
#: doubles from ``STATE_POLL_INTERVAL``: an overloaded registry is not answered with more big reads).
WATCH_RETRY_CAP = 8.0
#: Seconds between two looks at the runtime's unit states (fleet: 1 s).
STATE_POLL_INTERVAL = 1.0
#: Active states in which a unit found at startup counts as launched.
RUNNING_STATES = frozenset({"active", "activating", "reloading", "deactivating"})
#: Registration backoff bounds in seconds (fleet: 1 s doubling up to 1 min).
REGISTER_BACKOFF = (1.0, 60.0)


def republish_period(ttl: float) -> float:
    """How often a TTL'd key is rewritten: 4/5 of the TTL when it exceeds 10 s, else half (fleet)."""
    return ttl * 4 / 5 if ttl > 10 else ttl / 2


# ---------------------------------------------------------------------------------------------------
# Presence


class MachinePresence:
    """This machine's key in the registry. ``machine`` may be replaced (configuration reload); the
    next ``beat`` publishes it. ``state_file`` remembers the key's createdIndex across restarts."""

    def __init__(self, registry: Registry, machine: MachineState, ttl: float, state_file: Path) -> None:
        self.registry = registry
        self.machine = machine
        self.ttl = ttl
        self.state_file = state_file
        self._healthy = True

    @property
    def key(self) -> str:
        return self.registry.layout.machine_object(self.machine.id)

    @property
    def healthy(self) -> bool:
        """False while heartbeats fail (the API answers 503 then, as fleet's monitor does)."""
        return self._healthy

    async def register(self) -> None:
        """Create (or take over) the key, retrying with backoff until it works. Cancellable."""
        delay = REGISTER_BACKOFF[0]
        while True:
            try:
                if await self.maybe_register():
                    log.info("Registered Machine(%s) with metadata %s", self.machine.id,
                             dict(self.machine.metadata))
                    return
                log.error("Machine(%s) is registered by another live fleetd (duplicate machine ID?); "
                          "retrying in %.0fs", self.machine.id, delay)
            except EtcdException as err:
                log.error("Cannot register Machine(%s): %s; retrying in %.0fs", self.machine.id, err, delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, REGISTER_BACKOFF[1])

    async def maybe_register(self) -> bool:
        """One attempt: create the key, else take over our predecessor's; False if someone else has it."""
        try:
            result = await self.registry.apply(self.registry.writes.register_machine(self.machine, self.ttl))
        except EtcdNodeExists:
            return await self._maybe_take_over()
        if result is not None:
            self._remember(result.created_index)
        return True

    async def _maybe_take_over(self) -> bool:
        remembered = self._remembered_index()
        if remembered is None:
            return False
        try:
            current = await self.registry.client.get(self.key)
        except EtcdKeyNotFound:
            return False
        if current.created_index != remembered:
            return False
        op = dataclasses.replace(self.registry.writes.beat_machine(self.machine, self.ttl), prev_exist=None,
                                 prev_index=current.modified_index)
        try:
            await self.registry.apply(op)
        except (EtcdCompareFailed, EtcdKeyNotFound):
            return False
        log.info("Took over the registration of Machine(%s) from the previous fleetd", self.machine.id)
        return True

    async def beat(self) -> None:
        """Refresh the key (re-creating it if it expired). Raises ``EtcdException`` on failure."""
        try:
            await self.registry.apply(self.registry.writes.beat_machine(self.machine, self.ttl))
        except EtcdKeyNotFound:
            if not await self.maybe_register():
                raise EtcdNodeExists(105, "Key already exists", self.key) from None
            log.warning("Machine(%s) had expired from the registry; registered again", self.machine.id)

    async def run(self) -> None:
        """Beat every ``ttl / 2`` until cancelled; after a failure retry every ``ttl / 10`` (a registry
        failover must not cost half the TTL); failures are logged once per outage."""
        while True:
            await asyncio.sleep(self.ttl / 2 if self._healthy else max(self.ttl / 10, 0.1))
            try:
                await self.beat()
            except Exception as err:  # anything: the heartbeat must outlive a bug as well as an outage
                if self._healthy:
                    log.warning("Heartbeat of Machine(%s) failed: %s (units keep running)",
                                self.machine.id, err, exc_info=not isinstance(err, EtcdException))
                self._healthy = False
            else:
                if not self._healthy:
                    log.info("Heartbeat of Machine(%s) succeeded again", self.machine.id)
                self._healthy = True

    async def leave(self) -> None:
        """Delete the key (graceful shutdown) and forget it."""
        await self.registry.remove_machine(self.machine.id)
        self.state_file.unlink(missing_ok=True)

    def _remember(self, created_index: int) -> None:
        self.state_file.parent.mkdir(parents=True, exist_ok=True)
        write_atomically(self.state_file, json.dumps({"machine_id": self.machine.id,
                                                      "created_index": created_index}))

    def _remembered_index(self) -> int | None:
        try:
            record = json.loads(self.state_file.read_text())
        except (OSError, ValueError):
            return None
        if not isinstance(record, dict) or record.get("machine_id") != self.machine.id:
            return None
        index = record.get("created_index")
        return index if isinstance(index, int) else None


# ---------------------------------------------------------------------------------------------------
# The agent's copy of job/


@dataclass
class JobView:
    """``job/<name>`` records as last seen, kept current by ``apply``. ``loaded`` once read at all.

    ``index`` is the etcd index the view reflects: the index of the read it was built from, or of the
    last event folded in since. Reads and events may arrive out of order (the periodic re-read races the
    watch), so a read older than the view and an event the view already reflects are ignored: the view
    only ever moves forward in the registry's history.
    """

    machine_id: str
    jobs: dict[str, JobRecord] = field(default_factory=dict)
    loaded: bool = False
    index: int = 0

    def reset(self, jobs: Iterable[JobRecord], index: int) -> bool:
        """Replace everything with a read taken at ``index``, unless the view is already newer. True
        when the read replaced a view that differed from it (a change the watch had not delivered)."""
        if self.loaded and index < self.index:
            return False
        fresh = {job.name: job for job in jobs}
        differed = self.loaded and _scheduling(fresh) != _scheduling(self.jobs)
        self.jobs, self.index, self.loaded = fresh, index, True
        return differed

    def apply(self, event: JobEvent, is_global: Callable[[str], bool | None]) -> bool:
        """Fold one watch event in; True when it may concern this machine.

        ``is_global(name)`` says whether a unit is global (None: not known yet). A change concerns this
        machine when the unit is or was scheduled here, or may be global. An event at or below ``index``
        is already reflected (by a later read) and is ignored.
        """
        if event.index <= self.index:
            return False
        self.index = event.index
        before = self.jobs.get(event.name)
        after = _changed_record(before, event)
        if after is before:
            return False
        if after is None:
            self.jobs.pop(event.name, None)
        else:
            self.jobs[event.name] = after
        targets = {r.target_machine_id for r in (before, after) if r is not None}
        return self.machine_id in targets or is_global(event.name) is not False

    def candidates(self) -> list[JobRecord]:
        """Jobs that can concern this machine: scheduled here, or wanting to run without a target."""
        return [job for _, job in sorted(self.jobs.items())
                if job.target_machine_id == self.machine_id
                or (not job.target_machine_id and job.target_state is not JobState.INACTIVE)]


def _scheduling(jobs: Mapping[str, JobRecord]) -> dict[str, JobRecord]:
    """The jobs without their heartbeats, which reads carry and watch events do not."""
    return {name: dataclasses.replace(job, heartbeat="") for name, job in jobs.items()}


def _changed_record(record: JobRecord | None, event: JobEvent) -> JobRecord | None:
    """``record`` after ``event`` (the same object when nothing the agent uses changed)."""
    parts = event.key.rstrip("/").rsplit("/", 2)
    leaf = parts[-1] if len(parts) == 3 and parts[-2] == event.name else ""
    deleted = event.action in ("delete", "expire", "compareAndDelete")
    if not leaf:  # the job directory itself
        return None if deleted else record
    if leaf == "object" and not deleted:
        try:
            _, unit_hash = decode_job_object(event.value)
        except ValueError:
            return record
        if record is None:
            return JobRecord(event.name, unit_hash)
        return dataclasses.replace(record, unit_hash=unit_hash)
    if record is None:
        return None
    if leaf == "target-state":
        return dataclasses.replace(record, target_state=JobState.INACTIVE if deleted
                                   else decode_target_state(event.value))
    if leaf == "target":
        return dataclasses.replace(record, target_machine_id="" if deleted else event.value)
    return record


# ---------------------------------------------------------------------------------------------------
# The agent


class Agent:
    """Runs the units of ``machine`` through ``runtime``; see the module docstring.

    ``start`` launches the loops; ``stop`` cancels them leaving units as they are; ``purge`` stops
    them and unloads every unit (graceful shutdown). ``machine`` carries the static metadata; dynamic
    metadata from the registry is merged in (``current_machine``).
    """

    def __init__(self, registry: Registry, runtime: UnitRuntime, machine: MachineState, *, ttl: float,
                 watches: bool = True, clock: Callable[[], float] = time.monotonic) -> None:
        self.registry = registry
        self.runtime = runtime
        self.machine = machine
        self.ttl = ttl
        self.watches = watches
        self.clock = clock
        self.view = JobView(machine.id)
        self.current: dict[str, LoadedUnit] = {}
        self.dynamic_metadata: dict[str, str] = {}
        self._view_read_at = -math.inf
        self._published: dict[str, tuple[UnitState, float]] = {}
        self._beats: dict[str, float] = {}
        self._refused: dict[str, str] = {}
        self._wake = asyncio.Event()
        self._lock = asyncio.Lock()
        self._publish_lock = asyncio.Lock()  # the publish loop and a reconcile's publish never interleave
        self._tasks: list[asyncio.Task[None]] = []
        self._metadata_read_at = -math.inf
        self._ready = False

    @property
    def machine_id(self) -> str:
        return self.machine.id

    @property
    def current_machine(self) -> MachineState:
        """This machine with its dynamic metadata merged over the static one."""
        return self.machine.with_metadata(merge_metadata(self.machine.metadata, self.dynamic_metadata))

    # -- lifecycle -------------------------------------------------------------------------------------

    async def adopt_current(self) -> None:
        """Take what the runtime has loaded as current: active units as launched, others as loaded."""
        hashes = dict(await self.runtime.units())
        states = await self.runtime.states(hashes) if hashes else {}
        self.current = {name: LoadedUnit(unit_hash, JobState.LAUNCHED if states[name].active_state
                                         in RUNNING_STATES else JobState.LOADED)
                        for name, unit_hash in hashes.items()}
        if self.current:
            log.info("Found %d unit(s) from before: %s", len(self.current),
                     ", ".join(f"{n} ({c.state.value})" for n, c in sorted(self.current.items())))

    async def start(self) -> None:
        """Start the reconcile, state and (unless disabled) watch loops (call ``adopt_current`` first)."""
        self._wake.set()  # the first round at once
        loops = [self._reconcile_loop(), self._publish_loop()]
        if self.watches:
            loops.append(self._watch_loop())
        self._tasks = [asyncio.create_task(loop) for loop in loops]

    async def stop(self) -> None:
        """Cancel the loops; units stay as they are."""
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []

    async def purge(self) -> None:
        """fleet's purge: stop the loops, unload every unit, withdraw states and heartbeats."""
        await self.stop()
        async with self._lock:
            await self.execute(agent_plan.purge_plan(self.current))
        try:
            await self.publish()
        except EtcdException as err:
            log.warning("Could not withdraw unit states while purging: %s", err)

    def wake(self) -> None:
        """Reconcile soon (a configuration reload changed metadata, say)."""
        self._wake.set()

    # -- loops -----------------------------------------------------------------------------------------

    async def _watch_loop(self) -> None:
        backoff = Backoff()
        retry = Backoff(STATE_POLL_INTERVAL, WATCH_RETRY_CAP)  # registry trouble: no read storm
        while True:
            try:
                index = await self.refresh_view()
                self._wake.set()
                catch_up = CatchUp(lambda: catch_up_backlog(len(self.view.jobs)), CATCH_UP_INTERVAL)
                events = self.registry.watch_jobs(index + 1, triggers_only=False, catch_up=catch_up)
                async for event in events:
                    if event.resync:
                        log.debug("Watch of the registry fell behind; read job/ again at %d", event.index)
                        self._reset_view(event.jobs or (), event.index)
                        self._wake.set()
                        continue
                    if self.view.apply(event, self._known_global):
                        self._wake.set()
                    backoff.reset()
                    retry.reset()
            except EtcdException as err:
                delay = retry.next_delay()
                log.warning("Watching the registry failed: %s; reading it again in %.0fs", err, delay)
                await asyncio.sleep(delay)
            except Exception:
                await asyncio.sleep(backoff.unexpected(log, "Watching the registry"))

    async def _reconcile_loop(self) -> None:
        backoff = Backoff()
        while True:
            woken = False
            with contextlib.suppress(TimeoutError):
                woken = await asyncio.wait_for(self._wake.wait(), RECONCILE_INTERVAL)
            self._wake.clear()
            refresh = not woken and self.clock() - self._view_read_at >= VIEW_REFRESH_INTERVAL
            try:
                await self.reconcile_round(periodic=refresh)
                backoff.reset()
            except EtcdException as err:
                log.warning("Agent reconcile could not read the registry: %s (units keep running)", err)
            except Exception:
                await asyncio.sleep(backoff.unexpected(log, "Agent reconcile"))

    async def reconcile_round(self, *, periodic: bool) -> agent_plan.AgentPlan | None:
        """One round of the reconcile loop. A ``periodic`` round (no event woke it) reads ``job/`` again
        first, so the view converges to the registry even if a watch event was missed; an event-driven
        round plans from the view the watch keeps current."""
        if periodic or not self.watches or not self.view.loaded:
            await self.refresh_view()
        if self.clock() - self._metadata_read_at >= RECONCILE_INTERVAL:
            await self.refresh_metadata()
        return await self.reconcile()

    async def _publish_loop(self) -> None:
        backoff = Backoff()
        while True:
            try:
                await self.publish()
                backoff.reset()
            except EtcdException as err:
                log.debug("Publishing unit states failed: %s", err)
            except Exception:
                await asyncio.sleep(backoff.unexpected(log, "Publishing unit states"))
            await asyncio.sleep(STATE_POLL_INTERVAL)

    # -- reading ----------------------------------------------------------------------------------------

    async def refresh_view(self) -> int:
        """Read ``job/`` again; returns the etcd index it was read at. A read older than the view (it
        raced the watch) leaves the view as it is."""
        jobs, index = await self.registry.jobs()
        self._reset_view(jobs, index)
        return index

    def _reset_view(self, jobs: Iterable[JobRecord], index: int) -> None:
        """Take a read of ``job/`` at ``index`` into the view (unless the view is newer)."""
        self._view_read_at = self.clock()
        if self.view.reset(jobs, index):
            # Usually changes the watch has not delivered yet; a lost event would show up here too.
            log.debug("job/ read at index %d differed from the watched view; using what was read", index)

    async def refresh_metadata(self) -> None:
        """Read this machine's dynamic metadata (API PATCH); wake the reconcile when it changed."""
        dynamic = await self.registry.machine_metadata(self.machine_id)
        self._metadata_read_at = self.clock()
        if dynamic != self.dynamic_metadata:
            self.dynamic_metadata = dynamic
            self._wake.set()

    def _known_global(self, name: str) -> bool | None:
        """Whether ``name`` is a global unit, None while its blob has not been read."""
        job = self.view.jobs.get(name)
        unit_file = None if job is None else self.registry.cached_unit_file(job.unit_hash.hex)
        return None if unit_file is None else requirements_of(unit_file, name).is_global

    async def candidate_units(self) -> dict[str, Unit]:
        """The units that concern this machine, with their unit files (blobs fetched once by hash):
        those scheduled here, and global units wanting to run."""
        units = {}
        for job in self.view.candidates():
            here = job.target_machine_id == self.machine_id
            if not here and self._known_global(job.name) is False:
                continue  # waits for the engine to place it
            unit_file = await self.registry.unit_file(job.unit_hash.hex)
            if unit_file is None:
                log.warning("Unit(%s) has no unit file %s in the registry", job.name, job.unit_hash.hex)
                continue
            unit = Unit(job.name, unit_file, job.target_state)
            if here or unit.is_global:
                units[job.name] = unit
        return units

    # -- reconciling -----------------------------------------------------------------------------------

    async def reconcile(self) -> agent_plan.AgentPlan | None:
        """One round: plan from the view and the runtime, execute, publish. None before the first read."""
        if not self.view.loaded:
            return None
        async with self._lock:
            units = await self.candidate_units()
            schedule = {n: j.target_machine_id for n, j in self.view.jobs.items() if j.target_machine_id}
            plan = agent_plan.plan(self.current_machine, units, schedule, self.current)
            self._log_refusals(plan.not_here)
            await self.execute(plan.tasks)
        if not self._ready:
            self._ready = True
            log.info("Agent ready: %d unit(s) wanted here, %d loaded", len(plan.desired), len(self.current))
        await self.publish()
        return plan

    def _log_refusals(self, refused: Iterable[tuple[str, str]]) -> None:
        now = dict(refused)
        for name, reason in sorted(now.items()):
            if self._refused.get(name) != reason:
                log.info("Global Unit(%s) does not run on this machine: %s", name, reason)
        self._refused = now

    async def execute(self, tasks: Iterable[AgentTask]) -> None:
        """Run tasks in order through the runtime, updating ``current``; a failure skips the rest of
        that unit's tasks and is logged."""
        failed: set[str] = set()
        for task in tasks:
            if task.unit_name in failed:
                continue
            try:
                await self._perform(task)
            except Exception as err:  # a runtime's bug must not stop the other units' tasks either
                log.error("AgentReconciler task failed: type=%s job=%s reason=%s: %s",
                          task.kind.type_name, task.unit_name, go_quote(task.reason), err,
                          exc_info=not isinstance(err, UnitRuntimeError | OSError))
                failed.add(task.unit_name)
                continue
            self.current = agent_plan.apply_task(self.current, task)
            log.info("AgentReconciler completed task: type=%s job=%s reason=%s",
                     task.kind.type_name, task.unit_name, go_quote(task.reason))

    async def _perform(self, task: AgentTask) -> None:
        name = task.unit_name
        if task.kind is AgentTaskKind.LOAD:
            assert task.unit is not None
            await self.runtime.load(name, task.unit.unit_file)
        elif task.kind is AgentTaskKind.UNLOAD:
            await self.runtime.unload(name)
            await self._clear_heartbeat(name)
        elif task.kind is AgentTaskKind.RELOAD:
            await self.runtime.reload_daemon()
        elif task.kind is AgentTaskKind.START:
            await self.runtime.start(name)
            self._beats.pop(name, None)  # heartbeat at the next publish
        else:
            await self.runtime.stop(name)
            await self._clear_heartbeat(name)

    async def _clear_heartbeat(self, name: str) -> None:
        """Delete ``job/<name>/job-state`` if it still names this machine; registry trouble is logged."""
        self._beats.pop(name, None)
        op = EtcdOp(OpKind.DELETE, self.registry.layout.job_heartbeat(name), prev_value=self.machine_id)
        try:
            await self.registry.apply(op)
        except (EtcdKeyNotFound, EtcdCompareFailed):
            pass
        except EtcdException as err:
            log.warning("Could not clear the heartbeat of Unit(%s): %s", name, err)

    # -- publishing ------------------------------------------------------------------------------------

    async def publish(self) -> None:
        """Publish changed (or soon expiring) unit states, withdraw those of unloaded units, heartbeat
        launched units. Raises ``EtcdException``; what was not written is retried next time.
        Calls are serialized (the publish loop and a reconcile both publish)."""
        async with self._publish_lock:
            await self._publish()

    async def _publish(self) -> None:
        now, period = self.clock(), republish_period(self.ttl)
        names = sorted(self.current)
        states = await self.runtime.states(names) if names else {}
        containers = await self._containers() if names else {}
        saves: list[Callable[[], Awaitable[None]]] = []
        for name in names:
            loaded = self.current.get(name)  # a reconcile may unload units while this one awaits
            if loaded is None:
                continue
            runtime_state = states[name]
            state = UnitState(name, self.machine_id, loaded.unit_hash, runtime_state.load_state,
                              runtime_state.active_state, runtime_state.sub_state,
                              tuple(containers.get(name, ())))
            previous = self._published.get(name)
            if previous is None or not state.same_systemd_state(previous[0]) \
                    or state.containers != previous[0].containers or now - previous[1] >= period:
                saves.append(functools.partial(self._save_state, state, now))
        await bounded_gather(saves, PUBLISH_CONCURRENCY)
        for name in sorted(set(self._published) - set(self.current)):
            await self.registry.remove_unit_state(name, self.machine_id)
            del self._published[name]
        beats: list[Callable[[], Awaitable[None]]] = []
        for name in names:
            loaded = self.current.get(name)
            launched = loaded is not None and loaded.state is JobState.LAUNCHED
            if launched and now - self._beats.get(name, -math.inf) >= period:
                beats.append(functools.partial(self._beat, name, now))
        await bounded_gather(beats, PUBLISH_CONCURRENCY)

    async def _containers(self) -> dict[str, list[str]]:
        """This machine's Docker containers by unit, ``<short ID> <state>`` each, oldest first, from one
        listing on the runtime's ``engine``; empty when the runtime has none or the engine is down."""
        engine = getattr(self.runtime, "engine", None)
        if not isinstance(engine, DockerEngine):
            return {}
        try:
            found = await engine.containers(self.machine_id)
        except DockerError as err:
            log.debug("Listing the containers of units failed: %s", err)
            return {}
        by_unit: dict[str, list[str]] = {}
        for container in found:
            by_unit.setdefault(container.unit, []).append(f"{container.id[:12]} {container.state}")
        return by_unit

    async def _save_state(self, state: UnitState, now: float) -> None:
        await self.registry.save_unit_state(state, self.ttl)
        self._published[state.unit_name] = (state, now)

    async def _beat(self, name: str, now: float) -> None:
        await self.registry.job_heartbeat(name, self.machine_id, self.ttl)
        self._beats[name] = now
