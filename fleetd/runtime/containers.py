"""Docker containers started by units: labelled, reported, stopped and garbage-collected with them.

The convention (docs/docker.md). Every process of a unit gets three variables from the runtime:

* ``FLEET_UNIT`` -- the unit's name (``web@1.service``);
* ``FLEET_MACHINE_ID`` -- this machine's ID;
* ``FLEET_DOCKER_LABELS`` -- ``--label fleet.unit=<unit> --label fleet.machine=<machine ID>``.

A unit hands its container to fleetd by writing ``$FLEET_DOCKER_LABELS`` (a word of its own, so that
it splits into four arguments) in its ``docker run`` command::

    ExecStart=/usr/bin/docker run --rm --name web-%i $FLEET_DOCKER_LABELS busybox:local httpd -f

``ContainerTracking`` wraps any unit runtime and, through the Docker SDK, keeps the labelled
containers in step with their units:

* ``status`` lists each container of the unit (short ID, name, state, image) in ``containers``;
  ``journal`` adds the logs of containers whose output does not already reach the unit (detached
  ``docker run -d``), in journal format;
* ``stop`` and ``unload`` stop the unit's containers while the runtime stops the unit (so a container
  that ignores SIGTERM does not hold the stop for TimeoutStopSec) and remove them afterwards; ``start``
  first removes what an earlier run left (``docker run --name`` would otherwise conflict);
* every ``RECONCILE_INTERVAL`` seconds, and once at ``adopt`` (fleetd's start, also after a crash),
  containers of this machine are matched against the units' states (``container_verdict``): a
  container of an unknown, inactive or restarting unit, a running container of a failed unit, and
  every running container of an active unit but its newest are removed. No orphans, no duplicates.

The Docker engine may be missing or down: then nothing is tracked, ``status`` says why in
``containers``, and every other operation goes on as the wrapped runtime does it. The unit itself
fails on its own (``docker run`` exits with an error that its journal shows).

``DockerEngine`` (the SDK in worker threads), ``Container``, ``ContainerSpec`` and
``container_verdict`` also serve ``fleetd.runtime.docker``, the runtime that runs each unit as one
container itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

from fleetd.runtime.base import UnitRuntime, UnitRuntimeState, UnitStatus
from fleetd.runtime.journal import format_entry
from fleetd.unit import UnitFile

log = logging.getLogger("fleetd.containers")

UNIT_LABEL = "fleet.unit"
MACHINE_LABEL = "fleet.machine"
#: Seconds between two garbage collections of this machine's containers.
RECONCILE_INTERVAL = 2.0
#: Seconds a container gets between SIGTERM and SIGKILL when its unit stops.
STOP_TIMEOUT = 10
#: Active states in which a unit's running container is wanted.
ALIVE_STATES = frozenset({"active", "activating", "deactivating", "reloading"})


def unit_environment(unit: str, machine_id: str) -> dict[str, str]:
    """The variables a runtime exports to every process of ``unit`` (see the module docstring)."""
    labels = f"--label {UNIT_LABEL}={unit} --label {MACHINE_LABEL}={machine_id}"
    return {"FLEET_UNIT": unit, "FLEET_MACHINE_ID": machine_id, "FLEET_DOCKER_LABELS": labels}


def container_labels(unit: str, machine_id: str) -> dict[str, str]:
    """The labels a container of ``unit`` on ``machine_id`` carries."""
    return {UNIT_LABEL: unit, MACHINE_LABEL: machine_id}


class DockerError(Exception):
    """An operation on the Docker engine failed; ``str()`` says why."""


class DockerUnavailable(DockerError):
    """The Docker engine cannot be reached (or the SDK is missing); ``str()`` says why."""


class DockerRequestError(DockerError):
    """The engine answered with an error (no such image, a name already in use, a port taken...);
    ``str()`` is the engine's explanation."""


