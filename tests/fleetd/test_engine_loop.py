"""The engine loop: how a plan's writes are batched, when a lagging watch reads again, and an engine
leader on the reference etcd keeping its view from watches while units and machines come and go."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

import pytest

from fleetd.engine.loop import Engine, task_batches
from fleetd.engine.plan import EngineTask, EngineTaskKind
from fleetd.etcd import EtcdClient, EtcdResult, EtcdUnavailable
from fleetd.job import JobState, Unit
from fleetd.machine import MachineState
from fleetd.registry.layout import Layout
from fleetd.registry.registry import CatchUp, Registry, catch_up_backlog
from fleetd.unit import UnitFile

SCHEDULE, UNSCHEDULE = EngineTaskKind.SCHEDULE, EngineTaskKind.UNSCHEDULE
PLAIN = UnitFile.from_text("[Service]\nExecStart=/bin/true\n")
FOLLOWER = UnitFile.from_text("[Service]\nExecStart=/bin/true\n[X-Fleet]\nMachineOf=a.service\n")
M1 = MachineState("1" * 32, "10.0.0.1")
M2 = MachineState("2" * 32, "10.0.0.2")


def task(kind: EngineTaskKind, name: str, machine: str = "m") -> EngineTask:
    return EngineTask(kind, name, machine, "why")


def names(batches: list[list[list[EngineTask]]]) -> list[list[list[str]]]:
    return [[[f"{t.kind.name[0]}:{t.unit_name}" for t in chain] for chain in batch] for batch in batches]


def test_batches_keep_a_units_tasks_in_order_and_respect_the_bound() -> None:
    tasks = [task(UNSCHEDULE, "x"), task(SCHEDULE, "y"), task(SCHEDULE, "x"), task(SCHEDULE, "z")]
    assert names(task_batches(tasks, {}, limit=2)) == [[["U:x", "S:x"], ["S:y"]], [["S:z"]]]
    assert names(task_batches(tasks, {}, limit=32)) == [[["U:x", "S:x"], ["S:y"], ["S:z"]]]
    assert task_batches([], {}) == []


def test_a_unit_with_peers_waits_for_every_task_before_it() -> None:
    units = {"a.service": Unit("a.service", PLAIN), "b.service": Unit("b.service", FOLLOWER)}
    tasks = [task(SCHEDULE, "a.service"), task(SCHEDULE, "c.service"), task(SCHEDULE, "b.service"),
             task(SCHEDULE, "d.service")]
    assert names(task_batches(tasks, units)) == [[["S:a.service"], ["S:c.service"]],
                                                 [["S:b.service"], ["S:d.service"]]]


def behind(by: int) -> EtcdResult:
    return EtcdResult("set", {"key": "/k", "value": "v", "modifiedIndex": 1000}, etcd_index=1000 + by)


def test_catch_up_reads_once_far_enough_behind_and_at_most_once_per_interval() -> None:
    now = [100.0]
    catch_up = CatchUp(lambda: 50, interval=5.0, clock=lambda: now[0])

    async def main() -> list[bool]:
        first = [await catch_up.due(behind(10)), await catch_up.due(behind(60))]
        started = asyncio.get_running_loop().time()
        now[0] += 1.0  # one second later, behind again: the read waits for the rest of the interval
        sleeps: list[float] = []
        real_sleep = asyncio.sleep

        async def record(delay: float) -> None:
            sleeps.append(delay)
            await real_sleep(0)
        asyncio.sleep = record  # type: ignore[assignment]
        try:
            second = await catch_up.due(behind(60))
        finally:
            asyncio.sleep = real_sleep
        assert sleeps == [pytest.approx(4.0)] and asyncio.get_running_loop().time() - started < 1.0
        return [*first, second]
    assert asyncio.run(main()) == [False, True, True]
    assert catch_up_backlog(10) == 100 and catch_up_backlog(4000) == 1000



async def until(check: Callable[[], Awaitable[bool]], timeout: float = 20.0) -> None:
    """Wait (bounded) until ``check()`` holds."""
    async with asyncio.timeout(timeout):
        while not await check():
            await asyncio.sleep(0.05)


def test_the_leader_follows_changes_through_its_watches(etcd_url: str,
                                                        caplog: pytest.LogCaptureFixture) -> None:
    """Units submitted, a machine joining and one leaving while the engine leads: every change is acted
    on from the watched view (the periodic full read is an hour away), and its writes are batched."""
    caplog.set_level(logging.INFO, "fleetd.engine")

    async def main() -> None:
        async with EtcdClient([etcd_url]) as client:
            registry = Registry(client, Layout("/engine-loop/"))
            await registry.register_machine(M1, 600)
            engine = Engine(registry, M1.id, interval=30.0, full_read_interval=3600.0)
            running = asyncio.create_task(engine.run())
            try:
                await until(lambda: _is(engine.leading and engine.view is not None))
                for i in range(40):
                    await registry.create_unit(Unit(f"u{i:02}.service", PLAIN, JobState.LAUNCHED))
                await until(lambda: _scheduled(registry, 40, {M1.id}))
                await registry.register_machine(M2, 600)
                await registry.create_unit(Unit("late.service", PLAIN, JobState.LAUNCHED))
                await until(lambda: _target(registry, "late.service", M2.id))
                await registry.remove_machine(M1.id)
                await until(lambda: _scheduled(registry, 41, {M2.id}))
                assert engine.view is not None and {m.id for m in engine.view.machines()} == {M2.id}
            finally:
                running.cancel()
                await asyncio.gather(running, return_exceptions=True)
                await engine.stop()
    asyncio.run(main())
    assert "Unscheduled Unit(u00.service) from Machine(" + M1.id + "): target Machine(" + M1.id + \
        ") went away" in caplog.text


async def _is(value: bool) -> bool:
    return value


async def _scheduled(registry: Registry, count: int, machines: set[str]) -> bool:
    jobs, _ = await registry.jobs()
    return len(jobs) == count and {j.target_machine_id for j in jobs} == machines


async def _target(registry: Registry, name: str, machine_id: str) -> bool:
    jobs, _ = await registry.jobs()
    return any(j.name == name and j.target_machine_id == machine_id for j in jobs)


def test_machines_get_their_grace_when_the_registry_came_back_before_this_engine_led() -> None:
    """The registry answers again, but the lease of the engine that led before the outage still
    stands for a round or two: when this engine leads later, the machines (whose keys expired
    meanwhile) still get ``machine_ttl`` from the moment the registry came back to re-register."""
    now = [100.0]

    async def main() -> tuple[float, float]:
        async with EtcdClient(["http://127.0.0.1:9"]) as client:  # never called: rounds are scripted
            engine = Engine(Registry(client, Layout("/grace/")), M1.id, interval=0.001, machine_ttl=30.0,
                            clock=lambda: now[0])
            script: list[EtcdUnavailable | None] = [EtcdUnavailable("down"), None, None]

            async def scripted_round() -> None:  # an outage, then rounds that do not lead
                outcome = script.pop(0)
                now[0] += 5.0
                if not script:
                    raise asyncio.CancelledError
                if outcome is not None:
                    raise outcome
            engine.round = scripted_round  # type: ignore[method-assign]
            with pytest.raises(asyncio.CancelledError):
                await engine.run()
            config = engine._round_config(now[0], [M2.id])  # the first round that leads
            return config.grace, engine._last_seen[M2.id]
    grace, seen = asyncio.run(main())
    assert grace == 30.0
    assert seen == 110.0  # when the registry first answered again, not when this engine led
