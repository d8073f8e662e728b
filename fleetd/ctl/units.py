"""``submit``, ``load``, ``start``, ``stop``, ``unload``, ``destroy`` and ``restart`` (spec 1.2).

Waiting ("blocking"): each attempt polls ``GET /units/NAME`` every 250 ms for about 2 s;
``--block-attempts=0`` waits forever. Unlike fleet, a ``start`` that waits for a unit nobody can run
says why (the engine's placement reason), and the wait for the unit to become active uses the same
budget instead of a fixed 2 s window.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from typing import Any

from fleetd.ctl.client import ClientError, FleetClient
from fleetd.ctl.command import Context
from fleetd.ctl.output import machine_legend
from fleetd.unit import (
    Requirements,
    UnitFile,
    UnitNameError,
    UnitNameInfo,
    UnitOptionsError,
    UnitParseError,
    serialize,
    unit_name_from_path,
    unrecognized_requirements_warnings,
    validate_name,
    validate_options,
)

POLL_SECONDS = 0.25
POLLS_PER_ATTEMPT = 8
DEPRECATED_SIGN = "WARNING: The signed/verified units feature is DEPRECATED and cannot be used."
#: Desired states a unit may be in to be replaced by each command (fleet's rule).
REPLACEABLE = {"submit": ("inactive",), "load": ("inactive", "loaded"),
               "start": ("inactive", "loaded", "launched"), "restart": ("inactive", "loaded", "launched")}


def is_global(unit: dict[str, Any]) -> bool:
    """True for a unit whose ``[X-Fleet] Global`` is truthy (last value wins)."""
    return Requirements.of(UnitFile.from_api(unit.get("options", []))).is_global


def unit_hash(unit: dict[str, Any]) -> str:
    """SHA-1 of the unit's serialized options."""
    return UnitFile.from_api(unit.get("options", [])).hash.hex


def _options_text(unit: dict[str, Any]) -> str:
    return serialize(UnitFile.from_api(unit.get("options", [])).options)


# ---------------------------------------------------------------------------------------------------
# Creating units from files


class CreateError(Exception):
    """``Error creating units: <message>``."""


def _read_unit_file(path: str) -> UnitFile:
    try:
        with open(path, encoding="utf-8") as handle:
            return UnitFile.from_text(handle.read())
    except OSError as err:
        raise CreateError(f"failed reading unit file {path}: {err.strerror}") from None
    except UnitParseError as err:
        raise CreateError(f"failed creating unit from file {path}: {err}") from None


async def _contents(client: FleetClient, arg: str, name: str) -> UnitFile:
    """The unit file for a new unit: the local file, else the template (registry, then next to ``arg``)."""
    if os.path.isfile(arg):
        return _read_unit_file(arg)
    info = UnitNameInfo.parse(name)
    if info is not None and info.is_instance:
        template = await client.unit(info.template)
        if template is not None:
            return UnitFile.from_api(template.get("options", []))
        local = os.path.join(os.path.dirname(arg), info.template)
        if os.path.isfile(local):
            return _read_unit_file(local)
    raise CreateError(f"unable to find Unit({name}) in Registry or on filesystem")


async def lazy_create(ctx: Context, args: list[str], command: str) -> list[str] | None:
    """Create the units named by ``args`` that do not exist yet (fleet's lazyCreateUnits).

    Returns every unit name in argument order, or None after printing an error (exit 1).
    """
    names, created = [], []
    replace = bool(ctx.options.get("replace"))
    for arg in args:
        name = unit_name_from_path(arg)
        names.append(name)
        try:
            existing = await ctx.client.unit(name)
            if existing is not None:
                await _maybe_replace(ctx, arg, name, existing, command, replace)
                continue
            unit_file = await _contents(ctx.client, arg, name)
            validate_name(name)
            validate_options(unit_file)
        except (CreateError, UnitNameError, UnitOptionsError, ClientError) as err:
            ctx.stderr(f"Error creating units: {err}")
            return None
        for warning in unrecognized_requirements_warnings(name, unit_file):
            ctx.stderr(f"WARNING: {warning}")
        try:
            await ctx.client.create_unit(name, unit_file.to_api())
        except ClientError as err:
            ctx.stderr(f"Error creating units: {err}")
            return None
        created.append(name)
    if created and not await wait_for(ctx, created, "inactive", _report_state):
        return None
    return names


