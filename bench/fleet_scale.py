"""fleetd at scale: many units on many machines, with fastkv and the reference etcd as the registry.

``python -m bench.fleet_scale [--units 1000 --machines 50] [--short] [--registries fastkv,etcd,fastkv3]``

For each registry (fastkv single member, the reference etcd, and a 3-member fastkv cluster) a fresh
registry is started, ``--machines`` machines join it, ``--units`` units are submitted with desired state
``launched`` (as ``fleetctl start`` does: blob, job object, target state), and three figures are taken:

* **launch**: seconds from the first submission until every unit is reported ``active/running`` in the
  registry by the machine it is scheduled to (the registry's unit states, polled every 0.25 s);
* **steady state**: registry requests per second once everything runs and nothing changes, counted at
  the registry (``etcd_http_received_total`` of every member's ``/metrics``, before and after a window);
* **engine reconcile**: how long the engine leader's reconcile rounds take (read, plan, write) -- the
  median of the rounds in steady state and the longest round during the launch.

How the machines run. Every machine is the real fleetd machinery -- its own etcd client (its own
connections), presence heartbeat, agent (watch of ``job/``, reconcile, unit-state publisher, job
heartbeats) and engine taking part in the leader election -- but several machines share one process
(``--processes`` worker processes, the machines spread over them), and units are not real processes: the
agent drives an in-memory runtime (``RecordingRuntime``) that records each unit file and reports the
systemd states a unit whose process starts at once would report. Running 1,000 real processes (or 50
fleetd interpreters) on a small machine would measure fork/exec and interpreter start-up and starve the
registry of CPU; what this benchmark compares is the registry under fleet's traffic, and every request
of that traffic is real. The agent TTL is shorter than fleet's default (``--agent-ttl``, 10 s) so that a
steady-state window spans several republish periods of states and heartbeats.

Results go to ``bench/results/fleet_scale/`` as JSON in the macro suite's format (``bench.macro``:
one entry per figure, fastkv's side against the reference etcd's and their ratio; the 3-member cluster
fills fastkv's side of its own rows). Absolute figures drift between machines and runs; read the ratios.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import json
import math
import multiprocessing
import queue
import statistics
import sys
import tempfile
import time
import urllib.request
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from multiprocessing.synchronize import Event as MpEvent
from pathlib import Path
from typing import Any

from bench import servers
from bench.macro import (
    RESULTS_DIR,
    Mode,
    Workload,
    commit_info,
    format_table,
    machine_info,
    make_server,
    result_document,
    summarize,
)
from fleetd import __version__
from fleetd.agent.loop import Agent, MachinePresence
from fleetd.engine.loop import Engine
from fleetd.engine.plan import EnginePlan
from fleetd.etcd import EtcdClient, EtcdKeyNotFound, EtcdResult
from fleetd.job import JobState, Unit, UnitState
from fleetd.machine import MachineState
from fleetd.registry.layout import Layout, children, decode_unit_state, read_jobs, read_unit_states
from fleetd.registry.registry import Registry
from fleetd.runtime.base import NOT_FOUND, UnitRuntimeError, UnitRuntimeState, UnitStatus
from fleetd.unit import UnitFile

SCALE_RESULTS_DIR = RESULTS_DIR / "fleet_scale"
PREFIX = "/_coreos.com/fleet/"
REGISTRIES = ("fastkv", "etcd", "fastkv3")
#: The side of the result each registry fills, and the suffix of its rows.
SIDES = {"fastkv": ("fastkv", ""), "etcd": ("etcd", ""), "fastkv3": ("fastkv", "_3m")}
UNIT_TEXT = "[Unit]\nDescription=app %i\n[Service]\nExecStart=/bin/sleep 1000\n"
RUNNING = ("active", "running")
KINDS = ("GET", "QGET", "WATCH", "PUT", "DELETE")
#: Seconds between two progress lines during a launch.
PROGRESS_EVERY = 10.0
#: Indexes the launch tracker's watch may fall behind before it reads the registry again.
TRACKER_BACKLOG = 500
#: Seconds between two such reads at least.
TRACKER_READ_EVERY = 1.0

FIGURES: tuple[Workload, ...] = (
    Workload("launch", "fleet", "submit and start U units on M machines until all report active", "s",
             "lower"),
    Workload("submit", "fleet", "submitting U units (3 writes each, 16 at a time)", "s", "lower"),
    Workload("steady_rps", "fleet", "registry requests in steady state", "req/s", "lower"),
    Workload("reconcile_steady", "fleet", "engine reconcile round in steady state (median)", "ms", "lower"),
    Workload("reconcile_launch_max", "fleet", "longest engine reconcile round during the launch", "ms",
             "lower"),
)


@dataclass(frozen=True)
class Scale:
    """What one run does: units, machines, worker processes, agent TTL, steady-state window (s)."""

    units: int
    machines: int
    processes: int
    agent_ttl: float
    window: float
    engine_interval: float = 2.0


SHORT = Scale(units=100, machines=10, processes=2, agent_ttl=6.0, window=6.0)
FULL = Scale(units=1000, machines=50, processes=4, agent_ttl=10.0, window=10.0)


@dataclass
class Measurement:
    """One registry's figures (``None`` where it could not be measured) and notes on the run."""

    registry: str
    figures: dict[str, float | None] = field(default_factory=dict)
    notes: dict[str, Any] = field(default_factory=dict)