@dataclass(frozen=True, slots=True)
class Container:
    """What fleetd knows of one labelled container."""

    id: str
    name: str
    unit: str
    state: str
    image: str
    created: str
    exit_code: int = 0
    error: str = ""
    attached: bool = True
    pid: int = 0
    oom_killed: bool = False

    @property
    def running(self) -> bool:
        return self.state in ("running", "restarting", "paused")

    def describe(self) -> str:
        """One line for ``fleetctl status``: ``3f2a1b9c0d1e web-1 running (busybox:local)``."""
        state = self.state
        if self.state == "exited":
            state = f"exited ({self.exit_code})"
        why = f": {self.error}" if self.error else ""
        return f"{self.id[:12]} {self.name} {state} ({self.image}){why}"

    @staticmethod
    def from_inspect(data: Mapping[str, Any]) -> Container:
        """From the engine's container JSON (``docker inspect``)."""
        config, state = data.get("Config") or {}, data.get("State") or {}
        labels = config.get("Labels") or {}
        return Container(id=data.get("Id", ""), name=str(data.get("Name", "")).lstrip("/"),
                         unit=labels.get(UNIT_LABEL, ""), state=state.get("Status", ""),
                         image=config.get("Image", ""), created=data.get("Created", ""),
                         exit_code=int(state.get("ExitCode") or 0), error=state.get("Error") or "",
                         attached=bool(config.get("AttachStdout") or config.get("AttachStderr")),
                         pid=int(state.get("Pid") or 0), oom_killed=bool(state.get("OOMKilled")))


@dataclass(frozen=True)
class ContainerSpec:
    """A container to create, as ``docker run`` options say it (``fleetd.runtime.docker`` parses them).

    ``environment``: ``NAME=value`` strings; ``ports``: container port (``80``, ``53/udp``) -> host
    binding (``None`` for a free port, ``8080``, or ``("127.0.0.1", 8080)``); ``binds``: ``-v`` values
    with a source (``/host:/ctr:ro``, ``volume:/ctr``); ``volumes``: anonymous volumes (``/ctr``);
    ``entrypoint`` None keeps the image's; ``network`` ``""`` is the default bridge."""

    image: str
    command: tuple[str, ...] = ()
    name: str | None = None
    environment: tuple[str, ...] = ()
    ports: Mapping[str, Any] = field(default_factory=dict)
    binds: tuple[str, ...] = ()
    volumes: tuple[str, ...] = ()
    labels: Mapping[str, str] = field(default_factory=dict)
    working_dir: str | None = None
    user: str | None = None
    entrypoint: tuple[str, ...] | None = None
    hostname: str | None = None
    network: str = ""
    init: bool = False


def container_verdict(containers: Iterable[Container],
                      states: Mapping[str, UnitRuntimeState]) -> list[Container]:
    """The containers to remove, given the runtime's state of each unit (missing = not loaded).

    Removed: containers of units not loaded, inactive or waiting to restart; running containers of
    failed units (an exited one stays for ``status`` until the unit is stopped or started again);
    running containers of a live unit other than its newest (one container per unit).
    """
    doomed: list[Container] = []
    newest: dict[str, Container] = {}
    for container in containers:
        state = states.get(container.unit)
        if state is None or state.load_state == "not-found" or state.active_state == "inactive" \
                or state.sub_state == "auto-restart":
            doomed.append(container)
        elif state.active_state == "failed":
            if container.running:
                doomed.append(container)
        elif container.running:
            previous = newest.get(container.unit)
            if previous is None or container.created > previous.created:
                newest[container.unit] = container
                if previous is not None:
                    doomed.append(previous)
            else:
                doomed.append(container)
    return doomed


