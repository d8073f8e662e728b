"""``cat``, ``status`` and ``journal``.

``status`` and ``journal`` ask the fleetd API of the machine running the unit (the URLs it published
in the registry) instead of running ``systemctl``/``journalctl`` over SSH, so they work from any host
that reaches the machines' APIs, whatever runtime runs the units.
"""

from __future__ import annotations

import json
import time
from typing import Any
from urllib.parse import quote, urlencode

from fleetd.ctl.client import ClientError, HttpEndpoint, HttpTransport
from fleetd.ctl.command import Context
from fleetd.ctl.units import is_global, options_text
from fleetd.unit import unit_name_from_path


async def cat(ctx: Context, args: list[str]) -> int:
    """Print a unit's serialized file."""
    if len(args) != 1:
        ctx.stderr("One unit file must be provided")
        return 1
    name = unit_name_from_path(args[0])
    try:
        unit = await ctx.client.unit(name)
    except ClientError as err:
        ctx.stderr(f"Error retrieving Unit {name}: {err}")
        return 1
    if unit is None:
        ctx.stderr(f"Unit {name} not found")
        return 1
    ctx.out.write(options_text(unit))
    ctx.out.flush()
    return 0


async def _machine_transport(ctx: Context, machine_id: str) -> HttpTransport:
    urls = await ctx.client.api_urls(machine_id)
    if not urls:
        raise ClientError(f"machine {machine_id} published no API address")
    errors = []
    for url in urls:
        transport = HttpTransport(HttpEndpoint.parse(await ctx.reach(url)),
                                  float(ctx.options.get("request-timeout") or 3.0))
        try:
            await transport("GET", "/fleet/v1/discovery", "", b"")
        except ClientError as err:
            errors.append(str(err))
            continue
        return transport
    raise ClientError(f"cannot reach the API of machine {machine_id}: {'; '.join(errors)}")


async def _machines_of(ctx: Context, name: str, command: str) -> list[str] | None:
    """The machines to ask about ``name``; None after printing why there is none."""
    unit = await ctx.client.unit(name)
    if unit is None:
        ctx.stderr(f"Unit {name} does not exist.")
        return None
    if is_global(unit):
        if command == "journal":
            ctx.stderr(f"Unable to get journal of global unit {name}: it runs on several machines.")
            return None
        return sorted({s["machineID"] for s in await ctx.client.unit_states() if s.get("name") == name})
    if unit.get("currentState", "inactive") == "inactive" or not unit.get("machineID"):
        ctx.stderr(f"Unit {name} does not appear to be loaded.")
        return None
    return [unit["machineID"]]


def format_status(status: dict[str, Any], journal: list[str]) -> str:
    """The unit's status in ``systemctl status`` style, followed by its last journal lines."""
    name, description = status.get("name", ""), status.get("description", "")
    active, sub = status.get("activeState", ""), status.get("subState", "")
    lines = [f"● {name}" + (f" - {description}" if description else "")]
    loaded = status.get("loadState", "")
    reason = f" (Reason: {status['loadError']})" if status.get("loadError") else ""
    lines.append(f"   Loaded: {loaded}{reason}")
    since = float(status.get("since") or 0)
    when = ""
    if since:
        ago = max(0, int(time.time() - since))
        when = f" since {time.strftime('%a %Y-%m-%d %H:%M:%S %Z', time.localtime(since))}; {ago}s ago"
    result = status.get("result", "")
    failure = f" (Result: {result})" if active == "failed" and result else ""
    lines.append(f"   Active: {active}{failure} ({sub}){when}")
    if status.get("mainPID"):
        exited = f" ({status['exit']})" if status.get("exit") else ""
        lines.append(f" Main PID: {status['mainPID']}{exited}")
    elif status.get("exit"):
        lines.append(f"  Process: {status['exit']}")
    if status.get("statusText"):
        lines.append(f'   Status: "{status["statusText"]}"')
    lines.extend(f"Container: {container}" for container in status.get("containers") or ())
    lines.append(f"  Machine: {status.get('machineID', '')}")
    text = "\n".join(lines) + "\n"
    if journal:
        text += "\n" + "".join(line if line.endswith("\n") else line + "\n" for line in journal)
    return text


async def _fetch(transport: HttpTransport, path: str, query: str = "") -> bytes:
    answer = await transport("GET", path, query, b"")
    if answer.status != 200:
        try:
            message = json.loads(answer.body)["error"]["message"]
        except (ValueError, KeyError, TypeError):
            message = answer.body.decode("utf-8", "replace")
        raise ClientError(f"googleapi: Error {answer.status}: {message}", answer.status)
    return answer.body


async def status(ctx: Context, args: list[str]) -> int:
    """Show each unit's status as its machine's runtime reports it."""
    for arg in args:
        name = unit_name_from_path(arg)
        try:
            machines = await _machines_of(ctx, name, "status")
            if machines is None:
                return 1
            for machine_id in machines:
                transport = await _machine_transport(ctx, machine_id)
                base = f"/fleet/v1/ext/units/{quote(name, safe='')}"
                detail = json.loads(await _fetch(transport, base + "/status"))
                journal = (await _fetch(transport, base + "/journal", "lines=10")).decode("utf-8", "replace")
                ctx.out.write(format_status(detail, journal.splitlines(keepends=True)))
                ctx.out.flush()
        except ClientError as err:
            ctx.stderr(f"Error getting status of unit {name}: {err}")
            return 1
    return 0


async def journal(ctx: Context, args: list[str]) -> int:
    """Print (and with ``--follow`` keep printing) a unit's journal."""
    if len(args) != 1:
        ctx.stderr("One unit file must be provided.")
        return 1
    name = unit_name_from_path(args[0])
    try:
        machines = await _machines_of(ctx, name, "journal")
        if machines is None:
            return 1
        transport = await _machine_transport(ctx, machines[0])
        query = urlencode({"lines": int(ctx.options.get("lines", 10)),
                           "follow": "true" if ctx.options.get("follow") else "false"})
        path = f"/fleet/v1/ext/units/{quote(name, safe='')}/journal"
        code, chunks = await transport.stream("GET", path, query)
        if code != 200:
            body = b"".join([c async for c in chunks])
            raise ClientError(f"googleapi: Error {code}: {body.decode('utf-8', 'replace')}", code)
        async for chunk in chunks:
            ctx.out.write(chunk.decode("utf-8", "replace"))
            ctx.out.flush()
    except ClientError as err:
        ctx.stderr(f"Error getting journal of unit {name}: {err}")
        return 1
    return 0
