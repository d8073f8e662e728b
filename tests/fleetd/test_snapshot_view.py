"""The engine's incremental copy of the registry (``RegistryView``) on the reference etcd: a view read
once and then fed the watch events and write answers that followed, in any interleaving, equals a view
read afresh and what fleet's readers make of a full read (a property over random change sequences)."""

from __future__ import annotations

import asyncio
import itertools
from dataclasses import dataclass

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fleetd.etcd import EtcdClient, EtcdError, EtcdKeyNotFound, EtcdResult
from fleetd.job import JobState, Unit
from fleetd.machine import MachineState
from fleetd.registry import view as view_module
from fleetd.registry.layout import (
    EtcdOp,
    Layout,
    OpKind,
    encode_machine_object,
    leaf_values,
    read_jobs,
    read_machines,
)
from fleetd.registry.registry import Registry
from fleetd.registry.view import JOBS, MACHINES, SECTIONS, UNPLACED, RegistryView
from fleetd.unit import UnitFile

UNITS = ("a.service", "b.service", "g.service")
FILES = (UnitFile.from_text("[Service]\nExecStart=/bin/true\n"),
         UnitFile.from_text("[Service]\nExecStart=/bin/false\n[X-Fleet]\nGlobal=true\n"))
MACHINE_IDS = ("1" * 32, "2" * 32)
_prefixes = itertools.count()



@dataclass(frozen=True)
class Change:
    """One registry change fleet's processes make: ``kind`` with a unit or machine and a value."""

    kind: str
    target: int
    value: int

    def ops(self, registry: Registry) -> list[EtcdOp]:
        """The writes this change makes (preconditions may fail: that is part of the sequence)."""
        writes, lay = registry.writes, registry.layout
        unit, machine_id = UNITS[self.target % len(UNITS)], MACHINE_IDS[self.target % len(MACHINE_IDS)]
        state = list(JobState)[self.value % 3]
        machine = MachineState(machine_id, "10.0.0.1", {"zone": str(self.value % 2)})
        return {
            "create": lambda: writes.create_unit(Unit(unit, FILES[self.value % 2], state))[1:],
            "target-state": lambda: [writes.set_target_state(unit, state)],
            "schedule": lambda: [writes.schedule_unit(unit, machine_id)],
            "unschedule": lambda: [writes.unschedule_unit(unit, machine_id)],
            "destroy": lambda: [writes.destroy_unit(unit)],
            "heartbeat": lambda: [writes.job_heartbeat(unit, machine_id, 600)],
            "clear-heartbeat": lambda: [writes.clear_job_heartbeat(unit)],
            "register": lambda: [EtcdOp(OpKind.SET, lay.machine_object(machine_id),
                                        encode_machine_object(machine))],
            "leave": lambda: [writes.remove_machine(machine_id)],
            "metadata": lambda: [writes.set_machine_metadata(machine_id, "zone", str(self.value % 3))],
            "forget-machine": lambda: [EtcdOp(OpKind.DELETE, lay.key("machines", machine_id),
                                              recursive=True)],
            "api": lambda: [writes.publish_api(machine_id, f"http://10.0.0.1:{self.value}")],
            "unplaced": lambda: [writes.set_unplaced_reason(unit, f"reason {self.value}")],
            "placed": lambda: [writes.clear_unplaced_reason(unit)],
            "drop-engine": lambda: [EtcdOp(OpKind.DELETE, lay.key("engine"), recursive=True)],
        }[self.kind]()


KINDS = ("create", "create", "target-state", "schedule", "schedule", "unschedule", "destroy", "heartbeat",
         "clear-heartbeat", "register", "register", "leave", "metadata", "forget-machine", "api", "unplaced",
         "placed", "drop-engine")
changes = st.builds(Change, st.sampled_from(KINDS), st.integers(0, 5), st.integers(0, 5))


async def perform(registry: Registry, sequence: list[Change]) -> list[EtcdResult]:
    """Make the changes; the answers of the writes that succeeded."""
    answers = []
    for change in sequence:
        for op in change.ops(registry):
            try:
                result = await registry.apply(op)
            except EtcdError:
                continue  # a failed precondition, a missing key: the registry did not change
            if result is not None:
                answers.append(result)
    return answers


async def events_between(client: EtcdClient, key: str, first: int, last: int) -> list[EtcdResult]:
    """Every event under ``key`` with an index in ``first..last`` (from etcd's history)."""
    events, index = [], first
    while index <= last:
        try:
            event = await asyncio.wait_for(client.watch(key, recursive=True, wait_index=index), 2.0)
        except TimeoutError:
            break
        if event.modified_index > last:
            break
        events.append(event)
        index = event.modified_index + 1
    return events


async def fresh(registry: Registry) -> RegistryView:
    view = RegistryView(registry.layout)
    await registry.read_view(view)
    return view


async def full_read(registry: Registry) -> tuple[list, list, dict]:  # type: ignore[type-arg]
    """What fleet's readers make of a recursive GET of each section."""
    async def node(section: str) -> object:
        try:
            return (await registry.client.get(registry.layout.key(section), recursive=True)).node
        except EtcdKeyNotFound:
            return None
    return (read_jobs(await node(JOBS)), read_machines(await node(MACHINES)),  # type: ignore[arg-type]
            leaf_values(await node(UNPLACED)))  # type: ignore[arg-type]