async def _maybe_replace(ctx: Context, arg: str, name: str, existing: dict[str, Any], command: str,
                         replace: bool) -> None:
    """fleet's rules for a unit that exists when a local file is given too."""
    if not os.path.isfile(arg):
        return
    local = _read_unit_file(arg)
    if local.hash.hex == unit_hash(existing):
        if replace:
            ctx.stdout(f"Found same Unit({name}) in Registry, nothing to do")
        return
    if not replace:
        ctx.stderr(f"WARNING: Unit {name} in registry differs from local unit file {arg}. "
                   "Add --replace to override.")
        return
    state = existing.get("desiredState", "")
    if state not in REPLACEABLE[command]:
        ctx.stderr(f"Warning: can not replace Unit({name}) in state '{state}', use the appropriate command")
        return
    validate_options(local)
    await ctx.client.create_unit(name, local.to_api())


# ---------------------------------------------------------------------------------------------------
# Waiting


Reporter = Callable[[Context, dict[str, Any], str, dict[str, dict[str, Any]]], None]


def _report_state(ctx: Context, unit: dict[str, Any], state: str,
                  machines: dict[str, dict[str, Any]]) -> None:
    message = f"Unit {unit['name']} {state}"
    machine = machines.get(unit.get("machineID", ""))
    if state != "inactive" and machine is not None:
        message += f" on {machine_legend(machine, False)}"
    ctx.stdout(message)


def _reached(unit: dict[str, Any] | None, state: str) -> bool:
    if unit is None:
        return False
    if is_global(unit):
        return unit.get("desiredState") == state
    return unit.get("currentState", "inactive") == state


def attempts_of(ctx: Context) -> int:
    """``--block-attempts``, never negative (0 = forever)."""
    return max(0, int(ctx.options.get("block-attempts") or 0))


async def wait_for(ctx: Context, names: list[str], state: str, report: Reporter | None) -> bool:
    """Wait until every unit reports ``state`` (global units: desires it); False after printing a timeout."""
    machines: dict[str, dict[str, Any]] = {}
    results = await asyncio.gather(*(_wait_one(ctx, name, state, report, machines) for name in names))
    return all(results)


async def _wait_one(ctx: Context, name: str, state: str, report: Reporter | None,
                    machines: dict[str, dict[str, Any]]) -> bool:
    attempts = attempts_of(ctx)
    said = ""
    polls = 0
    while attempts == 0 or polls < attempts * POLLS_PER_ATTEMPT:
        unit = await ctx.client.unit(name)
        if unit is not None and _reached(unit, state):
            if report is not None:
                if unit.get("machineID") and unit["machineID"] not in machines:
                    machines.update({m["id"]: m for m in await ctx.client.machines()})
                report(ctx, unit, state, machines)
            return True
        if state == "launched" and unit is not None and not unit.get("machineID") and not is_global(unit):
            said = await _say_why(ctx, name, said, polls)
        polls += 1
        await asyncio.sleep(POLL_SECONDS)
    ctx.stderr(f"Error waiting for units: timed out waiting for unit {name} to report state {state}")
    return False


async def _say_why(ctx: Context, name: str, said: str, polls: int) -> str:
    """Tell (once per reason) why a unit is not placed yet; returns what was said."""
    reason = await ctx.client.placement_reason(name)
    if reason:
        message = f"Unit {name} cannot be placed yet: {reason}"
    elif polls == POLLS_PER_ATTEMPT:
        message = f"Unit {name} is waiting for the engine to place it on a machine"
    else:
        return said
    if message != said:
        ctx.stderr(message)
    return message


