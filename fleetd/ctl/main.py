"""fleetctl's entry point: global flags (and ``FLEETCTL_*`` variables), commands, help and version.

Flags may be written ``--name``, ``-name``, ``--name=value`` or ``--name value``; one-letter aliases
work with one or two dashes (``-l`` and ``--l``). Commands may be abbreviated to a unique prefix.
Exit codes: 0 success, 1 failure (also for an unknown command or flag: fleet exited 0), 2 for the
deprecated signing feature.
"""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import Mapping
from typing import Any

from fleetd import FLEET_VERSION
from fleetd.ctl import inspect, lists, remote, units
from fleetd.ctl.client import ClientError, FleetClient, api_client, etcd_client
from fleetd.ctl.command import BLOCK_FLAGS, REPLACE, SIGN, Command, Context, Flag, flag_table
from fleetd.ctl.output import tabwrite
from fleetd.ctl.tunnel import SshError, Tunnel
from fleetd.http1 import client_ssl_context

DEFAULT_ENDPOINT = "unix:///var/run/fleet.sock"
ENV_PREFIX = "FLEETCTL_"

_ETCD_OR_API = "Location of the fleet API if --driver=API; if --driver=etcd, location of the etcd API."
_TIMEOUT = "Amount of time in seconds to allow a single request before considering it failed."
GLOBAL_FLAGS = (
    Flag("endpoint", str, DEFAULT_ENDPOINT, _ETCD_OR_API),
    Flag("driver", str, "API", 'Adapter used to execute fleetctl commands: "API" or "etcd".'),
    Flag("etcd-key-prefix", str, "/_coreos.com/fleet/", "Keyspace for fleet data in etcd."),
    Flag("request-timeout", float, 3.0, _TIMEOUT),
    Flag("tunnel", str, "", "Establish an SSH tunnel through the provided address for communication "
         "with fleet and etcd."),
    Flag("ssh-username", str, "core", "Username to use when connecting to CoreOS instance."),
    Flag("ssh-timeout", float, 10.0, "Seconds to allow for SSH connection initialization before failing."),
    Flag("strict-host-key-checking", bool, True, "Verify host keys presented by remote machines."),
    Flag("known-hosts-file", str, "~/.fleetctl/known_hosts", "File storing remote machine fingerprints."),
    Flag("ca-file", str, "", "Location of TLS CA file."),
    Flag("cert-file", str, "", "Location of TLS cert file."),
    Flag("key-file", str, "", "Location of TLS key file."),
    Flag("etcd-cafile", str, "", "DEPRECATED: use --ca-file"),
    Flag("etcd-certfile", str, "", "DEPRECATED: use --cert-file"),
    Flag("etcd-keyfile", str, "", "DEPRECATED: use --key-file"),
    Flag("experimental-api", bool, True, "DEPRECATED: the API is always used"),
    Flag("debug", bool, False, "Print out more debug information to stderr."),
    Flag("help", bool, False, "Print usage information and exit", ("h",)),
    Flag("version", bool, False, "Print the version and exit", ("v",)),
)
LIST_FLAGS = (Flag("full", help="Do not ellipsize fields on output", aliases=("l",)),
              Flag("no-legend", help="Do not print a legend (column headers)"))
SSH_PORT = Flag("ssh-port", int, 22, "Connect to remote hosts over SSH using this TCP port.")


async def _version(ctx: Context, args: list[str]) -> int:
    ctx.stdout(f"fleetctl version {FLEET_VERSION}")
    return 0


async def _verify(ctx: Context, args: list[str]) -> int:
    ctx.stderr(units.DEPRECATED_SIGN)
    return 2


async def _help(ctx: Context, args: list[str]) -> int:
    if args:
        command = find_command(args[0])
        if command is None:
            ctx.stderr(f'Unknown help topic "{args[0]}"')
            return 1
        ctx.out.write(command_help(command))
    else:
        ctx.out.write(global_help())
    return 0


_FIELDS = "Columns to print for each {}. Valid fields are {}."
_FOLLOW = Flag("follow", help="Continuously print new entries as they are appended to the journal.",
               aliases=("f",))
_JOURNAL_FLAGS = (Flag("lines", int, 10, "Number of recent log lines to return."), _FOLLOW, SSH_PORT,
                  Flag("sudo", help="Accepted for compatibility; not needed."),
                  Flag("output", str, "short", "Output mode (only short is supported)."))
_SSH_FLAGS = (Flag("machine", str, "", "Open SSH connection to a specific machine."),
              Flag("unit", str, "", "Open SSH connection to machine running provided unit."),
              Flag("forward-agent", help="Forward local ssh-agent to target machine.", aliases=("A",)),
              SSH_PORT)
_START = ("Instruct systemd to start one or more units in the cluster, first submitting and loading if "
          "necessary.")
