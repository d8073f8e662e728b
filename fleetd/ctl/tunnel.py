"""fleetctl's SSH: connections to machines (``fleetctl ssh``) and the ``--tunnel`` to the cluster.

Everything goes through the OpenSSH client (``ssh``). One ``SshConnection`` is one authenticated
connection, an OpenSSH control master in a private directory; commands and forwarded streams then
run as cheap multiplexed sessions over it. Opening it first is what tells a connection failure
(unknown or changed host key, refused login, unreachable host) apart from a command's own exit code.

The flags, as fleet (spec 1.1): ``--ssh-username`` (``core``), ``--ssh-timeout`` (seconds to connect
and read the server's greeting), ``--strict-host-key-checking`` (true: an unknown host key is asked
about on the terminal and remembered in ``--known-hosts-file``, a changed one refuses the connection;
false: any key is accepted and nothing is remembered), ``--known-hosts-file``
(``~/.fleetctl/known_hosts``). Keys come from ``ssh-agent`` (``SSH_AUTH_SOCK``) or the user's usual
OpenSSH identities; passwords are never asked for.

``Tunnel`` (``--tunnel host[:port]``, port 22 by default) makes the API or etcd endpoints reachable
through one such connection: each endpoint gets a local relay in the private directory (a unix socket
for ``http``/``unix`` URLs, a loopback TCP port for etcd, whose client speaks TCP only). Each
connection to a relay becomes one stream over SSH: ``direct-tcpip`` to ``host:port`` for an
``http(s)`` URL, or, for a ``unix://`` URL, the command ``fleetctl fd-forward PATH`` on the tunnel
host, as fleet does (so the remote host needs fleetctl, not socket forwarding).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import math
import os
import shlex
import shutil
import signal
import tempfile
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit, urlunsplit

#: How often the readiness of a control master is checked while it connects.
_POLL_SECONDS = 0.02
#: How long closing a tunnel waits for its relayed streams to wind down.
_CLOSE_SECONDS = 1.0
#: Bytes of a master's stderr kept for the error message.
_STDERR_KEPT = 16384


class SshError(Exception):
    """An SSH connection could not be opened; ``str()`` says why in one line."""


@dataclass(frozen=True)
class SshSettings:
    """The SSH flags of fleetctl (see the module docstring)."""

    user: str = "core"
    timeout: float = 10.0
    strict: bool = True
    known_hosts: str = "~/.fleetctl/known_hosts"

    @staticmethod
    def of(options: dict[str, Any]) -> SshSettings:
        """The settings named by fleetctl's parsed flags."""
        return SshSettings(str(options.get("ssh-username") or "core"),
                           float(options.get("ssh-timeout") or 10.0),
                           bool(options.get("strict-host-key-checking", True)),
                           str(options.get("known-hosts-file") or ""))

    def host_key_options(self) -> list[str]:
        """``-o`` options for host key checking; creates the known hosts file's directory if needed."""
        if not self.strict:
            return ["-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
                    "-o", "LogLevel=ERROR"]
        options = ["-o", "StrictHostKeyChecking=ask"]
        if self.known_hosts:
            path = os.path.expanduser(self.known_hosts)
            with contextlib.suppress(OSError):
                os.makedirs(os.path.dirname(path) or ".", mode=0o700, exist_ok=True)
            options += ["-o", f"UserKnownHostsFile={path}"]
        return options


def split_host_port(text: str, default_port: int) -> tuple[str, int]:
    """``host``, ``host:port``, ``[v6]:port`` or a bare IPv6 address -> (host, port)."""
    text = text.strip()
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        return host, int(rest[1:]) if rest.startswith(":") else default_port
    if text.count(":") == 1:
        host, _, port = text.partition(":")
        return host, int(port)
    return text, default_port


def display(host: str, port: int) -> str:
    """``host:port`` (IPv6 hosts in brackets)."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _ssh() -> str:
    path = shutil.which("ssh")
    if path is None:
        raise SshError("the OpenSSH client (ssh) is not installed")
    return path


def _prctl() -> Any:
    """libc's ``prctl``, looked up in fleetctl itself (a forked child should do as little as possible)."""
    with contextlib.suppress(Exception):
        return ctypes.CDLL(None).prctl
    return None


_PRCTL = _prctl()