class DockerEngine:
    """The Docker engine through the Docker SDK. Blocking SDK calls run in worker threads; the client
    connects lazily (``DOCKER_HOST`` or the default socket) and reconnects after an error. Every
    method raises ``DockerUnavailable`` when the engine cannot be reached; the ones that create or
    change a container raise ``DockerRequestError`` with the engine's explanation when it refuses.
    Operations on a container that is gone (404, or 409 while it is being removed) do nothing."""

    def __init__(self, base_url: str | None = None, timeout: float = 10.0) -> None:
        self.base_url = base_url
        self.timeout = timeout
        self._client: Any = None
        self._lock = threading.Lock()

    def _connect(self) -> Any:
        with self._lock:
            if self._client is None:
                try:
                    import docker  # type: ignore[import-untyped]  # optional: only needed with an engine
                except ImportError as err:
                    raise DockerUnavailable(f"the Docker SDK is not installed ({err})") from None
                try:
                    if self.base_url:
                        self._client = docker.DockerClient(base_url=self.base_url, timeout=int(self.timeout))
                    else:
                        self._client = docker.from_env(timeout=int(self.timeout))
                except docker.errors.DockerException as err:
                    raise DockerUnavailable(f"Docker engine unavailable: {err}") from None
            return self._client

    def _run(self, action: str, fn: Any, *args: Any, missing_ok: bool = True, **kwargs: Any) -> Any:
        """``fn(client, ...)`` in this thread, errors classified (see the class docstring)."""
        client = self._connect()
        try:
            return fn(client, *args, **kwargs)
        except Exception as err:
            if missing_ok and _is_not_found(err):
                return None
            if getattr(err, "response", None) is not None and getattr(err, "status_code", None):
                raise DockerRequestError(_explanation(err)) from None
            with self._lock:
                self._client = None
            raise DockerUnavailable(f"Docker engine unavailable ({action}): {_short(err)}") from None

    async def _call(self, action: str, fn: Any, *args: Any, missing_ok: bool = True, **kwargs: Any) -> Any:
        """``_run`` in a worker thread."""
        return await asyncio.to_thread(self._run, action, fn, *args, missing_ok=missing_ok, **kwargs)

    async def containers(self, machine_id: str, unit: str | None = None) -> list[Container]:
        """Every container (running or not) labelled for ``machine_id`` (and ``unit``), oldest first."""
        labels = [f"{MACHINE_LABEL}={machine_id}"] + ([f"{UNIT_LABEL}={unit}"] if unit else [])

        def listing(client: Any) -> list[Container]:
            found = []
            for item in client.api.containers(all=True, filters={"label": labels}):
                try:
                    found.append(Container.from_inspect(client.api.inspect_container(item["Id"])))
                except Exception as err:  # gone between listing and inspecting
                    if not _is_not_found(err):
                        raise
            return sorted(found, key=lambda c: c.created)
        result: list[Container] = await self._call("list containers", listing)
        return result

    async def inspect(self, ref: str) -> Container | None:
        """The container with this ID or name, None when there is none."""
        data = await self._call("inspect container", lambda cl: cl.api.inspect_container(ref))
        return None if data is None else Container.from_inspect(data)

    async def has_image(self, image: str) -> bool:
        """Whether ``image`` is present locally."""
        return await self._call("inspect image", lambda cl: cl.api.inspect_image(image)) is not None

    async def pull(self, image: str) -> None:
        """Pull ``image`` (``name[:tag]``, ``latest`` when no tag) from its registry."""
        repository, tag = _split_image(image)
        await self._call("pull image", lambda cl: cl.api.pull(repository, tag=tag), missing_ok=False)

    async def create(self, spec: ContainerSpec) -> Container:
        """Create (not start) the container ``spec`` describes; its state is ``created``."""
        def create(client: Any) -> Container:
            host_config = client.api.create_host_config(
                port_bindings=dict(spec.ports) or None, binds=list(spec.binds) or None,
                network_mode=spec.network or None, init=spec.init or None)
            created = client.api.create_container(
                spec.image, command=list(spec.command) or None, name=spec.name, hostname=spec.hostname,
                user=spec.user, detach=True, ports=list(spec.ports) or None,
                environment=list(spec.environment) or None, volumes=list(spec.volumes) or None,
                entrypoint=list(spec.entrypoint) if spec.entrypoint is not None else None,
                working_dir=spec.working_dir, labels=dict(spec.labels), host_config=host_config)
            return Container.from_inspect(client.api.inspect_container(created["Id"]))
        result: Container = await self._call("create container", create, missing_ok=False)
        return result

    async def start(self, ref: str) -> None:
        """Start the created (or exited) container ``ref``."""
        await self._call("start container", lambda cl: cl.api.start(ref), missing_ok=False)

    async def kill(self, ref: str, signal: str | int | None = None) -> None:
        """Send ``signal`` (SIGKILL by default) to the running container ``ref``."""
        await self._call("kill container", lambda cl: cl.api.kill(ref, signal=signal), missing_ok=False)

    async def stop(self, containers: Iterable[Container], timeout: int = STOP_TIMEOUT) -> None:
        """SIGTERM the running ones, SIGKILL after ``timeout`` seconds; returns when they are down."""
        running = [c for c in containers if c.running]
        await asyncio.gather(*(self.stop_one(c.id, timeout) for c in running))

    async def stop_one(self, ref: str, timeout: int = STOP_TIMEOUT) -> None:
        """Stop the container ``ref`` (ID or name) as ``stop`` does; a stopped or missing one is fine."""
        await self._call("stop container",
                         lambda cl: cl.api.stop(ref, timeout=timeout))

    async def remove(self, containers: Iterable[Container]) -> None:
        """Remove (killing first when running) each container; already gone ones are fine."""
        await asyncio.gather(*(self.remove_one(c.id) for c in containers))

    async def remove_one(self, ref: str, force: bool = True) -> None:
        """Remove the container ``ref`` (ID or name); ``force`` kills it first when it runs."""
        await self._call("remove container", lambda cl: cl.api.remove_container(ref, force=force),
                         missing_ok=True)

    async def log_lines(self, ref: str, *, tail: int | str = "all", follow: bool = False,
                        since: float | None = None) -> AsyncIterator[tuple[str, str]]:
        """The container's output as ``(RFC 3339 time stamp, line)`` pairs: the last ``tail`` lines
        (those since ``since``, a Unix time, when given), then with ``follow`` new ones until the
        container stops. Raises ``DockerError`` when the engine fails (lines read so far are yielded)."""
        queue: asyncio.Queue[tuple[str, str] | BaseException | None] = asyncio.Queue()
        loop = asyncio.get_running_loop()
        stream: list[Any] = []

        def pump() -> None:
            try:
                output = self._run("read logs", lambda cl: cl.api.logs(
                    ref, stream=True, follow=follow, tail=tail, timestamps=True,
                    since=since if since is not None else None))
                if output is None:
                    return
                stream.append(output)
                pending = b""
                for chunk in output:
                    pending += chunk
                    *complete, pending = pending.split(b"\n")
                    for raw in complete:
                        loop.call_soon_threadsafe(queue.put_nowait, _split_stamp(raw))
                if pending:
                    loop.call_soon_threadsafe(queue.put_nowait, _split_stamp(pending))
            except DockerError as err:
                loop.call_soon_threadsafe(queue.put_nowait, err)
            except Exception as err:  # the stream broke (the engine went away)
                if not _is_not_found(err):
                    failure = DockerUnavailable(f"Docker logs unavailable: {_short(err)}")
                    loop.call_soon_threadsafe(queue.put_nowait, failure)
            finally:
                loop.call_soon_threadsafe(queue.put_nowait, None)

        worker = threading.Thread(target=pump, name=f"logs-{ref[:12]}", daemon=True)
        worker.start()
        try:
            while (item := await queue.get()) is not None:
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            for output in stream:
                with contextlib.suppress(Exception):
                    output.close()

    async def logs(self, container: Container, lines: int, follow: bool, hostname: str) -> AsyncIterator[str]:
        """The container's last ``lines`` output lines as journal entries, then (``follow``) new ones;
        an engine failure ends them with an entry that says so."""
        ident = f"{container.name}[{container.id[:12]}]"
        try:
            async for stamp, message in self.log_lines(container.id, tail=lines, follow=follow):
                yield format_entry(stamp_seconds(stamp) or time.time(), hostname, ident, None, message)
        except DockerError as err:
            yield format_entry(time.time(), hostname, "fleetd", os.getpid(),
                               f"Docker logs of {container.name} unavailable: {err}")