async def wait_active(ctx: Context, name: str) -> bool:
    """After ``launched``: wait until the unit's machine reports it ``loaded``/``active``."""
    attempts = attempts_of(ctx)
    polls = 0
    last: dict[str, Any] | None = None
    while attempts == 0 or polls < attempts * POLLS_PER_ATTEMPT:
        last = await ctx.client.unit_state(name)
        if last and last.get("systemdLoadState") == "loaded" and last.get("systemdActiveState") == "active":
            return True
        if last and last.get("systemdActiveState") == "failed":
            break
        polls += 1
        await asyncio.sleep(POLL_SECONDS)
    seen = "no state published" if not last else "/".join(
        str(last.get(k, "")) for k in ("systemdLoadState", "systemdActiveState", "systemdSubState"))
    ctx.stderr(f"Error waiting for units: Failed to find an active unit {name}, last state: {seen}")
    return False


# ---------------------------------------------------------------------------------------------------
# Commands


def _deprecated_sign(ctx: Context) -> bool:
    if ctx.options.get("sign"):
        ctx.stderr(DEPRECATED_SIGN)
        return True
    return False


async def submit(ctx: Context, args: list[str]) -> int:
    """Upload unit files; they stay ``inactive``."""
    if _deprecated_sign(ctx):
        return 2
    if not args:
        ctx.stderr("No units given")
        return 0
    return 0 if await lazy_create(ctx, args, "submit") is not None else 1


async def _set_and_wait(ctx: Context, args: list[str], command: str, state: str, verb: str) -> int:
    """Shared by load and start: create, set the desired state, then wait (unless ``--no-block``)."""
    if _deprecated_sign(ctx):
        return 2
    names = await lazy_create(ctx, args, command)
    if names is None:
        return 1
    units: dict[str, dict[str, Any]] = {}
    try:
        for name in names:
            unit = await ctx.client.unit(name)
            if unit is None:
                continue
            units[name] = unit
            if unit.get("desiredState") != state:
                await ctx.client.set_desired_state(name, state)
    except ClientError as err:
        ctx.stderr(f"Error {verb}ing units: {err}")
        return 1
    return await _after_set(ctx, units, state, verb)


async def _after_set(ctx: Context, units: dict[str, dict[str, Any]], state: str, verb: str) -> int:
    plain = [n for n, u in units.items() if not is_global(u)]
    for name, unit in units.items():
        if is_global(unit):
            ctx.stdout(f"Triggered global unit {name} {verb}")
        elif ctx.options.get("no-block"):
            ctx.stdout(f"Triggered unit {name} {verb}")
    if ctx.options.get("no-block") or not plain:
        return 0
    if not await wait_for(ctx, plain, state, _report_state):
        return 1
    if state == "launched":
        results = await asyncio.gather(*(wait_active(ctx, n) for n in plain))
        return 0 if all(results) else 1
    return 0


async def load(ctx: Context, args: list[str]) -> int:
    """Schedule units on machines and load them, without starting them."""
    return await _set_and_wait(ctx, args, "load", "loaded", "load")


async def start(ctx: Context, args: list[str]) -> int:
    """Schedule and start units."""
    return await _set_and_wait(ctx, args, "start", "launched", "start")


async def _matching(ctx: Context, args: list[str]) -> list[dict[str, Any]] | None:
    """The existing units named by ``args`` (from one ``GET /units``), None if there is none."""
    wanted = {unit_name_from_path(a) for a in args}
    found = [u for u in await ctx.client.units() if u.get("name") in wanted]
    if not found:
        ctx.stderr("Units not found in registry")
        return None
    return found


