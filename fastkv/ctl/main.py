"""``fastkvctl``: etcdctl's v2 command line (``ETCDCTL_API=2 etcdctl``) for fastkv and etcd.

Global options come before the command and are parsed Go-style; a command's own flags
may follow its arguments (known flags are moved ahead, as etcdctl does). Exit codes:
0 ok, 1 bad arguments, 2 cluster unreachable during the sync, 3 unknown command,
4 server error (``Error:  100: Key not found (/nope) [12]``), 5 cluster unhealthy.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from typing import TextIO

from fastkv import ETCD_SERVER_VERSION, __version__
from fastkv.ctl import keys, member, watch
from fastkv.ctl.command import Command, Context, bool_flag
from fastkv.ctl.output import Stop
from fastkv.flags import Flag, FlagError, FlagSet, HelpRequested, parse_bool

GLOBAL_FLAGS = FlagSet(
    [
        bool_flag("debug"),
        bool_flag("no-sync"),
        Flag(("output", "o"), default="simple"),
        Flag(("discovery-srv", "D")),
        bool_flag("insecure-discovery"),
        Flag(("peers", "C")),
        Flag(("endpoint",)),
        Flag(("endpoints",)),
        Flag(("cert-file",)),
        Flag(("key-file",)),
        Flag(("ca-file",)),
        Flag(("username", "u")),
        Flag(("timeout",), "duration", "2s"),
        Flag(("total-timeout",), "duration", "5s"),
        bool_flag("help, h"),
        bool_flag("version, v"),
    ]
)

COMMANDS: tuple[Command, ...] = (
    *keys.COMMANDS,
    *watch.COMMANDS,
    *member.COMMANDS,
)
ORDER = (
    "cluster-health",
    "mk",
    "mkdir",
    "rm",
    "rmdir",
    "get",
    "ls",
    "set",
    "setdir",
    "update",
    "updatedir",
    "watch",
    "exec-watch",
    "member",
)
BY_NAME = {c.name: c for c in COMMANDS}

APP_HELP = """NAME:
   fastkvctl - A simple command line client for etcd (fastkv's etcdctl v2).

USAGE:
   fastkvctl [global options] command [command options] [arguments...]

VERSION:
   {version}

COMMANDS:
{commands}   help, h         Shows a list of commands or help for one command

GLOBAL OPTIONS:
   --debug                          output cURL commands which can be used to reproduce the request
   --no-sync                        don't synchronize cluster information before sending request
   --output simple, -o simple       output response in the given format (simple, `extended` or `json`) \
(default: "simple")
   --discovery-srv value, -D value  domain name to query for SRV records describing cluster endpoints
   --insecure-discovery             accept insecure SRV records describing cluster endpoints
   --peers value, -C value          DEPRECATED - "--endpoints" should be used instead
   --endpoint value                 DEPRECATED - "--endpoints" should be used instead
   --endpoints value                a comma-delimited list of machine addresses in the cluster \
(default: "http://127.0.0.1:2379,http://127.0.0.1:4001")
   --cert-file value                identify HTTPS client using this SSL certificate file
   --key-file value                 identify HTTPS client using this SSL key file
   --ca-file value                  verify certificates of HTTPS-enabled servers using this CA bundle
   --username value, -u value       provide username[:password] and prompt if password is not supplied.
   --timeout value                  connection timeout per request (default: 2s)
   --total-timeout value            timeout for the command execution (except watch) (default: 5s)
   --help, -h                       show help
   --version, -v                    print the version
"""


def app_help() -> str:
    lines = "".join(f"   {name.ljust(14)}  {BY_NAME[name].usage}\n" for name in ORDER)
    return APP_HELP.format(version=ETCD_SERVER_VERSION, commands=lines)


def run_command(command: Command, args: Sequence[str], ctx: Context, parent: str) -> int:
    """Parse a command's own flags (or pick its subcommand) and run it."""
    if command.subcommands:
        if not args or args[0] in ("-h", "--help", "help", "h"):
            ctx.out.write(command.help_text(parent))
            return 0
        sub = {c.name: c for c in command.subcommands}.get(args[0])
        if sub is None:
            ctx.err.write(f"No help topic for '{args[0]}'\n")
            return 3
        return run_command(sub, args[1:], ctx, f"{parent} {command.name}")
    flagset = command.flagset
    try:
        parsed = flagset.parse(flagset.reorder(args))
    except HelpRequested:
        ctx.out.write(command.help_text(parent))
        return 0
    except FlagError as err:
        ctx.err.write(f"{err}\n")
        ctx.out.write(f"Incorrect Usage: {err}\n\n{command.help_text(parent)}")
        return 1
    ctx.values = parsed.values
    ctx.args = parsed.args
    try:
        return command.run(ctx)
    except Stop as stop:
        return stop.code


def main(argv: list[str] | None = None, out: TextIO | None = None, err: TextIO | None = None) -> int:
    """Entry point of ``fastkvctl``."""
    args = sys.argv[1:] if argv is None else argv
    out = out or sys.stdout
    err = err or sys.stderr
    try:
        parsed = GLOBAL_FLAGS.parse(args)
    except FlagError as exc:
        err.write(f"{exc}\n")
        out.write(f"Incorrect Usage. {exc}\n\n{app_help()}")
        return 1
    options = parsed.values
    if parse_bool(options.get("version", "false")):
        out.write(
            f"fastkvctl version {__version__} (etcdctl version: {ETCD_SERVER_VERSION})\nAPI version: 2\n"
        )
        return 0
    rest = parsed.args
    if parse_bool(options.get("help", "false")) or not rest or (rest[0] in ("help", "h") and len(rest) == 1):
        out.write(app_help())
        return 0
    if rest[0] in ("help", "h"):
        rest = [rest[1], "--help"]
    command = BY_NAME.get(rest[0])
    if command is None:
        err.write(f"No help topic for '{rest[0]}'\n")
        return 3
    ctx = Context(options=options, out=out, err=err, environ=dict(os.environ))
    try:
        code = run_command(command, rest[1:], ctx, "etcdctl")
    finally:
        out.flush()
    return code


if __name__ == "__main__":
    raise SystemExit(main())
