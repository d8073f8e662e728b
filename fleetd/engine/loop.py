"""The engine: one elected fleetd places units on machines (spec 5.3-5.6).

Every fleetd runs an ``Engine`` (unless ``disable_engine``); each round it checks the cluster's engine
version and takes part in the leader election through ``EngineLeadership`` (lease TTL = 5 x the
reconcile interval). The leader reconciles: it reads the whole registry in one GET, computes
``fleetd.engine.plan.plan`` and performs each task through the registry (create-only schedule,
compare-and-delete unschedule), logging ``Scheduled Unit(x) to Machine(y)`` with the task's reason.

When it reconciles: every ``interval`` seconds, and -- leader only -- at once on registry events that
can change a decision: a unit's desired state, target or existence (``job/``), a machine appearing,
leaving, expiring or changing metadata (``machines/``). Followers only renew their view of the lease.

Additions to fleet:

* Why a unit that wants to run is not scheduled is published under ``engine/unplaced/<name>``
  (``Registry.unplaced_reasons``) for the API and fleetctl; the leader writes only changes and
  withdraws a reason once the unit is placed or gone. A new leader first reads what is published.
* Unit blobs no unit refers to any more are deleted every ``gc_interval`` seconds by the leader
  (``Registry.collect_garbage``: a blob must be unreferenced on two consecutive passes).
* A failed schedule/unschedule (someone changed the unit meanwhile) abandons the round's remaining
  tasks, which were computed from a view now known to be stale, and reconciles again at once.
* After rounds failed because the registry could not be reached, the machines known before count as
  seen at the first round that reads the registry again, and for ``machine_ttl`` seconds from then the
  engine keeps units on machines whose keys are missing (at least that grace): keys that expired while
  nobody could reach the registry say nothing about the machines, which re-register within their TTL.
  So a registry outage or failover longer than ``agent_ttl`` does not move (restart) every unit.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping

from fleetd.backoff import Backoff
from fleetd.config import LEASE_TTL_FACTOR
from fleetd.engine import plan as engine_plan
from fleetd.engine.plan import EngineConfig, EnginePlan, EngineTask, EngineTaskKind, update_last_seen
from fleetd.etcd import EtcdException, EtcdResult, EtcdUnavailable
from fleetd.registry.registry import EngineLeadership, Registry

log = logging.getLogger("fleetd.engine")

#: Seconds between two garbage collections of unit blobs.
GC_INTERVAL = 60.0
#: Actions on a machine object that do not change what the engine sees (heartbeats).
_QUIET_MACHINE_ACTIONS = frozenset({"update", "compareAndSwap"})


def machine_event_matters(event: EtcdResult) -> bool:
    """True for a ``machines/`` event that can change a scheduling decision: anything but a heartbeat
    rewriting a machine's object with the same value."""
    if event.action not in _QUIET_MACHINE_ACTIONS or not event.key.endswith("/object"):
        return True
    return (event.prev_node or {}).get("value") != event.value