# -- pure: the figures from what was observed -------------------------------------------------------

def received_by_method(metrics_text: str) -> dict[str, float]:
    """``etcd_http_received_total`` per ``method`` label in a Prometheus text exposition."""
    counts: dict[str, float] = {}
    for line in metrics_text.splitlines():
        if line.startswith("etcd_http_received_total"):
            series, value = line.rsplit(None, 1)
            method = series.partition('method="')[2].partition('"')[0]
            counts[method] = counts.get(method, 0.0) + float(value)
    return counts


def counts_between(before: Mapping[str, float], after: Mapping[str, float]) -> dict[str, float]:
    """What each counter grew by from ``before`` to ``after`` (a counter new in ``after`` from 0)."""
    return {key: after[key] - before.get(key, 0.0) for key in sorted(after)}


def request_kind(method: str, params: Mapping[str, str], watch: bool) -> str:
    """How a keys request is counted: ``WATCH``, ``QGET`` (quorum read), ``GET``, ``PUT``, ``DELETE``."""
    if watch:
        return "WATCH"
    if method == "GET" and params.get("quorum") == "true":
        return "QGET"
    return method


def launched_count(schedule: Mapping[str, str], states: Iterable[UnitState]) -> int:
    """How many scheduled units their target machine reports ``active/running``."""
    return sum(1 for s in states if schedule.get(s.unit_name) == s.machine_id
               and (s.active_state, s.sub_state) == RUNNING)


Round = tuple[float, float, int]


def reconcile_figures(rounds: Sequence[Round], launched_at: float) -> dict[str, float | None]:
    """From the engine rounds ``(ended at, seconds, tasks)`` (any engine's, on one clock): the median
    of the rounds that ended after ``launched_at`` and did nothing (steady state), and the longest round
    up to ``launched_at``; both in ms, None without such rounds."""
    steady = [d for at, d, tasks in rounds if at > launched_at and tasks == 0]
    launch = [d for at, d, _ in rounds if at <= launched_at]
    return {"reconcile_steady": statistics.median(steady) * 1000 if steady else None,
            "reconcile_launch_max": max(launch) * 1000 if launch else None}


def summaries(measured: Sequence[Measurement]) -> list[dict[str, Any]]:
    """The result's workloads: each figure with fastkv's and etcd's side; the 3-member cluster's rows
    (``<name>_3m``) hold it on fastkv's side against the same etcd figure. A registry not measured
    leaves its side without runs."""
    by_registry = {m.registry: m.figures for m in measured}
    etcd = by_registry.get("etcd", {})
    out = []
    for registry in ("fastkv", "fastkv3"):
        if registry not in by_registry:
            continue
        suffix = SIDES[registry][1]
        for figure in FIGURES:
            runs: dict[str, list[float]] = {}
            for who, values in (("fastkv", by_registry[registry]), ("etcd", etcd)):
                value = values.get(figure.name)
                runs[who] = [] if value is None else [value]
            title = figure.title + (" (fastkv: 3 members)" if suffix else "")
            workload = Workload(figure.name + suffix, figure.group, title, figure.unit, figure.better)
            out.append(summarize(workload, runs, {}))
    return out


def titles_for(scale: Scale, doc: dict[str, Any]) -> dict[str, Any]:
    """``doc`` with U and M in the titles replaced by the run's figures (for the table)."""
    def fill(title: str) -> str:
        return title.replace(" U ", f" {scale.units:,} ").replace(" M ", f" {scale.machines} ")
    return {**doc, "workloads": [{**w, "title": fill(w["title"])} for w in doc["workloads"]]}


