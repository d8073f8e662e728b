"""``fleetctl ssh``, ``--tunnel`` and ``fd-forward`` against a real OpenSSH server and real fleetd machines.

Three fleetd processes over the reference etcd publish the public IPs 127.0.0.1, 127.0.0.2 and
127.0.0.3; one sshd listens on the same port of all three addresses, so where a command ran shows in
its ``$SSH_CONNECTION``. fleetctl authenticates through an ssh-agent holding the only key the sshd
accepts, and checks host keys against a known hosts file of the test's own. What went through the
SSH server shows in its log (``direct-tcpip`` streams and command sessions).
"""

from __future__ import annotations

import getpass
import os
import pty
import select
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from fleetd.ctl.tunnel import split_host_port
from fleetd.unit import UnitFile
from tests import harness
from tests.fleetd.sshd import SshAgent, Sshd
from tests.fleetd.test_daemon import IDS, TTL, Cluster, Fleetd, RegistryServers
from tests.fleetd.test_fleetctl import ROOT, Fleetctl

IPS = ("127.0.0.1", "127.0.0.2", "127.0.0.3")
USER = getpass.getuser()


class SshCluster(Cluster):
    """``Cluster``'s three fleetds over the reference etcd, each with its own public IP; machine 1 also
    serves its API on a unix socket (what ``--tunnel`` reaches with ``fleetctl fd-forward``)."""

    def __init__(self, tmp: Path) -> None:
        self.registry_servers = RegistryServers("etcd", tmp)
        self.ttl = TTL["etcd"]
        self.registry_servers.start()
        self.sock = tmp / "m1" / "fleet.sock"
        self.machines = []
        for number, (machine_id, ip) in enumerate(zip(IDS, IPS, strict=True), 1):
            port = harness.free_port()
            listen = f"unix:{self.sock},127.0.0.1:{port}" if number == 1 else f"127.0.0.1:{port}"
            machine = Fleetd(machine_id, tmp / f"m{number}", self.registry_servers.urls, f"ip={ip}", self.ttl,
                             port, f"public_ip = {ip}\napi_listen = {listen}\n")
            self.machines.append(machine.start())