def _is_not_found(err: BaseException) -> bool:
    """The container is gone (404), or already being removed (409): nothing left to do."""
    return type(err).__name__ in ("NotFound", "ImageNotFound") \
        or getattr(err, "status_code", None) in (404, 409)


def _short(err: BaseException) -> str:
    text = str(err).strip() or type(err).__name__
    return text.splitlines()[0][:300]


def _explanation(err: BaseException) -> str:
    """The engine's own words for a refused request (``No such image: x``)."""
    explanation = getattr(err, "explanation", None)
    return _short(err) if not explanation else str(explanation).strip().splitlines()[0][:300]


def _split_image(image: str) -> tuple[str, str]:
    """``name[:tag]`` -> (name, tag); ``latest`` when there is no tag (a ``:`` in a registry's host:port
    is not a tag)."""
    name, sep, tag = image.rpartition(":")
    if not sep or "/" in tag:
        return image, "latest"
    return name, tag


def _split_stamp(raw: bytes) -> tuple[str, str]:
    """``docker logs --timestamps`` line -> (RFC 3339 stamp, text)."""
    text = raw.decode(errors="replace").rstrip("\r")
    stamp, _, message = text.partition(" ")
    if stamp_seconds(stamp) is None:
        return "", text
    return stamp, message


def stamp_seconds(stamp: str) -> float | None:
    """Unix time of a Docker RFC 3339 time stamp (``2024-05-01T10:00:00.123456789Z``); None if not one."""
    key = stamp_key(stamp)
    return None if key is None else key[0] + key[1] / 1e9