# -- the machines --------------------------------------------------------------------------------------

class RecordingRuntime:
    """A unit runtime that runs nothing: it records unit files and reports the states of a service whose
    process starts at once (``loaded/inactive/dead`` once loaded, ``loaded/active/running`` once started).
    The operations keep the runtime contract's errors (``fleetd.runtime.base``)."""

    tracks_containers = True

    def __init__(self) -> None:
        self.files: dict[str, UnitFile] = {}
        self.active: set[str] = set()

    async def load(self, name: str, unit: UnitFile) -> None:
        self.files[name] = unit

    async def unload(self, name: str) -> None:
        self.files.pop(name, None)
        self.active.discard(name)

    async def start(self, name: str) -> None:
        self._known(name)
        self.active.add(name)

    async def stop(self, name: str) -> None:
        self._known(name)
        self.active.discard(name)

    def _known(self, name: str) -> None:
        if name not in self.files:
            raise UnitRuntimeError(f"Unit {name} not loaded.")

    async def reload_daemon(self) -> None:
        return None

    def _state(self, name: str) -> UnitRuntimeState:
        if name not in self.files:
            return NOT_FOUND
        return UnitRuntimeState("loaded", *RUNNING) if name in self.active else UnitRuntimeState(
            "loaded", "inactive", "dead")

    async def states(self, names: Iterable[str] | None = None) -> dict[str, UnitRuntimeState]:
        return {name: self._state(name) for name in (self.files if names is None else names)}

    async def units(self) -> Mapping[str, str]:
        return {name: unit.hash.hex for name, unit in self.files.items()}

    async def status(self, name: str) -> UnitStatus | None:
        return UnitStatus(name, self._state(name)) if name in self.files else None

    async def journal(self, name: str, lines: int = 10, follow: bool = False) -> AsyncIterator[str]:
        """No unit ever writes a line."""
        nothing: tuple[str, ...] = ()
        for line in nothing:
            yield line

    async def close(self) -> None:
        return None


class CountingClient(EtcdClient):
    """fleetd's etcd client, counting every keys request it sends by ``request_kind``."""

    def __post_init__(self) -> None:
        super().__post_init__()
        self.counts: dict[str, int] = dict.fromkeys(KINDS, 0)

    async def _keys(self, method: str, key: str, params: Mapping[str, str], *, repeatable: bool = True,
                    watch: bool = False, timeout: float | None = None) -> EtcdResult:
        self.counts[request_kind(method, params, watch)] += 1
        return await super()._keys(method, key, params, repeatable=repeatable, watch=watch, timeout=timeout)


class TimedEngine(Engine):
    """The engine, recording each reconcile round as ``(ended at, seconds, tasks)`` on the wall clock
    (comparable between processes)."""

    rounds: list[Round]

    async def reconcile(self) -> EnginePlan:
        started = time.perf_counter()
        plan = await super().reconcile()
        self.rounds.append((time.time(), time.perf_counter() - started, len(plan.tasks)))
        return plan


def machine_id(index: int) -> str:
    return f"{index + 1:032x}"


async def _run_machines(indexes: Sequence[int], urls: Sequence[str], scale: Scale, state_dir: Path,
                        stop: MpEvent, counted: Any) -> list[Round]:
    """Run the machines ``indexes`` until ``stop`` is set, keeping ``counted`` (a shared array, one
    slot per ``KINDS``) at the requests their clients sent; the engine rounds they recorded."""
    layout = Layout(PREFIX)
    clients: list[CountingClient] = []
    tasks, engines, agents = [], [], []
    for index in indexes:
        client = CountingClient(list(urls))
        registry = Registry(client, layout)
        machine = MachineState(machine_id(index), "127.0.0.1", {"index": str(index)},
                               {"DISABLE_ENGINE": False, "GRPC": False}, __version__)
        presence = MachinePresence(registry, machine, scale.agent_ttl, state_dir / f"{machine.id}.json")
        agent = Agent(registry, RecordingRuntime(), machine, ttl=scale.agent_ttl)
        engine = TimedEngine(registry, machine.id, interval=scale.engine_interval)
        engine.rounds = []
        await presence.register()
        await agent.start()
        agents.append(agent)
        tasks += [asyncio.create_task(presence.run()), asyncio.create_task(engine.run())]
        clients.append(client)
        engines.append(engine)
    while not stop.is_set():
        await asyncio.sleep(0.2)
        counted[:] = [sum(c.counts[kind] for c in clients) for kind in KINDS]
    for task in tasks:
        task.cancel()
    stopping = asyncio.gather(*tasks, *(agent.stop() for agent in agents), return_exceptions=True)
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stopping, 30)
    for client in clients:
        await client.close()
    return [r for engine in engines for r in engine.rounds]


