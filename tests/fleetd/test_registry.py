"""fleet's registry on a real reference etcd: units, schedule, machines, states, lease, watches, GC."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from fleetd.etcd import EtcdClient
from fleetd.job import JobState, Unit, UnitState
from fleetd.machine import MachineState
from fleetd.registry.layout import (
    Layout,
    decode_unit_blob,
    encode_job_object,
    read_jobs,
    read_machines,
    read_unit_states,
)
from fleetd.registry.registry import EngineLeadership, JobEvent, Registry
from fleetd.unit import UnitFile
from tests import harness
from tests.fleetd.test_etcd_client import run, until

HELLO = UnitFile.from_text('[Service]\nExecStart=/bin/bash -c "while true; do echo hi; sleep 1; done"\n')
GLOBAL = UnitFile.from_text("[Service]\nExecStart=/bin/true\n[X-Fleet]\nGlobal=true\n")
M1 = MachineState("10000000000000000000000000000001", "127.0.0.1", {"region": "east"})
M2 = MachineState("20000000000000000000000000000002", "127.0.0.2")


def with_registry(server: harness.Server, scenario: Callable[[Registry], Awaitable[None]]) -> None:
    async def main() -> None:
        async with EtcdClient([server.url]) as etcd:
            await scenario(Registry(etcd, Layout("/test/fleet/")))
    run(main())


def test_units_are_stored_in_fleets_layout(etcd_server: harness.Server) -> None:
    async def scenario(reg: Registry) -> None:
        await reg.create_unit(Unit("hello.service", HELLO, JobState.LAUNCHED))
        await reg.create_unit(Unit("global.service", GLOBAL))
        etcd, lay = reg.client, reg.layout
        raw = await etcd.get(lay.job_object("hello.service"))
        assert raw.value == encode_job_object("hello.service", HELLO.hash)
        assert decode_unit_blob((await etcd.get(lay.unit_blob(HELLO.hash))).value or "") == HELLO
        jobs = read_jobs((await etcd.get(lay.jobs_dir(), recursive=True)).node)
        assert [(j.name, j.target_state) for j in jobs] == [
            ("global.service", JobState.INACTIVE), ("hello.service", JobState.LAUNCHED)]

        cluster = await reg.read()
        assert set(cluster.snapshot.units) == {"global.service", "hello.service"}
        assert cluster.snapshot.units["hello.service"].unit_file == HELLO
        assert cluster.snapshot.current_states == {"hello.service": JobState.INACTIVE}
        assert await reg.get_unit("hello.service") == Unit("hello.service", HELLO, JobState.LAUNCHED)
        assert await reg.get_unit("nope.service") is None

        await reg.set_target_state("hello.service", JobState.LOADED)
        assert (await reg.units())["hello.service"].target_state is JobState.LOADED
        assert await reg.destroy_unit("hello.service")
        assert not await reg.destroy_unit("hello.service")
        assert set(await reg.units()) == {"global.service"}
    with_registry(etcd_server, scenario)


def test_schedule_preconditions_and_current_state(etcd_server: harness.Server) -> None:
    async def scenario(reg: Registry) -> None:
        await reg.create_unit(Unit("hello.service", HELLO, JobState.LAUNCHED))
        assert await reg.schedule_unit("hello.service", M1.id)
        assert not await reg.schedule_unit("hello.service", M2.id)  # already scheduled
        assert not await reg.unschedule_unit("hello.service", M2.id)  # not there
        assert (await reg.read()).snapshot.schedule == {"hello.service": M1.id}

        state = UnitState("hello.service", M1.id, HELLO.hash.hex, "loaded", "active", "running")
        await reg.save_unit_state(state, ttl=30)
        assert (await reg.read()).snapshot.current_states["hello.service"] is JobState.LOADED
        await reg.job_heartbeat("hello.service", M1.id, ttl=30)
        assert (await reg.read()).snapshot.current_states["hello.service"] is JobState.LAUNCHED
        await reg.clear_job_heartbeat("hello.service")
        await reg.clear_job_heartbeat("hello.service")  # absent is fine

        assert await reg.unschedule_unit("hello.service", M1.id)
        assert (await reg.read()).snapshot.schedule == {}
    with_registry(etcd_server, scenario)


def test_machine_presence_expires_with_its_ttl(etcd_server: harness.Server) -> None:
    async def scenario(reg: Registry) -> None:
        assert await reg.register_machine(M1, ttl=1)
        assert not await reg.register_machine(M1, ttl=1)  # a second fleetd with the same ID
        await reg.register_machine(M2, ttl=60)
        await reg.set_machine_metadata(M2.id, "disk", "ssd")
        raw = (await reg.client.get(reg.layout.machines_dir(), recursive=True)).node
        assert [m.id for m in read_machines(raw)] == [M1.id, M2.id]
        machines = await reg.machines()
        assert machines[0] == M1 and machines[1].metadata == {"disk": "ssd"}

        async def only_m2() -> bool:
            return [m.id for m in await reg.machines()] == [M2.id]
        await until(only_m2)
        await reg.beat_machine(M1, ttl=30)  # an expired machine comes back on its next beat
        await reg.beat_machine(M1, ttl=30)
        assert [m.id for m in await reg.machines()] == [M1.id, M2.id]
        await reg.remove_machine(M1.id)
        await reg.remove_machine(M1.id)
        assert [m.id for m in await reg.machines()] == [M2.id]
    with_registry(etcd_server, scenario)


def test_unit_states_publish_expire_and_remove(etcd_server: harness.Server) -> None:
    async def scenario(reg: Registry) -> None:
        s1 = UnitState("a.service", M1.id, HELLO.hash.hex, "loaded", "active", "running")
        s2 = UnitState("a.service", M2.id, HELLO.hash.hex, "loaded", "inactive", "dead")
        await reg.save_unit_state(s1, ttl=1)
        await reg.save_unit_state(s2, ttl=60)
        raw = (await reg.client.get(reg.layout.states_dir(), recursive=True)).node
        assert read_unit_states(raw) == [s1, s2]
        assert (await reg.client.get(reg.layout.legacy_unit_state("a.service"))).value is not None

        async def only_s2() -> bool:
            return await reg.unit_states() == [s2]
        await until(only_s2)
        await reg.remove_unit_state("a.service", M2.id)
        assert await reg.unit_states() == []
        await reg.save_unit_state(s1, ttl=60)
        await reg.remove_unit_state("a.service")
        assert await reg.unit_states() == []
    with_registry(etcd_server, scenario)


def test_leader_lease_is_taken_over_after_expiry(etcd_server: harness.Server) -> None:
    async def scenario(reg: Registry) -> None:
        first = EngineLeadership(reg, M1.id, ttl=1)
        second = EngineLeadership(reg, M2.id, ttl=1)
        assert await first.step()
        assert await first.step()  # renewing
        assert not await second.step()
        lease = await reg.get_lease()
        assert lease is not None and lease.machine_id == M1.id

        async def second_leads() -> bool:  # the first engine stops renewing, as if killed
            return await second.step()
        await until(second_leads)
        assert not await first.step()  # its renewal fails: someone else holds the lease
        await second.release()
        assert await reg.get_lease() is None
    with_registry(etcd_server, scenario)


def test_newer_engine_steals_the_lease_and_waits_the_old_ttl(etcd_server: harness.Server) -> None:
    async def scenario(reg: Registry) -> None:
        old = EngineLeadership(reg, M1.id, ttl=30, version=1)
        new = EngineLeadership(reg, M2.id, ttl=30, version=2)
        assert await old.step(now=0.0)
        assert not await new.step(now=1.0)  # holds the lease now, leads once the old TTL ran out
        lease = await reg.get_lease()
        assert lease is not None and (lease.machine_id, lease.lease.version) == (M2.id, 2)
        assert not await old.step(now=2.0)
        assert await new.step(now=40.0)
    with_registry(etcd_server, scenario)


def test_engine_version_is_raised_not_lowered(etcd_server: harness.Server) -> None:
    async def scenario(reg: Registry) -> None:
        assert await reg.engine_version() is None
        assert await reg.ensure_engine_version(1)
        assert (await reg.client.get(reg.layout.engine_version())).value == "1"
        assert await reg.ensure_engine_version(2)
        assert not await reg.ensure_engine_version(1)
        assert await reg.engine_version() == 2
    with_registry(etcd_server, scenario)


def test_watch_reports_job_triggers_and_destroys(etcd_server: harness.Server) -> None:
    async def scenario(reg: Registry) -> None:
        await reg.create_unit(Unit("hello.service", HELLO))
        start = await reg.read()
        events: list[JobEvent] = []

        async def collect() -> None:
            async for event in reg.watch_jobs(start.index + 1):
                events.append(event)
                if event.action == "delete":
                    return
        watcher = asyncio.create_task(collect())
        await reg.job_heartbeat("hello.service", M1.id, ttl=30)  # not a trigger
        await reg.set_target_state("hello.service", JobState.LAUNCHED)
        await reg.schedule_unit("hello.service", M1.id)
        await reg.destroy_unit("hello.service")
        await asyncio.wait_for(watcher, 5)
        assert [(e.name, e.key.rsplit("/", 1)[-1], e.action) for e in events] == [
            ("hello.service", "target-state", "set"), ("hello.service", "target", "create"),
            ("hello.service", "hello.service", "delete")]
    with_registry(etcd_server, scenario)


def test_unreferenced_unit_blobs_are_collected_on_the_second_pass(etcd_server: harness.Server) -> None:
    async def scenario(reg: Registry) -> None:
        await reg.create_unit(Unit("hello.service", HELLO))
        await reg.create_unit(Unit("keep.service", GLOBAL))
        assert await reg.collect_garbage() == []
        await reg.destroy_unit("hello.service")
        assert await reg.collect_garbage() == []  # first sight: only a candidate
        assert await reg.collect_garbage() == [HELLO.hash.hex]
        assert await reg.unit_file(HELLO.hash.hex) is None
        assert await reg.unit_file(GLOBAL.hash.hex) == GLOBAL
        assert set(await reg.units()) == {"keep.service"}
    with_registry(etcd_server, scenario)