def stamp_key(stamp: str) -> tuple[int, int] | None:
    """(seconds, nanoseconds) of a Docker RFC 3339 time stamp, exact, for ordering; None if not one."""
    whole, _, fraction = stamp.rstrip("Z").partition(".")
    try:
        seconds = datetime.fromisoformat(whole + "+00:00").timestamp()
        nanos = int((fraction + "000000000")[:9]) if fraction else 0
    except ValueError:
        return None
    return int(seconds), nanos


class ContainerTracking:
    """A ``UnitRuntime`` that runs units through ``inner`` and keeps their containers in step (see the
    module docstring). ``adopt()`` adopts through ``inner`` (when it can) and starts the garbage
    collection; ``close()`` stops it. Containers are left running on ``close``, as units are."""

    def __init__(self, inner: UnitRuntime, machine_id: str, engine: DockerEngine | None = None, *,
                 hostname: str | None = None, interval: float = RECONCILE_INTERVAL) -> None:
        self.inner = inner
        self.machine_id = machine_id
        self.engine = engine or DockerEngine()
        self.hostname = hostname or socket.gethostname()
        self.interval = interval
        self._task: asyncio.Task[None] | None = None
        self._engine_error = ""

    # -- the runtime interface ---------------------------------------------------------------------

    async def load(self, name: str, unit: UnitFile) -> None:
        """As ``inner``; starts the garbage collection if it is not running."""
        self._ensure_collector()
        await self.inner.load(name, unit)

    async def unload(self, name: str) -> None:
        """Stop the unit and its containers together, forget the unit, remove its containers."""
        await self._with_containers_stopped(name, self.inner.unload(name))

    async def start(self, name: str) -> None:
        """Remove what an earlier run of the unit left behind, then start it through ``inner``."""
        self._ensure_collector()
        state = (await self.inner.states([name]))[name]
        if state.active_state not in ALIVE_STATES:
            await self._remove(await self._containers(name))
        await self.inner.start(name)

    async def stop(self, name: str) -> None:
        """Stop the unit and its containers together, then remove the containers."""
        await self._with_containers_stopped(name, self.inner.stop(name))

    async def reload_daemon(self) -> None:
        """As ``inner``."""
        await self.inner.reload_daemon()

    async def states(self, names: Iterable[str] | None = None) -> dict[str, UnitRuntimeState]:
        """As ``inner``."""
        return await self.inner.states(names)

    async def units(self) -> Mapping[str, str]:
        """As ``inner``."""
        return await self.inner.units()

    async def status(self, name: str) -> UnitStatus | None:
        """``inner``'s status with one ``containers`` line per container (or why there are none)."""
        status = await self.inner.status(name)
        if status is None:
            return None
        try:
            lines = tuple(c.describe() for c in await self.engine.containers(self.machine_id, name))
        except DockerError as err:
            lines = (str(err),)
        return replace(status, containers=status.containers + lines)

    async def journal(self, name: str, lines: int = 10, follow: bool = False) -> AsyncIterator[str]:
        """``inner``'s journal, then the logs of the unit's detached containers; with ``follow``, new
        lines of both as they come."""
        try:
            detached = [c for c in await self.engine.containers(self.machine_id, name) if not c.attached]
        except DockerError:
            detached = []
        sources = [self.inner.journal(name, lines, follow)]
        sources += [self.engine.logs(c, lines, follow, self.hostname) for c in detached]
        if not follow:
            for source in sources:
                async for line in source:
                    yield line
            return
        async for line in _merge(sources):
            yield line

    async def close(self) -> None:
        """Stop the garbage collection and close ``inner``; units and containers keep running."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        await self.inner.close()

    # -- extras -------------------------------------------------------------------------------------

    async def adopt(self) -> list[str]:
        """Adopt through ``inner`` (if it can), then remove containers no unit accounts for."""
        adopt = getattr(self.inner, "adopt", None)
        adopted: list[str] = await adopt() if adopt is not None else []
        await self.collect()
        self._ensure_collector()
        return adopted

    async def collect(self) -> list[Container]:
        """One garbage collection (``container_verdict``); returns what was removed."""
        try:
            containers = await self.engine.containers(self.machine_id)
        except DockerError as err:
            self._engine_down(str(err))
            return []
        self._engine_up()
        if not containers:
            return []
        states = await self.inner.states(sorted({c.unit for c in containers}))
        doomed = container_verdict(containers, states)
        for container in doomed:
            log.info("Removing container %s (%s) of Unit(%s): unit is %s", container.name, container.id[:12],
                     container.unit, states.get(container.unit, "not loaded"))
        await self._remove(doomed)
        return doomed

    def __getattr__(self, name: str) -> Any:
        """Extras of ``inner`` (``wait_for``, ``reload``, ...) pass through."""
        if name == "inner":
            raise AttributeError(name)
        return getattr(self.inner, name)

    # -- internals ----------------------------------------------------------------------------------

    async def _containers(self, name: str) -> list[Container]:
        try:
            return await self.engine.containers(self.machine_id, name)
        except DockerError as err:
            self._engine_down(str(err))
            return []

    async def _remove(self, containers: list[Container]) -> None:
        if containers:
            try:
                await self.engine.remove(containers)
            except DockerError as err:
                self._engine_down(str(err))

    async def _with_containers_stopped(self, name: str, operation: Awaitable[None]) -> None:
        """Run ``operation`` (a stop) while stopping the unit's containers, then remove them."""
        task = asyncio.ensure_future(operation)
        await asyncio.sleep(0)  # the runtime records the stop request before the containers go
        containers = await self._containers(name)
        try:
            await self.engine.stop(containers)
        except DockerError as err:
            self._engine_down(str(err))
        await task
        await self._remove(await self._containers(name))

    def _ensure_collector(self) -> None:
        if self._task is None or self._task.done():
            self._task = asyncio.ensure_future(self._collect_forever())

    async def _collect_forever(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            try:
                await self.collect()
            except Exception:  # never let one bad round end the collection
                log.exception("Container garbage collection failed")

    def _engine_down(self, reason: str) -> None:
        if reason != self._engine_error:
            log.warning("%s; containers of units are not tracked until it is back", reason)
            self._engine_error = reason

    def _engine_up(self) -> None:
        if self._engine_error:
            log.info("Docker engine reachable again")
            self._engine_error = ""


async def _merge(sources: list[AsyncIterator[str]]) -> AsyncIterator[str]:
    """Lines of every source as they come, until all end (or the consumer stops)."""
    queue: asyncio.Queue[str | None] = asyncio.Queue()

    async def drain(source: AsyncIterator[str]) -> None:
        try:
            async for line in source:
                await queue.put(line)
        finally:
            await queue.put(None)

    tasks = [asyncio.ensure_future(drain(s)) for s in sources]
    try:
        remaining = len(tasks)
        while remaining:
            line = await queue.get()
            if line is None:
                remaining -= 1
            else:
                yield line
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def track_containers(runtime: UnitRuntime, machine_id: str) -> ContainerTracking:
    """``runtime`` with its units' containers tracked on the default Docker engine."""
    return ContainerTracking(runtime, machine_id)