def worker(indexes: list[int], urls: list[str], scale: Scale, state_dir: str, stop: MpEvent,
           counted: Any, results: multiprocessing.Queue[Any]) -> None:
    """A worker process: runs its machines, then puts their engine rounds on ``results``."""
    rounds = asyncio.run(_run_machines(indexes, urls, scale, Path(state_dir), stop, counted))
    results.put(rounds)


# -- one registry -------------------------------------------------------------------------------------

def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def start_registry(registry: str, tmp: Path) -> list[servers.Server]:
    """The registry's servers, started: one fastkv or etcd (as the macro suite starts them), or three
    fastkv members of one cluster."""
    tmp.mkdir(parents=True, exist_ok=True)
    if registry != "fastkv3":
        return [make_server(registry, "fastkv", tmp, registry).start(60)]
    return servers.start_all(servers.cluster("fastkv", tmp, 3), 60)


def worker_rounds(results: multiprocessing.Queue[Any], workers: int, timeout: float = 120.0) -> list[Round]:
    """The engine rounds the workers report once stopped; a worker that does not report within
    ``timeout`` seconds is left out (and said so)."""
    rounds: list[Round] = []
    for _ in range(workers):
        try:
            rounds += results.get(timeout=timeout)
        except queue.Empty:
            log(f"  a worker did not report its engine rounds within {timeout:.0f}s; left out")
            break
    return rounds


def requests_received(members: Sequence[servers.Server]) -> dict[str, float]:
    """``etcd_http_received_total`` by method, summed over the members."""
    total: dict[str, float] = {}
    for server in members:
        with urllib.request.urlopen(server.url + "/metrics", timeout=10) as response:
            for method, count in received_by_method(response.read().decode()).items():
                total[method] = total.get(method, 0.0) + count
    return total


async def _poll(what: str, check: Any, timeout: float, period: float) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = await check()
        if result:
            return result
        await asyncio.sleep(period)
    raise RuntimeError(f"timed out after {timeout:.0f}s waiting for {what}")


class LaunchTracker:
    """Where units are scheduled (``job/<name>/target``) and the states their machines published
    (``states/<name>/<machine>``): a read of the prefix, then every event of a watch of it."""

    def __init__(self, layout: Layout) -> None:
        self.layout = layout
        self.schedule: dict[str, str] = {}
        self.states: dict[tuple[str, str], UnitState] = {}

    def reset(self, jobs_node: Mapping[str, Any] | None, states_node: Mapping[str, Any] | None) -> None:
        """Start over from recursive reads of ``job/`` and ``states/`` (None when absent)."""
        jobs = read_jobs(jobs_node)
        self.schedule = {j.name: j.target_machine_id for j in jobs if j.target_machine_id}
        self.states = {(s.unit_name, s.machine_id): s for s in read_unit_states(states_node)}

    def apply(self, event: EtcdResult) -> None:
        """Fold in one watch event (a ``get`` is a re-read of the prefix)."""
        if event.action == "get":
            parts = dict(children(event.node))
            self.reset(parts.get("job"), parts.get("states"))
            return
        parts = self.layout.relative(event.key)
        deleted = event.action in ("delete", "expire", "compareAndDelete")
        if parts[:1] == ["job"] and (len(parts) == 2 or (len(parts) == 3 and parts[2] == "target")):
            if deleted:
                self.schedule.pop(parts[1], None)
            elif len(parts) == 3:
                self.schedule[parts[1]] = event.value or ""
        elif parts[:1] == ["states"] and len(parts) == 3:
            if deleted:
                self.states.pop((parts[1], parts[2]), None)
            else:
                self.states[(parts[1], parts[2])] = decode_unit_state(event.value or "", parts[1], parts[2])
        elif parts[:1] == ["states"] and len(parts) == 2 and deleted:
            self.states = {k: v for k, v in self.states.items() if k[0] != parts[1]}

    def launched(self) -> int:
        return launched_count(self.schedule, self.states.values())