async def _step_down(ctx: Context, args: list[str], skip: tuple[str, ...], target: str, verb: str,
                     done: str) -> int:
    """Shared by stop and unload: move launched/loaded units down to ``target`` and wait."""
    try:
        units = await _matching(ctx, args)
        if units is None:
            return 0
        code, changed = 0, {}
        for unit in units:
            name, current = unit["name"], unit.get("currentState", "inactive")
            if not is_global(unit) and current in skip:
                if current == "inactive" and verb == "stop":
                    ctx.stderr(f"Unable to {verb} unit {name} in state inactive")
                    code = 1
                continue
            await ctx.client.set_desired_state(name, target)
            changed[name] = unit
    except ClientError as err:
        ctx.stderr(f"Error {verb}ping units: {err}" if verb == "stop" else f"Error {verb}ing units: {err}")
        return 1
    if await _after_set(ctx, changed, target, verb) != 0:
        return 1
    plain = [n for n, u in changed.items() if not is_global(u)]
    if plain and not ctx.options.get("no-block"):
        ctx.stderr(f"Successfully {done} units [{' '.join(plain)}].")
    return code


async def stop(ctx: Context, args: list[str]) -> int:
    """Stop launched units; they stay loaded."""
    return await _step_down(ctx, args, ("inactive", "loaded"), "loaded", "stop", "stopped")


async def unload(ctx: Context, args: list[str]) -> int:
    """Unload units from their machines; they stay submitted."""
    return await _step_down(ctx, args, ("inactive",), "inactive", "unload", "unloaded")


async def destroy(ctx: Context, args: list[str]) -> int:
    """Remove units from the cluster; waits until they are gone unless ``--no-block``."""
    destroyed = []
    try:
        for arg in args:
            name = unit_name_from_path(arg)
            if await ctx.client.destroy_unit(name):
                destroyed.append(name)
                ctx.stdout(f"Destroyed {name}")
    except ClientError as err:
        ctx.stderr(f"Error destroying units: {err}")
        return 1
    if not destroyed:
        ctx.stderr("Units not found in registry")
        return 0
    if ctx.options.get("no-block"):
        return 0
    return 0 if all(await asyncio.gather(*(_wait_gone(ctx, n) for n in destroyed))) else 1


async def _wait_gone(ctx: Context, name: str) -> bool:
    attempts = attempts_of(ctx)
    polls = 0
    while attempts == 0 or polls < attempts * POLLS_PER_ATTEMPT:
        if await ctx.client.unit(name) is None:
            return True
        polls += 1
        await asyncio.sleep(POLL_SECONDS)
    ctx.stderr(f"Error waiting for units: timed out waiting for unit {name} to be destroyed")
    return False


async def restart(ctx: Context, args: list[str]) -> int:
    """Stop and start units again (global units: on every machine running them)."""
    names = await lazy_create(ctx, args, "restart")
    if names is None:
        return 1
    code = 0
    try:
        for name in names:
            unit = await ctx.client.unit(name)
            if unit is None:
                continue
            if is_global(unit):
                code |= await _restart_global(ctx, name)
                continue
            current = unit.get("currentState", "inactive")
            if current == "inactive":
                ctx.stderr(f"Unable to restart unit {name} in state inactive")
                continue
            if current == "launched":
                await ctx.client.set_desired_state(name, "loaded")
                if not await wait_for(ctx, [name], "loaded", _report_state):
                    return 1
            await ctx.client.set_desired_state(name, "launched")
            if not await wait_for(ctx, [name], "launched", _report_state) or not await wait_active(ctx, name):
                return 1
    except ClientError as err:
        ctx.stderr(f"Error restarting units: {err}")
        return 1
    return code


async def _restart_global(ctx: Context, name: str) -> int:
    """Stop a global unit everywhere (until no machine reports it active), then launch it again."""
    await ctx.client.set_desired_state(name, "loaded")
    attempts, polls = attempts_of(ctx), 0
    while attempts == 0 or polls < attempts * POLLS_PER_ATTEMPT:
        states = [s for s in await ctx.client.unit_states() if s.get("name") == name]
        if all(s.get("systemdActiveState") != "active" for s in states):
            break
        polls += 1
        await asyncio.sleep(POLL_SECONDS)
    await ctx.client.set_desired_state(name, "launched")
    ctx.stdout(f"Triggered global unit {name} restart")
    return 0


def options_text(unit: dict[str, Any]) -> str:
    """What ``fleetctl cat`` prints: the serialized unit."""
    return _options_text(unit)
