"""``list-units``, ``list-unit-files`` and ``list-machines``: fleet's tables (spec 1.3)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fleetd.ctl.client import ClientError
from fleetd.ctl.command import Context
from fleetd.ctl.output import SHORT_HASH_LEN, legend_of, machine_id_legend, parse_fields, table
from fleetd.ctl.units import is_global, unit_hash
from fleetd.unit import UnitFile

Columns = dict[str, Callable[[dict[str, Any]], str]]


def _hash(value: str, full: bool) -> str:
    return value if full else value[:SHORT_HASH_LEN]


async def _machines(ctx: Context) -> dict[str, dict[str, Any]]:
    return {m["id"]: m for m in await ctx.client.machines()}


def _print_table(ctx: Context, items: list[dict[str, Any]], columns: Columns) -> int:
    fields, error = parse_fields(str(ctx.options.get("fields", "")), columns)
    if error:
        ctx.stderr(error)
        return 1
    ctx.out.write(table(items, fields, columns, not ctx.options.get("no-legend")))
    ctx.out.flush()
    return 0


async def list_units(ctx: Context, args: list[str]) -> int:
    """One row per (unit, machine) state published."""
    full = bool(ctx.options.get("full"))
    try:
        states = sorted(await ctx.client.unit_states(),
                        key=lambda s: (s.get("name", ""), s.get("machineID", "")))
        machines = await _machines(ctx)
    except ClientError as err:
        ctx.stderr(f"Error retrieving list of units from repository: {err}")
        return 1
    columns: Columns = {
        "unit": lambda s: s.get("name", ""),
        "machine": lambda s: legend_of(s.get("machineID", ""), machines, full),
        "active": lambda s: s.get("systemdActiveState", ""),
        "sub": lambda s: s.get("systemdSubState", ""),
        "load": lambda s: s.get("systemdLoadState", ""),
        "hash": lambda s: _hash(s.get("hash", ""), full),
        "container": lambda s: ", ".join(s.get("containers") or []) or "-",  # an addition to fleet
    }
    return _print_table(ctx, states, columns)


async def list_unit_files(ctx: Context, args: list[str]) -> int:
    """One row per unit in the registry."""
    full = bool(ctx.options.get("full"))
    fields = str(ctx.options.get("fields", ""))
    if "tmachine" in fields.split(","):
        ctx.stderr('WARNING: The "tmachine" field is deprecated, use "target" instead.')
    try:
        units = sorted(await ctx.client.units(), key=lambda u: u.get("name", ""))
        machines = await _machines(ctx)
    except ClientError as err:
        ctx.stderr(f"Error retrieving list of units from repository: {err}")
        return 1

    def target(unit: dict[str, Any]) -> str:
        return "global" if is_global(unit) else legend_of(unit.get("machineID", ""), machines, full)

    columns: Columns = {
        "unit": lambda u: u.get("name", ""),
        "hash": lambda u: _hash(unit_hash(u), full),
        "dstate": lambda u: u.get("desiredState", ""),
        "state": lambda u: "-" if is_global(u) else u.get("currentState", ""),
        "target": target,
        "tmachine": target,
        "global": lambda u: "true" if is_global(u) else "false",
        "desc": lambda u: UnitFile.from_api(u.get("options", [])).description,
    }
    return _print_table(ctx, units, columns)


async def list_machines(ctx: Context, args: list[str]) -> int:
    """One row per live machine."""
    full = bool(ctx.options.get("full"))
    try:
        machines = sorted(await ctx.client.machines(), key=lambda m: m.get("id", ""))
    except ClientError as err:
        ctx.stderr(f"Error retrieving list of active machines: {err}")
        ctx.stderr("Possible issues:\n  etcd is unhealthy and/or lost quorum\n"
                   "  connection cannot be established to any etcd servers")
        return 1
    columns: Columns = {
        "machine": lambda m: machine_id_legend(m.get("id", ""), full),
        "ip": lambda m: m.get("primaryIP", ""),
        "metadata": lambda m: ",".join(f"{k}={v}" for k, v in sorted((m.get("metadata") or {}).items())),
    }
    return _print_table(ctx, machines, columns)