async def _track(client: EtcdClient, tracker: LaunchTracker) -> None:
    """Keep ``tracker`` current until cancelled: reads of ``job/`` and ``states/``, then a watch of the
    prefix; once the watch falls more than ``TRACKER_BACKLOG`` indexes behind, the two are read again
    (at most once every ``TRACKER_READ_EVERY`` seconds) rather than walking every change."""
    last_read = -math.inf
    while True:
        await asyncio.sleep(max(0.0, last_read + TRACKER_READ_EVERY - time.monotonic()))
        last_read = time.monotonic()
        jobs = await _read_dir(client, tracker.layout.key("job"))
        states = await _read_dir(client, tracker.layout.key("states"))
        tracker.reset(jobs.node, states.node)
        events = client.watch_forever(tracker.layout.key(), recursive=True,
                                      wait_index=min(jobs.etcd_index, states.etcd_index) + 1)
        async with contextlib.aclosing(events):
            async for event in events:
                tracker.apply(event)
                if event.etcd_index - event.modified_index > TRACKER_BACKLOG:
                    break


async def _read_dir(client: EtcdClient, key: str) -> EtcdResult:
    """A quorum recursive read of ``key``; an empty answer (no node) at the current index if absent."""
    try:
        return await client.get(key, recursive=True, quorum=True)
    except EtcdKeyNotFound as err:
        return EtcdResult("get", None, etcd_index=err.index)


async def _launch(urls: Sequence[str], scale: Scale) -> dict[str, Any]:
    """Wait for the machines, submit the units, wait until all run; the times and the placement.
    The launch is followed through a watch of the registry (one request per change), not by polling
    reads of the whole registry, which would load the registry being measured."""
    async with EtcdClient(list(urls), request_timeout=30) as client:
        registry = Registry(client, Layout(PREFIX))

        async def machines_up() -> bool:
            return len(await registry.machines()) == scale.machines
        await _poll("the machines to register", machines_up, 120, 0.25)
        template = UnitFile.from_text(UNIT_TEXT)
        names = [f"app@{i}.service" for i in range(scale.units)]
        tracker = LaunchTracker(registry.layout)
        tracking = asyncio.create_task(_track(client, tracker))
        started = time.monotonic()
        queue = list(reversed(names))

        async def submitter() -> None:
            while queue:
                await registry.create_unit(Unit(queue.pop(), template, JobState.LAUNCHED))
        await asyncio.gather(*(submitter() for _ in range(16)))
        submitted = time.monotonic()

        scheduled: list[float] = []

        progress = [time.monotonic()]

        async def all_running() -> bool:
            if tracking.done():
                tracking.result()  # the watch failed: say why
            now = time.monotonic()
            if len(tracker.schedule) == scale.units and not scheduled:
                scheduled.append(now)
            launched = tracker.launched()
            if now - progress[-1] >= PROGRESS_EVERY:
                progress.append(now)
                log(f"    after {now - started:.0f}s: {len(tracker.schedule)} scheduled, {launched} running")
            return launched == scale.units
        await _poll("every unit to run", all_running, 600, 0.05)
        launched = time.monotonic()
        launched_wall = time.time()
        tracking.cancel()
        snapshot = (await registry.read()).snapshot
    per_machine = [list(snapshot.schedule.values()).count(m.id) for m in snapshot.machines]
    return {"submit": submitted - started, "launch": launched - started, "launched_wall": launched_wall,
            "scheduled": (scheduled or [launched])[0] - started,
            "units_per_machine": [min(per_machine, default=0), max(per_machine, default=0)]}