_LOAD = "Schedule one or more units in the cluster, first submitting them if necessary."
COMMANDS = (
    Command("cat", "Output the contents of a submitted unit", "UNIT", inspect.cat),
    Command("destroy", "Destroy one or more units in the cluster", "UNIT...", units.destroy, BLOCK_FLAGS,
            "Completely remove one or more running or submitted units from the cluster."),
    Command("fd-forward", "Proxy stdin and stdout to a unix domain socket", "SOCKET", remote.fd_forward,
            needs_client=False),
    Command("help", "Show a list of commands or help for one command", "[COMMAND]", _help,
            needs_client=False),
    Command("journal", "Print the journal of a unit in the cluster", "UNIT", inspect.journal, _JOURNAL_FLAGS,
            "Outputs the journal of a unit, read from the fleetd of the machine that runs it."),
    Command("list-machines", "Enumerate the current hosts in the cluster", "", lists.list_machines,
            (*LIST_FLAGS, Flag("fields", str, "machine,ip,metadata",
                               _FIELDS.format("Machine", '"ip,machine,metadata"')))),
    Command("list-unit-files", "List the units that exist in the cluster.", "", lists.list_unit_files,
            (Flag("full", help="Do not ellipsize fields on output"), LIST_FLAGS[1],
             Flag("fields", str, "unit,hash,dstate,state,target",
                  _FIELDS.format("Unit file", '"desc,dstate,global,hash,state,target,tmachine,unit"')))),
    Command("list-units", "List the current state of units in the cluster", "", lists.list_units,
            (*LIST_FLAGS, Flag("fields", str, "unit,machine,active,sub",
                               _FIELDS.format("Unit", '"active,container,hash,load,machine,sub,unit"')))),
    Command("load", _LOAD, "UNIT...", units.load, (*BLOCK_FLAGS, REPLACE, SIGN)),
    Command("restart", "Instruct systemd to restart one or more units in the cluster.", "UNIT...",
            units.restart, BLOCK_FLAGS),
    Command("ssh", "Open interactive shell on a machine in the cluster",
            "[-A|--forward-agent] [--machine|--unit] {MACHINE|UNIT}", remote.ssh, _SSH_FLAGS,
            "Runs the rest of the arguments as a command (a shell without one) on a machine, named by an ID "
            "prefix or by a unit scheduled to it; the command's exit code is fleetctl's. With --tunnel the "
            "machine is reached from the tunnel host.", interspersed=False),
    Command("start", _START, "UNIT...", units.start, (*BLOCK_FLAGS, REPLACE, SIGN)),
    Command("status", "Output the status of one or more units in the cluster", "UNIT...", inspect.status,
            (SSH_PORT,), "Shows the status of units as the runtime of the machine running them reports it."),
    Command("stop", "Instruct systemd to stop one or more units in the cluster.", "UNIT...", units.stop,
            BLOCK_FLAGS),
    Command("submit", "Upload one or more units to the cluster without starting them", "UNIT...",
            units.submit, (REPLACE, SIGN)),
    Command("unload", "Unschedule one or more units in the cluster.", "UNIT...", units.unload, BLOCK_FLAGS),
    Command("verify", "DEPRECATED - No longer works", "UNIT", _verify, needs_client=False),
    Command("version", "Print the version and exit", "", _version, needs_client=False),
)
_BY_NAME = {c.name: c for c in COMMANDS}


def find_command(word: str) -> Command | None:
    """The command named ``word`` or uniquely prefixed by it."""
    if word in _BY_NAME:
        return _BY_NAME[word]
    matches = [c for c in COMMANDS if c.name.startswith(word)]
    return matches[0] if len(matches) == 1 else None


def _options_block(flags: tuple[Flag, ...]) -> str:
    rows = tabwrite([[f.usage().split("\t")[0], f.help] for f in flags])
    return "".join("\t" + line for line in rows.splitlines(keepends=True))


def global_help() -> str:
    """fleetctl's help page."""
    commands = "".join(f"\t{c.name}\t{c.summary}\n" for c in COMMANDS)
    rows = [line.split("\t")[1:] for line in commands.splitlines()]
    return (f"NAME:\n\tfleetctl - fleetctl is a command-line interface to fleet, the cluster-wide "
            f"CoreOS init "
            f"system.\n\nUSAGE:\n\tfleetctl [global options] <command> [command options] [arguments...]\n\n"
            f"VERSION:\n\t{FLEET_VERSION}\n\nCOMMANDS:\n"
            + "".join("\t" + line for line in tabwrite(rows).splitlines(keepends=True))
            + "\nDESCRIPTION:\n\tfleet is a distributed init system: it schedules systemd units across the "
              "machines of a cluster.\n\nGLOBAL OPTIONS:\n" + _options_block(GLOBAL_FLAGS)
            + "\nRun \"fleetctl help <command>\" for more details on a specific command.\n")


def command_help(command: Command) -> str:
    """One command's help page."""
    text = (f"NAME:\n\tfleetctl {command.name} - {command.summary}\n\nUSAGE:\n\tfleetctl {command.name}"
            f"{' [command options] ' + command.usage if command.usage else ''}\n")
    if command.description:
        text += f"\nDESCRIPTION:\n\t{command.description}\n"
    if command.flags:
        text += "\nOPTIONS:\n" + _options_block(command.flags)
    return text