def _die_with_parent() -> None:
    """In the child before exec: receive SIGTERM when fleetctl dies (Linux), so no master outlives it."""
    if _PRCTL is not None:
        _PRCTL(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def _failure(stderr: str, where: str, timeout: float) -> str:
    """One line saying why the master for ``where`` failed, from what ssh printed."""
    lines = [line.strip() for line in stderr.splitlines() if line.strip() and not line.startswith("@")]
    text = "\n".join(lines)
    if "REMOTE HOST IDENTIFICATION HAS CHANGED" in stderr or "you have requested strict" in text:
        return (f"the host key of {where} does not match the one in the known hosts file; if the machine "
                "was re-created, remove its old key (ssh-keygen -R) and connect again")
    if "Host key verification failed" in text:
        return (f"the host key of {where} is not known and was not accepted (no terminal to ask on, or the "
                "answer was not yes); accept it once from a terminal, add it to the known hosts file, or "
                "use --strict-host-key-checking=false")
    if "timed out" in text.lower():
        return f"timed out after {timeout:g}s connecting to {where}"
    if "Permission denied" in text:
        return (f"{where} refused the login ({lines[-1]}); is ssh-agent running (SSH_AUTH_SOCK) with a key "
                "the machine accepts, and is --ssh-username right?")
    return f"cannot connect to {where}: {lines[-1] if lines else 'ssh exited'}"


class SshConnection:
    """One authenticated connection to ``host:port`` (an OpenSSH control master); ``proxy``, when given,
    is the connection the TCP stream to ``host:port`` goes through (``--tunnel``)."""

    def __init__(self, settings: SshSettings, host: str, port: int, *, proxy: SshConnection | None = None,
                 forward_agent: bool = False) -> None:
        self.settings = settings
        self.host = host
        self.port = port
        self.proxy = proxy
        self.forward_agent = forward_agent
        self.directory = tempfile.mkdtemp(prefix="fleetctl-")
        self.control = os.path.join(self.directory, "ctl")
        self._master: asyncio.subprocess.Process | None = None
        self._stderr = bytearray()
        self._drain: asyncio.Task[None] | None = None

    @property
    def where(self) -> str:
        return display(self.host, self.port)

    def _master_argv(self) -> list[str]:
        timeout = max(1, math.ceil(self.settings.timeout))
        argv = [_ssh(), "-M", "-S", self.control, "-N", "-p", str(self.port), "-l", self.settings.user,
                "-o", "ControlPersist=no", "-o", f"ConnectTimeout={timeout}",
                "-o", "PasswordAuthentication=no", "-o", "KbdInteractiveAuthentication=no",
                *self.settings.host_key_options()]
        if self.forward_agent:
            argv.append("-A")
        if self.proxy is not None:
            argv += ["-o", "ProxyCommand=" + shlex.join(self.proxy.session_argv(["-W", "%h:%p"]))]
        return [*argv, "--", self.host]

    def session_argv(self, options: list[str], command: tuple[str, ...] | list[str] = ()) -> list[str]:
        """An ``ssh`` command line with ``options`` that runs ``command`` over this connection."""
        return [_ssh(), "-S", self.control, "-o", "ControlMaster=no", "-p", str(self.port),
                "-l", self.settings.user, *options, "--", self.host, *command]

    async def open(self) -> None:
        """Connect and authenticate; ``SshError`` saying why when that fails."""
        self._master = await asyncio.create_subprocess_exec(
            *self._master_argv(), stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE, preexec_fn=_die_with_parent)
        self._drain = asyncio.ensure_future(self._keep_stderr())
        while not os.path.exists(self.control):
            if self._master.returncode is not None:
                await self._drain
                raise SshError(_failure(self._stderr.decode("utf-8", "replace"), self.where,
                                        self.settings.timeout))
            await asyncio.sleep(_POLL_SECONDS)

    async def _keep_stderr(self) -> None:
        assert self._master is not None and self._master.stderr is not None
        while chunk := await self._master.stderr.read(4096):
            self._stderr += chunk
            del self._stderr[:-_STDERR_KEPT]
        await self._master.wait()

    async def run(self, command: list[str], *, terminal: bool) -> int:
        """Run ``command`` (a shell when empty) with fleetctl's stdin/stdout/stderr; its exit code."""
        options = ["-t"] if terminal else ["-T"]
        if self.forward_agent:
            options.append("-A")
        process = await asyncio.create_subprocess_exec(*self.session_argv(options, command))
        return await process.wait()

    async def stream(self, target: str) -> asyncio.subprocess.Process:
        """A process whose stdin/stdout are a stream to ``target`` (``http(s)://host:port`` or
        ``unix:///path``) through this connection."""
        parts = urlsplit(target)
        if parts.scheme == "unix":
            argv = self.session_argv(["-T"], ["fleetctl", "fd-forward", shlex.quote(parts.path)])
        else:
            default = 443 if parts.scheme == "https" else 80
            argv = self.session_argv(["-W", display(parts.hostname or "", parts.port or default)])
        return await asyncio.create_subprocess_exec(*argv, stdin=asyncio.subprocess.PIPE,
                                                    stdout=asyncio.subprocess.PIPE)

    async def close(self) -> None:
        """End the connection (and every session over it) and remove the private directory."""
        if self._master is not None and self._master.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self._master.terminate()
                try:  # ssh sometimes sits on a SIGTERM that arrives as a session ends
                    await asyncio.wait_for(self._master.wait(), _CLOSE_SECONDS)
                except TimeoutError:
                    self._master.kill()
                    await self._master.wait()
        if self._drain is not None:
            with contextlib.suppress(Exception):
                await self._drain
        shutil.rmtree(self.directory, ignore_errors=True)


async def _pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter | Any) -> None:
    """Copy until end of stream, then close the writing side."""
    with contextlib.suppress(OSError, ConnectionError):
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    with contextlib.suppress(OSError, ConnectionError, RuntimeError):
        if writer.can_write_eof():
            writer.write_eof()
        else:
            writer.close()