def measure(registry: str, scale: Scale, tmp: Path) -> Measurement:
    """One registry: start it and the machines, launch, count steady-state requests, stop everything."""
    members = start_registry(registry, tmp / registry)
    urls = [s.url for s in members]
    context = multiprocessing.get_context("spawn")
    stop = context.Event()
    results: multiprocessing.Queue[Any] = context.Queue()
    state_dir = tmp / registry / "machines"
    state_dir.mkdir(parents=True, exist_ok=True)
    groups = [list(range(p, scale.machines, scale.processes)) for p in range(scale.processes)]
    groups = [g for g in groups if g]
    counters = [context.Array("d", len(KINDS)) for _ in groups]
    workers = [context.Process(target=worker, args=(g, urls, scale, str(state_dir), stop, counted, results),
                               daemon=True) for g, counted in zip(groups, counters, strict=True)]

    def sent() -> dict[str, float]:
        return {kind: sum(c[i] for c in counters) for i, kind in enumerate(KINDS)}
    try:
        for process in workers:
            process.start()
        launch = asyncio.run(_launch(urls, scale))
        log(f"  {registry}: submitted in {launch['submit']:.1f}s, all {scale.units} scheduled after "
            f"{launch['scheduled']:.1f}s and running after {launch['launch']:.1f}s (units per machine "
            f"{launch['units_per_machine']})")
        time.sleep(2.0)  # let the last publishes and heartbeats of the launch settle
        before, received_before, t0 = sent(), requests_received(members), time.monotonic()
        time.sleep(scale.window)
        by_kind = counts_between(before, sent())
        received = counts_between(received_before, requests_received(members))
        elapsed = time.monotonic() - t0
        rate = sum(by_kind.values()) / elapsed
        per_kind = {kind: round(count / elapsed, 1) for kind, count in by_kind.items()}
        per_method = {method: round(count / elapsed, 1) for method, count in received.items()}
        log(f"  {registry}: {rate:,.0f} registry requests/s in steady state {per_kind}; counted by the "
            f"registry (etcd_http_received_total): {per_method}")
        stop.set()
        rounds = worker_rounds(results, len(workers))
    finally:
        stop.set()
        for process in workers:
            process.join(10)
            if process.is_alive():
                process.kill()
        servers.stop_all(members)
    figures: dict[str, float | None] = {"launch": launch["launch"], "submit": launch["submit"],
                                        "steady_rps": rate}
    figures.update(reconcile_figures(rounds, launch["launched_wall"]))
    return Measurement(registry, figures, {"units_per_machine": launch["units_per_machine"],
                                           "scheduled_after_s": round(launch["scheduled"], 2),
                                           "engine_rounds": len(rounds), "steady_rps_by_kind": per_kind,
                                           "steady_rps_received_by_registry": per_method})


# -- command line -------------------------------------------------------------------------------------

def parse_registries(text: str) -> list[str]:
    chosen = [r.strip() for r in text.split(",") if r.strip()]
    unknown = sorted(set(chosen) - set(REGISTRIES))
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown registr{'ies' if len(unknown) > 1 else 'y'} "
                                         f"{', '.join(unknown)}; known: {', '.join(REGISTRIES)}")
    return chosen


def scale_from(args: argparse.Namespace) -> Scale:
    base = SHORT if args.short else FULL
    return Scale(args.units or base.units, args.machines or base.machines, args.processes or base.processes,
                 args.agent_ttl or base.agent_ttl, args.window or base.window)


def run(scale: Scale, registries: Sequence[str], short: bool,
        results_dir: Path) -> tuple[dict[str, Any], Path]:
    """Measure every registry in turn, write the JSON result and return it with its path."""
    started = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    commit = commit_info()
    measured = []
    with tempfile.TemporaryDirectory(prefix="fleet-scale-") as tmp:
        for registry in registries:
            log(f"{registry}: {scale.units} units on {scale.machines} machines, {scale.processes} processes")
            measured.append(measure(registry, scale, Path(tmp)))
    mode = Mode("fleet-short" if short else "fleet-full", runs=1, duration_s=scale.window, keys=scale.units,
                memory_runs=0)
    settings = {**asdict(scale), "registries": list(registries), "runtime": "recording (in memory)",
                "notes": {m.registry: m.notes for m in measured}}
    doc = result_document(mode, settings, summaries(measured), commit, machine_info(), started)
    results_dir.mkdir(parents=True, exist_ok=True)
    path = results_dir / f"{started.replace(':', '')}-{mode.name}-{str(commit['sha'])[:8]}.json"
    path.write_text(json.dumps(doc, indent=1) + "\n")
    return doc, path


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--short", action="store_true", help=f"{SHORT.units} units on {SHORT.machines} machines")
    p.add_argument("--units", type=int)
    p.add_argument("--machines", type=int)
    p.add_argument("--processes", type=int, help="worker processes the machines are spread over")
    p.add_argument("--agent-ttl", type=float, help="seconds (machine, unit state and heartbeat TTL)")
    p.add_argument("--window", type=float, help="seconds of steady state counted")
    p.add_argument("--registries", type=parse_registries, default=list(REGISTRIES),
                   help=f"of {','.join(REGISTRIES)}")
    p.add_argument("--results-dir", type=Path, default=SCALE_RESULTS_DIR)
    args = p.parse_args(argv)
    scale = scale_from(args)
    doc, path = run(scale, args.registries, args.short, args.results_dir)
    print(format_table(titles_for(scale, doc)))
    print(f"\nresult: {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
