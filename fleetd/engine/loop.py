"""The engine: one elected fleetd places units on machines (spec 5.3-5.6).

Every fleetd runs an ``Engine`` (unless ``disable_engine``); each round it checks the cluster's engine
version and takes part in the leader election through ``EngineLeadership`` (lease TTL = 5 x the
reconcile interval). The leader reconciles: it computes ``fleetd.engine.plan.plan`` from its copy of
the registry and performs the tasks through the registry (create-only schedule, compare-and-delete
unschedule), logging ``Scheduled Unit(x) to Machine(y)`` with the task's reason.

When it reconciles: every ``interval`` seconds, and -- leader only -- at once on registry events that
can change a decision: a unit's desired state, target or existence (``job/``), a machine appearing,
leaving, expiring or changing metadata (``machines/``). Followers only renew their view of the lease.

A round whose view has not changed since a round that had nothing to do (no task, no unit held in a
grace period, no registry outage being waited out, no unit file missing) plans nothing and writes
nothing.

What it reads (fleet re-reads the whole registry every round): a ``RegistryView`` of ``job/``,
``machines/`` and ``engine/unplaced/``, read in full when the engine becomes leader and then kept current
from its watches of ``job/`` and ``machines/`` and from the answers to its own writes, so a round costs
registry reads in proportion to what changed (the blobs of new unit files). The sections are read in full
again every ``full_read_interval`` seconds, after a watch broke, after a round failed unexpectedly, and
on every round when watches are disabled; a watch that fell behind reads its section again itself
(``CatchUp``), as it does when etcd's history was outrun. Tasks are written up to
``WRITE_CONCURRENCY`` at a time (a unit's own tasks in order; a unit with MachineOf peers only once the
tasks before it are done), and the first task that fails abandons the batches after it.

Additions to fleet:

* Why a unit that wants to run is not scheduled is published under ``engine/unplaced/<name>``
  (``Registry.unplaced_reasons``) for the API and fleetctl; the leader writes only changes and
  withdraws a reason once the unit is placed or gone. A new leader first reads what is published.
* Unit blobs no unit refers to any more are deleted every ``gc_interval`` seconds by the leader
  (``Registry.collect_garbage``: a blob must be unreferenced on two consecutive passes).
* A failed schedule/unschedule (someone changed the unit meanwhile) abandons the round's remaining
  tasks, which were computed from a view now known to be stale, and reconciles again at once.
* After rounds failed because the registry could not be reached, the machines known before count as
  seen when the registry first answered again (even if this engine led only some rounds later: the
  lease of the leader before the outage may still stand then), and for ``machine_ttl`` seconds from
  then the engine keeps units on machines whose keys are missing (at least that grace): keys that
  expired while nobody could reach the registry say nothing about the machines, which re-register
  within their TTL. So a registry outage or failover longer than ``agent_ttl`` does not move
  (restart) every unit.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import logging
import math
import time
from collections.abc import Callable, Iterable, Mapping, Sequence

from fleetd.backoff import Backoff
from fleetd.config import LEASE_TTL_FACTOR
from fleetd.engine import plan as engine_plan
from fleetd.engine.plan import EngineConfig, EnginePlan, EngineTask, EngineTaskKind, update_last_seen
from fleetd.etcd import EtcdException, EtcdUnavailable
from fleetd.job import Unit
from fleetd.machine import MachineState
from fleetd.registry.layout import EtcdOp, JobRecord
from fleetd.registry.registry import CatchUp, EngineLeadership, Registry, bounded_gather, catch_up_backlog
from fleetd.registry.view import JOBS, MACHINES, RegistryView

log = logging.getLogger("fleetd.engine")

#: Seconds between two garbage collections of unit blobs.
GC_INTERVAL = 60.0
#: Seconds between two full reads of the registry while the watches keep the view current.
FULL_READ_INTERVAL = 30.0
#: Registry writes an engine round issues together at most.
WRITE_CONCURRENCY = 32
#: Seconds between two reads of a section by a watch that fell behind (``CatchUp``).
CATCH_UP_INTERVAL = 1.0


def task_batches(tasks: Sequence[EngineTask], units: Mapping[str, Unit],
                 limit: int = WRITE_CONCURRENCY) -> list[list[list[EngineTask]]]:
    """Split a plan's tasks into batches of at most ``limit`` chains, written one batch after another,
    the chains of a batch concurrently and the tasks of a chain in order.

    A chain holds the tasks of one unit, in plan order. A task of a unit with MachineOf peers starts a
    new batch, so it is written only once every task before it (its peers' among them) succeeded.
    """
    batches: list[list[list[EngineTask]]] = []
    chains: dict[str, list[EngineTask]] = {}
    for task in tasks:
        unit = units.get(task.unit_name)
        alone = unit is not None and bool(unit.requirements.peers)
        if task.unit_name in chains and not alone:
            chains[task.unit_name].append(task)
            continue
        if alone or not batches or len(batches[-1]) >= limit:
            batches.append([])
            chains = {}
        chains[task.unit_name] = [task]
        batches[-1].append(chains[task.unit_name])
    return batches


class Engine:
    """The engine of one fleetd. ``run`` loops until cancelled; ``stop`` releases the lease."""

    def __init__(self, registry: Registry, machine_id: str, *, interval: float,
                 config: EngineConfig | None = None, watches: bool = True, gc_interval: float = GC_INTERVAL,
                 machine_ttl: float = 0.0, clock: Callable[[], float] = time.monotonic,
                 full_read_interval: float = FULL_READ_INTERVAL) -> None:
        self.registry = registry
        self.machine_id = machine_id
        self.config = config or EngineConfig()
        self.watches = watches
        self.gc_interval = gc_interval
        self.full_read_interval = full_read_interval
        self.clock = clock
        self.leadership = EngineLeadership(registry, machine_id, LEASE_TTL_FACTOR * interval)
        self.interval = interval
        self.leading = False
        self.view: RegistryView | None = None
        self._read_at = -math.inf
        self._settled: tuple[int, int] | None = None  # (view, generation) of a round with nothing to do
        self._wake = asyncio.Event()
        self._watch_task: asyncio.Task[None] | None = None
        self._backoff = Backoff()
        self._last_seen: dict[str, float] = {}
        self._last_gc = clock()
        self.machine_ttl = machine_ttl
        self._registry_lost = False  # rounds failed for want of the registry, none succeeded since
        self._back_at: float | None = None  # when it answered again, until a leader's round notes it
        self._recovered_at: float | None = None

    def set_interval(self, interval: float) -> None:
        """Change the reconcile interval (and with it the lease TTL) from the next round on."""
        self.interval = interval
        self.leadership.ttl = LEASE_TTL_FACTOR * interval

    # -- lifecycle -------------------------------------------------------------------------------------

    async def run(self) -> None:
        """Take part in the election and reconcile while leading, until cancelled."""
        try:
            while True:
                try:
                    await self.round()
                except EtcdException as err:
                    log.warning("Engine round failed: %s", err)
                    self._registry_lost = self._registry_lost or isinstance(err, EtcdUnavailable)
                except Exception:
                    self._read_at = -math.inf
                    await asyncio.sleep(self._backoff.unexpected(log, "Engine round"))
                else:
                    self._backoff.reset()
                    if self._registry_lost:  # back, but not led: the next leading round notes it
                        self._registry_lost, self._back_at = False, self.clock()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), self.interval)
                self._wake.clear()
        finally:
            await self._stop_watching()

    async def stop(self) -> None:
        """Give the lease up so another engine takes over at once (call after cancelling ``run``)."""
        await self._stop_watching()
        if self.leading:
            log.info("Engine leadership released")
        self.leading = False
        try:
            await self.leadership.release()
        except EtcdException as err:
            log.warning("Could not release the engine lease: %s", err)

    # -- one round -------------------------------------------------------------------------------------

    async def round(self) -> EnginePlan | None:
        """Election step, then a reconcile when leading; the plan, or None when not leading."""
        if not await self.registry.ensure_engine_version():
            await self._set_leading(False, "the cluster runs a newer engine version")
            return None
        leading = await self.leadership.step(self.clock())
        await self._set_leading(leading, "lease lost")
        if not leading:
            return None
        return await self.reconcile()

    async def _set_leading(self, leading: bool, why: str) -> None:
        if leading and not self.leading:
            log.info("Engine leadership acquired")
        elif self.leading and not leading:
            log.info("Engine leadership lost: %s", why)
            await self._stop_watching()
            self.view, self._settled = None, None
        self.leading = leading

    async def reconcile(self) -> EnginePlan:
        """Bring the view up to date, plan, perform the tasks and publish why units stay unplaced."""
        now = self.clock()
        view = await self._current_view(now)
        jobs, machines = view.jobs(), view.machines()
        planned = (id(view), view.generation)  # what this round plans from; changes may land meanwhile
        if self._settled == planned and self._recovered_at is None:
            self._see(machines, now, self.config)
            await self._collect_garbage(now, jobs)
            return EnginePlan()  # nothing changed since a round that had nothing to do
        await self.registry.fetch_unit_files(job.unit_hash.hex for job in jobs)
        units, schedule = self._units(jobs)
        config = self._round_config(now, schedule.values())
        self._see(machines, now, config)
        plan = engine_plan.plan(units, schedule, machines, now=now, machines_last_seen=self._last_seen,
                                config=config)
        self._settled = None
        if await self._perform_all(plan.tasks, units):  # else the reasons are stale too: the next round
            await self._publish_reasons({u.unit_name: u.reason for u in (*plan.unplaced, *plan.held)})
            if not plan.tasks and not plan.held and self.watches and len(units) == len(jobs):
                self._settled = planned  # not the generation now: changes during the round need one
        if self.watches and self._watch_task is None:
            self._watch_task = asyncio.create_task(self._watch(view))
        await self._collect_garbage(now, jobs)
        return plan

    def _see(self, machines: Iterable[MachineState], now: float, config: EngineConfig) -> None:
        """Note the machines present at ``now`` (``update_last_seen``)."""
        forget_after = max(config.grace * 2, 60.0)
        self._last_seen = update_last_seen(self._last_seen, (m.id for m in machines), now, forget_after)

    async def _collect_garbage(self, now: float, jobs: Iterable[JobRecord]) -> None:
        """Delete unused unit blobs every ``gc_interval`` seconds."""
        if now - self._last_gc >= self.gc_interval:
            self._last_gc = now
            for unit_hash in await self.registry.collect_garbage({job.unit_hash.hex for job in jobs}):
                log.info("Deleted unused unit file %s", unit_hash)

    async def _current_view(self, now: float) -> RegistryView:
        """The view, read in full first when it is missing, stale, due or not kept by watches."""
        view = self.view
        due = now - self._read_at >= self.full_read_interval
        if view is None or not self.watches or view.stale or not view.loaded or due:
            view = view or RegistryView(self.registry.layout)
            self.view = view
            await self.registry.read_view(view)
            self._read_at = now
        return view

    def _units(self, jobs: Iterable[JobRecord]) -> tuple[dict[str, Unit], dict[str, str]]:
        """The units whose blobs are known, and the stored schedule (non-global units only)."""
        units: dict[str, Unit] = {}
        schedule: dict[str, str] = {}
        for job in jobs:
            unit_file = self.registry.cached_unit_file(job.unit_hash.hex)
            if unit_file is None:
                continue
            unit = units[job.name] = Unit(job.name, unit_file, job.target_state)
            if job.target_machine_id and not unit.is_global:
                schedule[job.name] = job.target_machine_id
        return units, schedule

    def _round_config(self, now: float, targets: Iterable[str]) -> EngineConfig:
        """The configuration of a round read at ``now``: the configured one, with at least
        ``machine_ttl`` of grace during the first ``machine_ttl`` seconds after a registry outage; the
        machines known before and those units are scheduled to count as seen when it ended."""
        back = self._back_at if self._back_at is not None else now if self._registry_lost else None
        if back is not None:
            self._registry_lost, self._back_at = False, None
            self._recovered_at = back
            self._last_seen = dict.fromkeys({*self._last_seen, *targets}, back)
            log.info("Registry reachable again: machines get %.0fs to re-register before their units move",
                     self.machine_ttl)
        if self._recovered_at is None or now - self._recovered_at >= self.machine_ttl:
            self._recovered_at = None
            return self.config
        return dataclasses.replace(self.config, grace=max(self.config.grace, self.machine_ttl))

    async def _perform_all(self, tasks: Sequence[EngineTask], units: Mapping[str, Unit]) -> bool:
        """Write the tasks batch by batch (``task_batches``); False (and a round at once) when one
        failed, leaving the batches after it undone."""
        for batch in task_batches(tasks, units):
            done = await asyncio.gather(*(self._perform_chain(chain) for chain in batch))
            if not all(done):
                self._wake.set()
                return False
        return True

    async def _perform_chain(self, chain: Iterable[EngineTask]) -> bool:
        for task in chain:
            if not await self._perform(task):
                return False
        return True

    async def _perform(self, task: EngineTask) -> bool:
        """Write one task; False (logged) when its precondition no longer holds."""
        writes = self.registry.writes
        if task.kind is EngineTaskKind.SCHEDULE:
            op = writes.schedule_unit(task.unit_name, task.machine_id)
        else:
            op = writes.unschedule_unit(task.unit_name, task.machine_id)
        done = await self._write(op)
        if done:
            log.info("%s: %s", task.describe(), task.reason)
        else:
            log.info("Engine task %s not done: the unit changed meanwhile; reconciling again", task)
        return done

    async def _write(self, op: EtcdOp) -> bool:
        """Perform ``op`` and fold its answer into the view; False when its precondition failed."""
        result = await self.registry.try_apply(op)
        if result is not None and self.view is not None:
            self.view.apply(result)
        return result is not None

    async def _publish_reasons(self, reasons: Mapping[str, str]) -> None:
        """Make ``engine/unplaced/`` equal ``reasons``, writing only the differences from what the view
        holds (read in full from the registry, so reasons written or removed by anyone else converge)."""
        published = self.view.unplaced() if self.view is not None else {}
        writes = self.registry.writes
        changed = [name for name, reason in sorted(reasons.items()) if published.get(name) != reason]
        gone = sorted(set(published) - set(reasons))
        for name in changed:
            log.info("Unit(%s) not scheduled: %s", name, reasons[name])
        ops = [*(writes.set_unplaced_reason(name, reasons[name]) for name in changed),
               *(writes.clear_unplaced_reason(name) for name in gone)]
        await bounded_gather((functools.partial(self._write, op) for op in ops), WRITE_CONCURRENCY)

    # -- watching --------------------------------------------------------------------------------------

    async def _watch(self, view: RegistryView) -> None:
        """Keep ``view`` current from the watches of ``job/`` and ``machines/``, waking the reconcile
        on changes that can alter a decision, until cancelled."""
        await asyncio.gather(*(self._keep_watching(view, section) for section in (JOBS, MACHINES)))

    async def _keep_watching(self, view: RegistryView, section: str) -> None:
        """Watch ``section`` for ever from the view's read on. A re-read (etcd's history was outrun,
        or the watch fell behind: ``CatchUp``) resets the section; after a registry error wait a second,
        after anything else back off; either way the view is marked stale (read again at the next
        round) and the watch starts over from the section's last read."""
        backoff = Backoff()
        catch_up = CatchUp(lambda: catch_up_backlog(view.size(section)), CATCH_UP_INTERVAL)
        while True:
            try:
                async for event in self.registry.watch_section(section, view.index(section) + 1, catch_up):
                    if event.action == "get":
                        view.reset(section, event.node, event.etcd_index)
                        self._wake.set()
                    elif view.apply(event):
                        self._wake.set()
            except EtcdException as err:
                log.debug("Engine watch of %s failed: %s", section, err)
                await asyncio.sleep(1.0)
            except Exception:
                await asyncio.sleep(backoff.unexpected(log, f"Engine watch of {section}"))
            view.mark_stale(section)
            self._wake.set()

    async def _stop_watching(self) -> None:
        task, self._watch_task = self._watch_task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