@dataclass
class Env:
    """The sshd, the agent, the cluster, and fleetctl set up to use them."""

    sshd: Sshd
    agent: SshAgent
    cluster: SshCluster
    known_hosts: Path
    tmp: Path

    @property
    def api(self) -> str:
        return f"http://127.0.0.1:{self.cluster.machines[0].api_port}"

    def ssh_flags(self, known_hosts: Path | None = None) -> list[str]:
        return [f"--ssh-username={USER}", f"--known-hosts-file={known_hosts or self.known_hosts}"]

    def fleetctl(self, *flags: str, known_hosts: Path | None = None) -> Fleetctl:
        """fleetctl with machine 1's API as endpoint (unless ``flags`` name another) and the SSH flags."""
        endpoint = [] if any(f.startswith("--endpoint") for f in flags) else [f"--endpoint={self.api}"]
        return Fleetctl([*endpoint, *self.ssh_flags(known_hosts), *flags], self.tmp)

    def tunnelled(self, *flags: str) -> Fleetctl:
        """fleetctl through ``--tunnel`` to the sshd on 127.0.0.1."""
        return self.fleetctl(f"--tunnel=127.0.0.1:{self.sshd.port}", *flags)

    def ssh(self, *args: str, fleetctl: Fleetctl | None = None,
            env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        """``fleetctl ssh --ssh-port=<sshd> ARGS`` with the agent."""
        return (fleetctl or self.fleetctl())("ssh", f"--ssh-port={self.sshd.port}", *args,
                                             env={**self.agent.env, **(env or {})})


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    tmp = tmp_path_factory.mktemp("ssh")
    sshd = Sshd(tmp / "sshd", IPS)
    agent = SshAgent(tmp / "agent")
    known_hosts = tmp / "known_hosts"
    cluster: SshCluster | None = None
    try:
        agent.start(sshd.start().client_key)
        known_hosts.write_text("".join(sshd.known_hosts_line(ip) for ip in IPS))
        (tmp / "fleet").mkdir()
        cluster = SshCluster(tmp / "fleet")
        cluster.wait("three machines", lambda: len(cluster.snapshot().machines) == 3)
        yield Env(sshd, agent, cluster, known_hosts, tmp)
    finally:
        if cluster is not None:
            cluster.close()
        agent.stop()
        sshd.stop()


@pytest.fixture(scope="module")
def pinned(env: Env) -> str:
    """``3333.service`` running on machine 3 and writing a line to its journal; its name."""
    name = "3333.service"
    env.cluster.submit((name, UnitFile.from_text('[Service]\nExecStart=/bin/sh -c "echo hello over ssh; '
                                                 f'exec sleep 1000"\n[X-Fleet]\nMachineID={IDS[2]}\n')))
    env.cluster.wait(f"{name} running", lambda: env.cluster.running(name))
    return name


def server_address(result: subprocess.CompletedProcess[str]) -> str:
    """The server address of ``echo $SSH_CONNECTION`` run over ssh (its third field)."""
    assert result.returncode == 0, result
    return result.stdout.split()[2]


WHERE = "echo $SSH_CONNECTION"


# ---------------------------------------------------------------------------------------------------
# fleetctl ssh


def test_ssh_runs_a_command_on_the_machine_named_by_an_id_prefix(env: Env) -> None:
    done = env.ssh("2222", WHERE)
    assert server_address(done) == "127.0.0.2"
    assert done.stderr == ""
    who = env.ssh("1111", "id", "-un")
    assert (who.returncode, who.stdout, who.stderr) == (0, f"{USER}\n", "")
    assert server_address(env.ssh("--machine=333", WHERE)) == "127.0.0.3"


def test_ssh_propagates_exit_code_and_both_streams(env: Env) -> None:
    done = env.ssh("1111", "echo out; echo err >&2; exit 7")
    assert (done.returncode, done.stdout, done.stderr) == (7, "out\n", "err\n")
    assert env.ssh("1111", "--", "exit", "3").returncode == 3
    assert env.ssh("1111", "true").returncode == 0


def test_ssh_to_a_unit_goes_to_the_machine_running_it(env: Env, pinned: str) -> None:
    assert server_address(env.ssh(pinned, WHERE)) == "127.0.0.3"
    assert server_address(env.ssh("--unit=3333", WHERE)) == "127.0.0.3"
    assert server_address(env.ssh("--machine=3333", WHERE)) == "127.0.0.3"
    ambiguous = env.ssh("3333", WHERE)
    assert (ambiguous.returncode, ambiguous.stdout) == (1, "")
    assert ambiguous.stderr == ("Unable to proceed: ambiguous argument, both machine and unit found for "
                                "`3333`.\nPlease use flag `-m` or `-u` to refine the search\n")


def test_ssh_says_why_when_no_machine_matches(env: Env) -> None:
    cases = {("nothing", "true"): "Unable to proceed: could not find matching unit or machine\n",
             (): "Unable to proceed: one machine or unit must be provided\n",
             ("--machine=9", "true"): "Unable to proceed: machine does not exist\n",
             ("--unit=none.service", "true"): "Unable to proceed: unit does not exist\n",
             ("--machine=1", "--unit=x", "true"):
                 "Both machine and unit flags provided, please specify only one.\n"}
    for args, stderr in cases.items():
        done = env.ssh(*args)
        assert (done.returncode, done.stdout, done.stderr) == (1, "", stderr), args


def test_ssh_to_a_unit_without_a_machine_says_so(env: Env) -> None:
    name = "nowhere.service"
    env.cluster.submit((name, UnitFile.from_text("[Service]\nExecStart=/bin/sleep 1000\n"
                                                 "[X-Fleet]\nMachineID=ffffffff\n")))
    try:
        done = env.ssh("--unit=nowhere", "true")
        no_address = "Could not determine address of machine.\n"
        assert (done.returncode, done.stdout, done.stderr) == (1, "", no_address)
        bare = env.ssh("nowhere", "true")
        assert bare.stderr == "Unable to proceed: could not find matching unit or machine\n"
    finally:
        env.cluster.destroy(name)


def test_tunnel_and_machine_addresses_are_host_and_optional_port() -> None:
    assert split_host_port("10.0.0.1", 22) == ("10.0.0.1", 22)
    assert split_host_port("10.0.0.1:2222", 22) == ("10.0.0.1", 2222)
    assert split_host_port("[fd00::1]:2222", 22) == ("fd00::1", 2222)
    assert split_host_port("fd00::1", 22) == ("fd00::1", 22)
    assert split_host_port("[fd00::1]", 22) == ("fd00::1", 22)


def test_ssh_forwards_the_agent_only_when_asked(env: Env) -> None:
    listed = env.ssh("-A", "2222", "ssh-add", "-l")
    assert listed.returncode == 0, listed
    assert "fleet-test-client" in listed.stdout
    assert env.ssh("--forward-agent", "2222", "ssh-add", "-l").returncode == 0
    assert env.ssh("2222", "ssh-add", "-l").returncode == 2  # no agent on the machine


def test_ssh_without_a_command_opens_a_shell_on_a_terminal(env: Env) -> None:
    code, output = run_in_terminal(env.fleetctl(), "ssh", f"--ssh-port={env.sshd.port}", "2222",
                                   env=env.agent.env, answer="echo tty=$(tty); exit 4", question=b"")
    assert code == 4, output
    assert "tty=/dev/pts/" in output


def test_ssh_without_an_accepted_key_fails_clearly(env: Env) -> None:
    done = env.ssh("1111", "true", env={"SSH_AUTH_SOCK": ""})
    assert (done.returncode, done.stdout) == (1, "")
    refused = f"Failed building SSH client: 127.0.0.1:{env.sshd.port} refused the login ("
    assert done.stderr.startswith(refused), done.stderr


# ---------------------------------------------------------------------------------------------------
# --tunnel


def test_tunnel_carries_the_api_requests(env: Env, pinned: str) -> None:
    direct = env.fleetctl()
    tunnelled = env.tunnelled()
    api_port = env.cluster.machines[0].api_port
    before = env.sshd.forwarded_to(api_port)
    for command in (("list-machines",), ("list-machines", "--full"), ("list-units",), ("list-unit-files",)):
        through = tunnelled(*command, env=env.agent.env)
        assert (through.returncode, through.stderr) == (0, ""), command
        assert through.stdout == direct(*command).stdout, command
    assert "3333.service\t33333333.../127.0.0.3\tactive\trunning\n" in tunnelled(
        "list-units", env=env.agent.env).stdout
    assert env.sshd.forwarded_to(api_port) >= before + 5


def test_tunnel_reaches_status_and_journal_on_the_units_machine(env: Env, pinned: str) -> None:
    tunnelled = env.tunnelled()
    unit_api = env.cluster.machines[2].api_port
    before = env.sshd.forwarded_to(unit_api)
    status = tunnelled("status", pinned, env=env.agent.env)
    assert status.returncode == 0, status
    assert status.stdout.startswith(f"● {pinned}\n")
    assert "   Active: active (running) since" in status.stdout
    assert f"  Machine: {IDS[2]}\n" in status.stdout
    def journaled() -> subprocess.CompletedProcess[str] | None:
        done = tunnelled("journal", pinned, env=env.agent.env)
        return done if "hello" in done.stdout else None
    journal = env.cluster.wait("journal through the tunnel", journaled)
    assert (journal.returncode, journal.stderr) == (0, ""), journal
    assert "hello over ssh\n" in journal.stdout
    assert env.sshd.forwarded_to(unit_api) >= before + 2


def test_tunnel_to_a_unix_endpoint_runs_fd_forward_on_the_tunnel_host(env: Env) -> None:
    tunnelled = env.tunnelled(f"--endpoint=unix://{env.cluster.sock}")
    sessions = env.sshd.command_sessions()
    through = tunnelled("list-machines", "--no-legend", env=env.agent.env)
    assert (through.returncode, through.stderr) == (0, "")
    rows = (f"{machine_id[:8]}...\t{ip}\tip={ip}\n" for machine_id, ip in zip(IDS, IPS, strict=True))
    assert through.stdout == "".join(rows)
    assert env.sshd.command_sessions() > sessions


def test_tunnel_with_the_etcd_driver(env: Env) -> None:
    etcd = env.cluster.registry_servers.servers[0]
    flags = ("--driver=etcd", f"--endpoint={etcd.url}", "--etcd-key-prefix=/fleet-test/")
    etcd_port = int(etcd.url.rsplit(":", 1)[1])
    before = env.sshd.forwarded_to(etcd_port)
    through = env.tunnelled(*flags)("list-machines", "--no-legend", env=env.agent.env)
    assert (through.returncode, through.stderr) == (0, "")
    assert through.stdout == env.fleetctl(*flags)("list-machines", "--no-legend").stdout
    assert len(through.stdout.splitlines()) == 3
    assert env.sshd.forwarded_to(etcd_port) > before


def test_ssh_through_the_tunnel_reaches_the_machine_from_the_tunnel_host(env: Env) -> None:
    before = env.sshd.log_text().count(f"target 127.0.0.2 port {env.sshd.port}\n")
    done = env.ssh("2222", WHERE, fleetctl=env.tunnelled())
    assert server_address(done) == "127.0.0.2"
    assert env.sshd.log_text().count(f"target 127.0.0.2 port {env.sshd.port}\n") == before + 1


# ---------------------------------------------------------------------------------------------------
# Host keys and timeouts


def run_in_terminal(fleetctl: Fleetctl, *args: str, env: dict[str, str], answer: str,
                    question: bytes = b"(yes/no") -> tuple[int, str]:
    """Run fleetctl on a new terminal, typing ``answer`` once ``question`` shows (any output for ``b""``);
    (exit code, what the terminal showed)."""
    argv = [sys.executable, "-m", "fleetd.ctl", *fleetctl.flags, *args]
    environ = {**os.environ, "PYTHONPATH": str(ROOT), **env}
    pid, fd = pty.fork()
    if pid == 0:  # the child: a session leader with the terminal as its controlling terminal
        os.chdir(fleetctl.cwd)
        os.execve(argv[0], argv, environ)
    output, answered, deadline = b"", False, time.monotonic() + 60
    while time.monotonic() < deadline:
        if not select.select([fd], [], [], 1)[0]:
            continue
        try:
            chunk = os.read(fd, 4096)
        except OSError:  # EIO: the child side closed
            break
        if not chunk:
            break
        output += chunk
        if not answered and question in output:
            os.write(fd, answer.encode() + b"\n")
            answered = True
    os.close(fd)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status), output.decode(errors="replace").replace("\r\n", "\n")