class Tunnel:
    """The ``--tunnel``: one ``SshConnection`` and a local relay per endpoint reached through it."""

    def __init__(self, connection: SshConnection) -> None:
        self.connection = connection
        self._relays: dict[str, str] = {}
        self._servers: list[asyncio.AbstractServer] = []
        self._streams: set[asyncio.subprocess.Process] = set()
        self._carriers: set[asyncio.Task[Any]] = set()

    @staticmethod
    def of(options: dict[str, Any]) -> Tunnel:
        """The tunnel named by ``--tunnel`` and the SSH flags."""
        host, port = split_host_port(str(options["tunnel"]), 22)
        return Tunnel(SshConnection(SshSettings.of(options), host, port))

    async def open(self) -> None:
        await self.connection.open()

    async def url(self, url: str, *, tcp: bool = False) -> str:
        """The local URL that reaches ``url`` through the tunnel: ``unix:///...`` (or, with ``tcp``, an
        ``http://127.0.0.1:port`` URL for clients that speak TCP only)."""
        key = f"{tcp}:{url}"
        if key not in self._relays:
            self._relays[key] = await self._relay(url.strip(), tcp)
        return self._relays[key]

    async def _relay(self, url: str, tcp: bool) -> str:
        parts = urlsplit(url if "://" in url else "http://" + url)
        target = urlunsplit(parts._replace(path=parts.path if parts.scheme == "unix" else "", query=""))

        async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await self._carry(target, reader, writer)
        if tcp:
            server = await asyncio.start_server(serve, "127.0.0.1", 0)
            self._servers.append(server)
            port = server.sockets[0].getsockname()[1]
            scheme = "https" if parts.scheme == "https" else "http"
            return urlunsplit((scheme, f"127.0.0.1:{port}", "", "", ""))
        path = os.path.join(self.connection.directory, f"relay-{len(self._servers)}.sock")
        self._servers.append(await asyncio.start_unix_server(serve, path))
        return "unix://" + path

    async def _carry(self, target: str, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Relay one local connection over one SSH stream to ``target``; ends quietly when cancelled."""
        task = asyncio.current_task()
        assert task is not None
        self._carriers.add(task)
        process: asyncio.subprocess.Process | None = None
        try:
            process = await self.connection.stream(target)
            self._streams.add(process)
            assert process.stdin is not None and process.stdout is not None
            await asyncio.gather(_pump(reader, process.stdin), _pump(process.stdout, writer))
            await process.wait()
        except asyncio.CancelledError:
            pass
        finally:
            if process is not None:
                self._streams.discard(process)
            self._carriers.discard(task)
            writer.close()

    async def close(self) -> None:
        """Stop the relays and their streams, then the connection."""
        for server in self._servers:
            server.close()
        for process in list(self._streams):
            with contextlib.suppress(ProcessLookupError):
                process.kill()
        if self._carriers:
            await asyncio.wait(list(self._carriers), timeout=_CLOSE_SECONDS)
        for process in list(self._streams):
            with contextlib.suppress(ProcessLookupError):
                await process.wait()
        await self.connection.close()
