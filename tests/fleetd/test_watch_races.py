"""The agent's view of ``job/`` converges to the registry whatever order reads and events come in, and
its loops outlive unexpected errors: an agent on the reference etcd with an in-memory runtime."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from typing import TypeVar

import pytest

from fleetd import backoff
from fleetd.agent import loop as agent_loop
from fleetd.agent import plan as agent_plan
from fleetd.agent.loop import Agent, JobView
from fleetd.etcd import EtcdClient
from fleetd.job import JobState, Unit
from fleetd.machine import MachineState
from fleetd.registry.layout import JobRecord, Layout
from fleetd.registry.registry import JobEvent, Registry
from fleetd.runtime.base import NOT_FOUND, UnitRuntimeState, UnitStatus
from fleetd.unit import UnitFile

T = TypeVar("T")
ME = MachineState("a" * 32, "127.0.0.1")
HELLO = UnitFile.from_text("[Service]\nExecStart=/bin/sleep 1000\n")
DISCOVERY = UnitFile.from_text("[Service]\nExecStart=/bin/sleep 1001\n[X-Fleet]\nMachineOf=hello.service\n")


class MemoryRuntime:
    """A runtime that only remembers what it was told; ``broken`` maps an operation to errors it
    raises (one per call) before it works again."""

    def __init__(self) -> None:
        self.files: dict[str, UnitFile] = {}
        self.running: set[str] = set()
        self.broken: dict[str, list[Exception]] = {}
        self.calls: list[str] = []

    def _call(self, what: str) -> None:
        self.calls.append(what)
        errors = self.broken.get(what)
        if errors:
            raise errors.pop(0)

    async def load(self, name: str, unit: UnitFile) -> None:
        self._call("load")
        self.files[name] = unit

    async def unload(self, name: str) -> None:
        self._call("unload")
        self.files.pop(name, None)
        self.running.discard(name)

    async def start(self, name: str) -> None:
        self._call("start")
        self.running.add(name)

    async def stop(self, name: str) -> None:
        self._call("stop")
        self.running.discard(name)

    async def reload_daemon(self) -> None:
        self._call("reload")

    async def states(self, names: Iterable[str] | None = None) -> dict[str, UnitRuntimeState]:
        self._call("states")
        wanted = list(self.files) if names is None else list(names)
        return {n: NOT_FOUND if n not in self.files else UnitRuntimeState(
            "loaded", *(("active", "running") if n in self.running else ("inactive", "dead")))
            for n in wanted}

    async def units(self) -> dict[str, str]:
        return {name: unit.hash.hex for name, unit in self.files.items()}

    async def status(self, name: str) -> UnitStatus | None:
        return None

    async def journal(self, name: str, lines: int = 10, follow: bool = False) -> AsyncIterator[str]:
        nothing: tuple[str, ...] = ()
        for line in nothing:
            yield str(line)

    async def close(self) -> None:
        return None



Body = Callable[[Agent, Registry, 'MemoryRuntime'], Awaitable[T]]


def with_agent(etcd_url: str, prefix: str, body: Body[T]) -> T:
    """Run ``body`` with an agent for ``ME`` (loops not started) on a fresh registry under ``prefix``."""
    async def main() -> T:
        async with EtcdClient([etcd_url]) as client:
            registry = Registry(client, Layout(prefix))
            runtime = MemoryRuntime()
            agent = Agent(registry, runtime, ME, ttl=30)  # type: ignore[arg-type]
            try:
                return await body(agent, registry, runtime)
            finally:
                await agent.stop()
    return asyncio.run(main())


async def submit_here(registry: Registry, *units: tuple[str, UnitFile]) -> None:
    for name, unit_file in units:
        await registry.create_unit(Unit(name, unit_file, JobState.LAUNCHED))
        assert await registry.schedule_unit(name, ME.id)


def test_a_missed_destroy_is_caught_by_the_periodic_round(etcd_url: str) -> None:
    """Both units destroyed while their events never reach the view (as when an event is lost): an
    event-driven round acts on the view, the periodic round reads the registry and unloads them."""
    async def body(agent: Agent, registry: Registry, runtime: MemoryRuntime) -> None:
        await submit_here(registry, ("hello.service", HELLO), ("discovery.service", DISCOVERY))
        await agent.reconcile_round(periodic=True)
        assert runtime.running == {"hello.service", "discovery.service"}
        for name in ("hello.service", "discovery.service"):
            assert await registry.destroy_unit(name)
        await agent.reconcile_round(periodic=False)  # the view still has them: nothing to do
        assert runtime.running == {"hello.service", "discovery.service"}
        await agent.reconcile_round(periodic=True)
        assert runtime.files == {} and runtime.running == set()
        assert await registry.unit_states() == []
    with_agent(etcd_url, "/missed/", body)


def test_destroy_racing_the_state_publisher_is_applied(etcd_url: str) -> None:
    """Destroying two units at once while the watch, the reconcile and the state publisher run: every
    repetition ends with nothing loaded and no state published, through the watch alone."""
    async def body(agent: Agent, registry: Registry, runtime: MemoryRuntime) -> None:
        await agent.start()
        for _ in range(15):
            await submit_here(registry, ("hello.service", HELLO), ("discovery.service", DISCOVERY))
            await until(lambda: runtime.running == {"hello.service", "discovery.service"})
            await until(lambda: len(agent._published) == 2)
            await asyncio.gather(*(registry.destroy_unit(n) for n in ("hello.service", "discovery.service")),
                                 agent.publish())
            await until(lambda: not runtime.files and not agent._published)
            assert await registry.unit_states() == []
    with_agent(etcd_url, "/race/", body)


def test_concurrent_publishes_withdraw_a_state_once(etcd_url: str) -> None:
    """Two publishes at once (the publish loop and a reconcile's) after an unload both see the state to
    withdraw; neither fails."""
    async def body(agent: Agent, registry: Registry, runtime: MemoryRuntime) -> None:
        await submit_here(registry, ("hello.service", HELLO))
        await agent.reconcile_round(periodic=True)
        assert "hello.service" in agent._published
        assert await registry.destroy_unit("hello.service")
        await agent.execute(agent_plan.purge_plan(agent.current))  # as a reconcile unloads it
        await asyncio.gather(agent.publish(), agent.publish())
        assert agent._published == {} and await registry.unit_states() == []
    with_agent(etcd_url, "/publish/", body)


def test_loops_survive_unexpected_runtime_errors(etcd_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """A runtime raising errors that are not ``UnitRuntimeError`` (a bug) in ``states`` and ``start``:
    the failures are logged, and the publish and reconcile loops go on and get the unit running."""
    monkeypatch.setattr(backoff, "DEFAULT_BOUNDS", (0.01, 0.01))
    monkeypatch.setattr(agent_loop, "STATE_POLL_INTERVAL", 0.01)
    monkeypatch.setattr(agent_loop, "RECONCILE_INTERVAL", 0.05)

    async def body(agent: Agent, registry: Registry, runtime: MemoryRuntime) -> None:
        runtime.broken = {"states": [KeyError("states"), RuntimeError("states")],
                          "start": [ValueError("start")]}
        await submit_here(registry, ("hello.service", HELLO))
        await agent.start()
        await until(lambda: runtime.running == {"hello.service"} and "hello.service" in agent._published)
        assert runtime.broken == {"states": [], "start": []}
        assert all(not task.done() for task in agent._tasks)
    with_agent(etcd_url, "/survive/", body)


async def until(check: Callable[[], bool], timeout: float = 20.0) -> None:
    """Wait (bounded) until ``check()`` holds, yielding to the agent's loops meanwhile."""
    async with asyncio.timeout(timeout):
        while not check():
            await asyncio.sleep(0.01)


# ---------------------------------------------------------------------------------------------------
# The view's bookkeeping (pure)


def _record(name: str, target: str = "") -> JobRecord:
    return JobRecord(name, HELLO.hash, JobState.LAUNCHED, target)


def _event(name: str, leaf: str, action: str, index: int, value: str = "") -> JobEvent:
    key = f"/p/job/{name}" + (f"/{leaf}" if leaf else "")
    return JobEvent(name, key, action, index, value)


def _never_global(name: str) -> bool:
    return False


def test_a_read_older_than_the_view_is_ignored() -> None:
    view = JobView(ME.id)
    assert not view.reset([_record("a.service", ME.id)], 10)
    assert view.apply(_event("a.service", "", "delete", 12), _never_global)
    assert not view.reset([_record("a.service", ME.id)], 11)  # read before the delete: stale
    assert view.jobs == {} and view.index == 12
    assert view.reset([_record("b.service")], 13)  # newer and different: taken, reported
    assert list(view.jobs) == ["b.service"]


def test_events_a_newer_read_reflects_are_ignored() -> None:
    view = JobView(ME.id)
    view.reset([], 20)
    assert not view.apply(_event("a.service", "object", "set", 19, '{"Name":"a.service"}'), _never_global)
    assert view.jobs == {}
    assert view.apply(_event("a.service", "target", "set", 21, ME.id), _never_global) is False
    assert view.index == 21


def test_rereading_an_unchanged_registry_reports_no_difference() -> None:
    view = JobView(ME.id)
    records: Iterable[JobRecord] = [_record("a.service", ME.id)]
    view.reset(records, 5)
    assert not view.reset(records, 6)