def detached(fleetctl: Fleetctl, *args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """fleetctl without a terminal to ask on (a new session), as from cron or CI."""
    return subprocess.run([sys.executable, "-m", "fleetd.ctl", *fleetctl.flags, *args], cwd=fleetctl.cwd,
                          env={**os.environ, "PYTHONPATH": str(ROOT), **env}, capture_output=True, text=True,
                          timeout=60, start_new_session=True)


def test_known_hosts_ask_remember_and_refuse_a_changed_key(env: Env, tmp_path: Path) -> None:
    sshd = Sshd(tmp_path / "sshd").start()  # a machine of its own, re-created below
    (sshd.home / "authorized_keys").write_text(Path(f"{env.sshd.client_key}.pub").read_text())
    known = tmp_path / "fleetctl" / "known_hosts"  # its directory does not exist yet
    fleetctl = env.fleetctl(known_hosts=known)
    args = ("ssh", f"--ssh-port={sshd.port}", "1111", "echo", "on the machine")
    where = f"127.0.0.1:{sshd.port}"
    try:
        unknown = detached(fleetctl, *args, env=env.agent.env)
        assert (unknown.returncode, unknown.stdout) == (1, "")
        assert (f"Failed building SSH client: the host key of {where} is not known and was not accepted "
                "(no terminal to ask on, or the answer was not yes)") in unknown.stderr

        code, output = run_in_terminal(fleetctl, *args, env=env.agent.env, answer="no")
        assert code == 1 and "Failed building SSH client: the host key" in output, output
        code, output = run_in_terminal(fleetctl, *args, env=env.agent.env, answer="yes")
        assert (code, output.splitlines()[-1]) == (0, "on the machine"), output
        assert known.read_text().strip()
        assert detached(fleetctl, *args, env=env.agent.env).stdout == "on the machine\n"

        sshd.stop()
        sshd.new_host_key()
        sshd.start()
        changed = detached(fleetctl, *args, env=env.agent.env)
        assert (changed.returncode, changed.stdout) == (1, "")
        assert (f"Failed building SSH client: the host key of {where} does not match the one in the known "
                "hosts file") in changed.stderr
        tunnel = detached(env.fleetctl(f"--tunnel={where}", known_hosts=known), "list-machines",
                          env=env.agent.env)
        assert tunnel.returncode == 1
        opening = "Unable to initialize client: failed to open the SSH tunnel: "
        assert tunnel.stderr.startswith(f"{opening}the host key of {where} does not match"), tunnel.stderr
        unchecked = detached(fleetctl, "--strict-host-key-checking=false", *args, env=env.agent.env)
        assert (unchecked.returncode, unchecked.stdout, unchecked.stderr) == (0, "on the machine\n", "")

        known.write_text("")
        code, output = run_in_terminal(fleetctl, *args, env=env.agent.env, answer="yes")
        assert (code, output.splitlines()[-1]) == (0, "on the machine"), output
    finally:
        sshd.stop()


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A port that accepts connections and never says anything (a host that does not answer SSH)."""
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(16)
        yield server.getsockname()[1]


def test_an_unreachable_host_fails_within_the_ssh_timeout(env: Env, silent_port: int) -> None:
    where = f"127.0.0.1:{silent_port}"
    done = env.fleetctl("--ssh-timeout=1")("ssh", f"--ssh-port={silent_port}", "1111", "true",
                                           env=env.agent.env)
    assert (done.returncode, done.stdout) == (1, "")
    assert done.stderr == f"Failed building SSH client: timed out after 1s connecting to {where}\n"
    tunnel = env.fleetctl(f"--tunnel={where}", "--ssh-timeout=1")("list-machines", env=env.agent.env)
    assert (tunnel.returncode, tunnel.stdout) == (1, "")
    assert tunnel.stderr == ("Unable to initialize client: failed to open the SSH tunnel: timed out after 1s "
                             f"connecting to {where}\n")


# ---------------------------------------------------------------------------------------------------
# fd-forward


def echo_server(path: Path) -> threading.Thread:
    """A unix socket at ``path`` answering one connection with ``echo:`` + all it received."""
    server = socket.socket(socket.AF_UNIX)
    server.bind(str(path))
    server.listen(1)

    def serve() -> None:
        with server, server.accept()[0] as conn:
            received = b""
            while data := conn.recv(4096):
                received += data
            conn.sendall(b"echo:" + received)
    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    return thread


def test_fd_forward_relays_stdin_and_stdout_to_a_unix_socket(tmp_path: Path) -> None:
    sock = tmp_path / "echo.sock"
    thread = echo_server(sock)
    payload = b"".join(b"line %d\n" % i for i in range(20000))
    done = subprocess.run([sys.executable, "-m", "fleetd.ctl", "fd-forward", str(sock)], input=payload,
                          capture_output=True, timeout=60, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert (done.returncode, done.stdout, done.stderr) == (0, b"echo:" + payload, b"")
    thread.join(10)
    missing = Fleetctl([], tmp_path)("fd-forward", str(tmp_path / "none.sock"))
    assert (missing.returncode, missing.stdout) == (1, "")
    assert missing.stderr.startswith(f"Unable to connect to {tmp_path / 'none.sock'}: ")