class Engine:
    """The engine of one fleetd. ``run`` loops until cancelled; ``stop`` releases the lease."""

    def __init__(self, registry: Registry, machine_id: str, *, interval: float,
                 config: EngineConfig | None = None, watches: bool = True, gc_interval: float = GC_INTERVAL,
                 machine_ttl: float = 0.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.registry = registry
        self.machine_id = machine_id
        self.config = config or EngineConfig()
        self.watches = watches
        self.gc_interval = gc_interval
        self.clock = clock
        self.leadership = EngineLeadership(registry, machine_id, LEASE_TTL_FACTOR * interval)
        self.interval = interval
        self.leading = False
        self._wake = asyncio.Event()
        self._watch_task: asyncio.Task[None] | None = None
        self._published: dict[str, str] | None = None
        self._backoff = Backoff()
        self._last_seen: dict[str, float] = {}
        self._last_gc = clock()
        self.machine_ttl = machine_ttl
        self._registry_lost = False
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
                    await asyncio.sleep(self._backoff.unexpected(log, "Engine round"))
                else:
                    self._backoff.reset()
                    self._registry_lost = False  # a leader's reconcile has taken note of it
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
            self._published = None
        self.leading = leading

    async def reconcile(self) -> EnginePlan:
        """Read the registry, plan, perform the tasks and publish why units stay unplaced."""
        read = await self.registry.read()
        snapshot = read.snapshot
        now = self.clock()
        config = self._round_config(now, snapshot.schedule.values())
        forget_after = max(config.grace * 2, 60.0)
        present = (m.id for m in snapshot.machines)
        self._last_seen = update_last_seen(self._last_seen, present, now, forget_after)
        plan = engine_plan.plan(snapshot.units, snapshot.schedule, snapshot.machines, now=now,
                                machines_last_seen=self._last_seen, config=config)
        performed = True
        for task in plan.tasks:
            performed = await self._perform(task)
            if not performed:
                self._wake.set()
                break
        if performed:  # else the plan's reasons are stale too: the next round (at once) publishes
            self._published = dict(read.unplaced)
            await self._publish_reasons({u.unit_name: u.reason for u in (*plan.unplaced, *plan.held)})
        if self.watches and self._watch_task is None:
            self._watch_task = asyncio.create_task(self._watch(read.index + 1))
        if now - self._last_gc >= self.gc_interval:
            self._last_gc = now
            for unit_hash in await self.registry.collect_garbage():
                log.info("Deleted unused unit file %s", unit_hash)
        return plan

    def _round_config(self, now: float, targets: Iterable[str]) -> EngineConfig:
        """The configuration of a round read at ``now``: the configured one, with at least
        ``machine_ttl`` of grace during the first ``machine_ttl`` seconds after a registry outage; the
        machines known before and those units are scheduled to count as seen when it ended."""
        if self._registry_lost:
            self._registry_lost = False
            self._recovered_at = now
            self._last_seen = dict.fromkeys({*self._last_seen, *targets}, now)
            log.info("Registry reachable again: machines get %.0fs to re-register before their units move",
                     self.machine_ttl)
        if self._recovered_at is None or now - self._recovered_at >= self.machine_ttl:
            self._recovered_at = None
            return self.config
        return dataclasses.replace(self.config, grace=max(self.config.grace, self.machine_ttl))

    async def _perform(self, task: EngineTask) -> bool:
        """Write one task; False (logged) when its precondition no longer holds."""
        if task.kind is EngineTaskKind.SCHEDULE:
            done = await self.registry.schedule_unit(task.unit_name, task.machine_id)
        else:
            done = await self.registry.unschedule_unit(task.unit_name, task.machine_id)
        if done:
            log.info("%s: %s", task.describe(), task.reason)
        else:
            log.info("Engine task %s not done: the unit changed meanwhile; reconciling again", task)
        return done

    async def _publish_reasons(self, reasons: Mapping[str, str]) -> None:
        """Make ``engine/unplaced/`` equal ``reasons``, writing only the differences (from what the
        round's read found published, so reasons written or removed by anyone else converge too)."""
        if self._published is None:
            self._published = await self.registry.unplaced_reasons()
        for name, reason in sorted(reasons.items()):
            if self._published.get(name) != reason:
                log.info("Unit(%s) not scheduled: %s", name, reason)
                await self.registry.set_unplaced_reason(name, reason)
                self._published[name] = reason
        for name in sorted(set(self._published) - set(reasons)):
            await self.registry.clear_unplaced_reason(name)
            del self._published[name]

    # -- watching --------------------------------------------------------------------------------------

    async def _watch(self, index: int) -> None:
        """Wake the reconcile on job and machine changes from ``index`` on, until cancelled."""
        await asyncio.gather(self._watch_jobs(index), self._watch_machines(index))

    async def _watch_jobs(self, index: int) -> None:
        async def jobs(since: int) -> None:
            async for _ in self.registry.watch_jobs(since):
                self._wake.set()

        await self._keep_watching("Engine job watch", jobs, index)

    async def _watch_machines(self, index: int) -> None:
        machines = self.registry.layout.machines_dir()

        async def presence(since: int) -> None:
            async for event in self.registry.client.watch_forever(machines, recursive=True,
                                                                  wait_index=since):
                if event.action == "get" or machine_event_matters(event):
                    self._wake.set()

        await self._keep_watching("Engine machine watch", presence, index)

    async def _keep_watching(self, what: str, watch: Callable[[int], Awaitable[None]], index: int) -> None:
        """Run ``watch(index)`` for ever: after a registry error wait a second, after anything else
        back off, and start again from the current state (index 0)."""
        backoff = Backoff()
        while True:
            try:
                await watch(index)
            except EtcdException as err:
                log.debug("%s failed: %s", what, err)
                await asyncio.sleep(1.0)
                index = 0
            except Exception:
                await asyncio.sleep(backoff.unexpected(log, what))
                index = 0

    async def _stop_watching(self) -> None:
        task, self._watch_task = self._watch_task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