def assert_same(view: RegistryView, expected: RegistryView, read: tuple[list, list, dict]) -> None:  # type: ignore[type-arg]
    assert view.jobs() == expected.jobs() == read[0]
    assert view.machines() == expected.machines() == read[1]
    assert view.unplaced() == expected.unplaced() == read[2]


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(setup=st.lists(changes, max_size=12), sequence=st.lists(changes, min_size=1, max_size=25),
       data=st.data())
def test_events_and_answers_in_any_order_give_what_a_full_read_gives(
        etcd_url: str, setup: list[Change], sequence: list[Change], data: st.DataObject) -> None:
    """Read the view, make random changes, fold in the watch events of the prefix (in etcd's order) and
    the writes' own answers (anywhere among them, even twice): the view equals a fresh read."""
    async def main() -> None:
        async with EtcdClient([etcd_url]) as client:
            registry = Registry(client, Layout(f"/view{next(_prefixes)}/"))
            await perform(registry, setup)
            view = await fresh(registry)
            start = min(view.index(s) for s in SECTIONS)
            answers = await perform(registry, sequence)
            last = (await client.get("/")).etcd_index
            events = await events_between(client, registry.layout.key(), start + 1, last)
            feed = list(events)
            for answer in answers:
                feed.insert(data.draw(st.integers(0, len(feed)), label="answer position"), answer)
            for change in feed:
                view.apply(change)
            assert not view.stale
            assert_same(view, await fresh(registry), await full_read(registry))
    asyncio.run(main())


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(sequence=st.lists(changes, min_size=1, max_size=25))
def test_a_read_older_than_the_view_is_brought_forward(etcd_url: str, sequence: list[Change]) -> None:
    """The watch ran ahead of a full read (the read was taken before changes the view already has):
    resetting from that older read replays the changes after it, and the view stays current."""
    async def main() -> None:
        async with EtcdClient([etcd_url]) as client:
            registry = Registry(client, Layout(f"/view{next(_prefixes)}/"))
            view = await fresh(registry)
            old = {s: (await client.get(registry.layout.key(s), recursive=True)
                       if await exists(client, registry.layout.key(s)) else None) for s in SECTIONS}
            start = min(view.index(s) for s in SECTIONS)
            await perform(registry, sequence)
            last = (await client.get("/")).etcd_index
            for event in await events_between(client, registry.layout.key(), start + 1, last):
                view.apply(event)
            for section, result in old.items():
                view.reset(section, result.node if result else None, start)
            assert not view.stale
            assert_same(view, await fresh(registry), await full_read(registry))
    asyncio.run(main())


async def exists(client: EtcdClient, key: str) -> bool:
    try:
        await client.get(key)
    except EtcdKeyNotFound:
        return False
    return True


def test_a_read_older_than_the_kept_history_leaves_the_view_stale(etcd_url: str,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """When the changes since an older read are no longer all kept, the view says it must be read."""
    monkeypatch.setattr(view_module, "HISTORY", 3)

    async def main() -> None:
        async with EtcdClient([etcd_url]) as client:
            registry = Registry(client, Layout(f"/view{next(_prefixes)}/"))
            view = await fresh(registry)
            start = view.index(JOBS)
            answers = await perform(registry, [Change("create", i, 1) for i in range(3)])
            for answer in answers:
                view.apply(answer)
            assert not view.stale
            view.reset(JOBS, None, start)
            assert view.stale
            await registry.read_view(view)
            assert not view.stale and [j.name for j in view.jobs()] == sorted(UNITS)
    asyncio.run(main())


def test_only_scheduling_changes_are_reported(etcd_url: str) -> None:
    """``apply`` says True for what can change a decision and False for heartbeats, API addresses, a
    machine rewriting the same object and changes seen twice."""
    async def main() -> None:
        async with EtcdClient([etcd_url]) as client:
            registry = Registry(client, Layout(f"/view{next(_prefixes)}/"))
            view = await fresh(registry)
            lay, writes = registry.layout, registry.writes
            machine = MachineState(MACHINE_IDS[0], "10.0.0.1")
            created = await registry.apply(writes.register_machine(machine, 600))
            beat = await registry.apply(writes.beat_machine(machine, 600))
            api = await registry.apply(writes.publish_api(machine.id, "http://x"))
            unit = await registry.apply(writes.create_unit(Unit("a.service", FILES[0], JobState.LAUNCHED))[1])
            heartbeat = await registry.apply(writes.job_heartbeat("a.service", machine.id, 600))
            target = await registry.apply(EtcdOp(OpKind.SET, lay.job_target("a.service"), machine.id))
            assert created and beat and api and unit and heartbeat and target
            assert [view.apply(r) for r in (created, beat, api, unit, heartbeat, target, target)] == [
                True, False, False, True, False, True, False]
            assert view.jobs()[0].heartbeat == machine.id and view.machines() == [machine]
    asyncio.run(main())