class UsageError(Exception):
    """A bad flag or command; ``str()`` is printed after ``Error: ``."""


def _defaults(flags: tuple[Flag, ...], environ: Mapping[str, str]) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for flag in flags:
        values[flag.name] = flag.default
        env = environ.get(ENV_PREFIX + flag.name.upper().replace("-", "_"))
        if env:
            try:
                values[flag.name] = flag.parse(env)
            except ValueError as err:
                raise UsageError(f"invalid value for {ENV_PREFIX}{flag.name.upper()}: {err}") from None
    return values


def parse_args(argv: list[str],
               environ: Mapping[str, str]) -> tuple[Command | None, dict[str, Any], list[str]]:
    """(command or None, option values, positional arguments); ``UsageError`` for bad input."""
    options = _defaults(GLOBAL_FLAGS, environ)
    known = dict(flag_table(GLOBAL_FLAGS))
    command: Command | None = None
    positional: list[str] = []
    tokens = list(argv)
    while tokens:
        token = tokens.pop(0)
        if token == "--":
            positional += tokens
            break
        if not token.startswith("-") or token == "-" or (command and not command.interspersed and positional):
            if command is None:
                command = find_command(token)
                if command is None:
                    raise UsageError(f'unknown command "{token}" for "fleetctl"')
                options.update({f.name: f.default for f in command.flags})
                known.update(flag_table(command.flags))
            else:
                positional.append(token)
            continue
        name, has_value, value = token.lstrip("-").partition("=")
        flag = known.get(name)
        if flag is None:
            raise UsageError(f"unknown flag: {token}")
        if not has_value and flag.kind is not bool:
            if not tokens:
                raise UsageError(f"flag needs an argument: {token}")
            value = tokens.pop(0)
        try:
            options[flag.name] = flag.parse(value) if has_value or flag.kind is not bool else True
        except ValueError as err:
            raise UsageError(f'invalid argument "{value}" for "{token}": {err}') from None
    return command, options, positional


def _make_client(options: dict[str, Any]) -> FleetClient:
    context = client_ssl_context(options["ca-file"] or options["etcd-cafile"],
                                 options["cert-file"] or options["etcd-certfile"],
                                 options["key-file"] or options["etcd-keyfile"])
    driver = str(options["driver"])
    if driver.lower() == "etcd":
        return etcd_client(_etcd_endpoints(options), options["etcd-key-prefix"],
                           float(options["request-timeout"]), context)
    if driver.upper() != "API":
        raise ClientError(f'unrecognized driver "{driver}"')

    def debug(line: str) -> None:
        print(f"DEBUG http.go:28: {line}", file=sys.stderr)
    return api_client(options["endpoint"], max(float(options["request-timeout"]), 10.0), context,
                      debug if options["debug"] else None)


def _etcd_endpoints(options: dict[str, Any]) -> str:
    """The etcd URLs of ``--driver=etcd`` (fleet's defaults for the default endpoint)."""
    endpoint = str(options["endpoint"])
    return "http://127.0.0.1:2379,http://127.0.0.1:4001" if endpoint == DEFAULT_ENDPOINT else endpoint


async def _open_tunnel(ctx: Context) -> None:
    """With ``--tunnel``: connect, and point the endpoint flags at relays through the tunnel.
    ``SshError`` when the tunnel cannot be opened."""
    options = ctx.options
    ctx.tunnel = Tunnel.of(options)
    await ctx.tunnel.open()
    if str(options["driver"]).lower() == "etcd":
        urls = [await ctx.tunnel.url(u, tcp=True) for u in _etcd_endpoints(options).split(",") if u.strip()]
        options["endpoint"] = ",".join(urls)
    else:
        options["endpoint"] = await ctx.tunnel.url(str(options["endpoint"]).split(",")[0])


async def _run(command: Command, ctx: Context, args: list[str]) -> int:
    try:
        if ctx.options.get("tunnel") and command.needs_client:
            await _open_tunnel(ctx)
        return await command.run(ctx, args)
    except SshError as err:
        ctx.stderr(f"Unable to initialize client: failed to open the SSH tunnel: {err}")
        return 1
    except ClientError as err:
        ctx.stderr(f"Error: {err}")
        return 1
    finally:
        await ctx.close()


def main(argv: list[str] | None = None) -> int:
    """Run fleetctl with ``argv`` (default ``sys.argv[1:]``); return the exit code."""
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] in (["-v"], ["--version"]):
        print(f"fleetctl version {FLEET_VERSION}")
        return 0
    try:
        command, options, args = parse_args(argv, os.environ)
    except UsageError as err:
        print(f"Error: {err}\nRun 'fleetctl help' for usage.", file=sys.stderr)
        return 1
    if command is None:
        sys.stdout.write(global_help())
        return 0
    if options.get("help"):
        sys.stdout.write(command_help(command))
        return 0
    ctx = Context(options, lambda: _make_client(options))
    try:
        return asyncio.run(_run(command, ctx, args))
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
