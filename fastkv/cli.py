"""``fastkv``: etcd's command line, ``ETCD_*`` variables and config file -> :class:`Settings`.

fastkv answers to every flag etcd 3.4 knows, so a harness written for etcd can start
it unchanged (``etcd`` may even be a link to ``fastkv``). The checks run in etcd's
order and fail with etcd's messages, streams and exit codes:

* a malformed command line (unknown flag, bad value) -> Go's message and the usage on
  stderr, exit 2; ``--help`` -> usage, exit 0; ``--version`` -> version lines, exit 0;
* an argument that is not a flag, an invalid environment value, a bad config file,
  conflicting bootstrap flags, ``--listen-client-urls`` without
  ``--advertise-client-urls``... -> ``E | etcdmain: error verifying flags, ...``, exit 1;
* a flag given both on the command line and as ``ETCD_*`` -> ``C | pkg/flags: ...``, exit 1;
* a member name missing from ``--initial-cluster`` and other bootstrap faults on a new
  data directory -> ``C | etcdmain: ...``, exit 1.

Flags fastkv has no use for (TLS, metrics, logging, experimental, v3-only) are accepted
and kept in ``Settings.extra``; 0.4-era flags that etcd 3.4 still tolerates are accepted
with etcd's warning; the other 0.4-era flags (``-addr``, ``-peers``) are unknown.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import platform
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TextIO

from fastkv import ETCD_SERVER_VERSION, __version__
from fastkv.flags import (
    Flag,
    FlagError,
    FlagSet,
    HelpRequested,
    Parsed,
    Validator,
    env_key,
    from_env,
    parse_bool,
)
from fastkv.settings import Settings

DEFAULT_CLIENT_URLS = ",".join(Settings.listen_client_urls)
DEFAULT_ADVERTISE_CLIENT_URLS = ",".join(Settings.advertise_client_urls)
DEFAULT_PEER_URLS = ",".join(Settings.listen_peer_urls)
DEFAULT_ADVERTISE_PEER_URLS = ",".join(Settings.initial_advertise_peer_urls)
DEFAULT_INITIAL_CLUSTER = ",".join(f"{name}={url}" for name, urls in Settings.initial_cluster for url in urls)
URL_SCHEMES = ("http", "https", "unix", "unixs")


class Exit(Exception):
    """Stop with ``code`` after the messages already written."""

    def __init__(self, code: int) -> None:
        super().__init__(code)
        self.code = code


# ---------------------------------------------------------------------------------------
# URL lists, as etcd's ``types.NewURLs`` checks them


def url_problem(text: str) -> str | None:
    """Why ``text`` is not a URL etcd accepts in a URL-list flag, or ``None``."""
    scheme, sep, rest = text.partition("://")
    if not sep or scheme not in URL_SCHEMES:
        return f"URL scheme must be http, https, unix, or unixs: {text}"
    hostport, slash, path = rest.partition("/")
    if ":" not in hostport:
        return f'URL address does not have the form "host:port": {text}'
    port = hostport.rsplit(":", 1)[1]
    if port and not port.isdigit():
        return f'parse {go_q(text)}: invalid port ":{port}" after host'
    if slash and path:
        return f"URL must not contain a path: {text}"
    return None


def urls_problem(text: str) -> str | None:
    """The first problem of a comma-separated URL list, or ``None``."""
    for part in text.split(","):
        problem = url_problem(part)
        if problem is not None:
            return problem
    return None


def go_q(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def split_urls(text: str) -> tuple[str, ...]:
    return tuple(u for u in text.split(",") if u)


def parse_initial_cluster(text: str) -> tuple[tuple[str, tuple[str, ...]], ...]:
    """``a=http://h:1,b=http://h:2,a=http://h:3`` -> ((name, urls), ...) in first-seen order.

    Raises :class:`ValueError` with etcd's message for a member URL it would reject.
    """
    members: dict[str, list[str]] = {}
    for item in text.split(","):
        if not item:
            continue
        name, _, url = item.partition("=")
        members.setdefault(name, []).append(url)
    for urls in members.values():
        for url in urls:
            problem = url_problem(url)
            if problem is not None:
                raise ValueError(problem)
    return tuple((name, tuple(urls)) for name, urls in members.items())


# ---------------------------------------------------------------------------------------
# The flag table: (group, Flag). Usage texts are etcd's.


def _f(
    names: str,
    kind: str = "string",
    default: str = "",
    usage: str = "",
    *,
    choices: tuple[str, ...] = (),
    validate: Validator | None = None,
) -> Flag:
    return Flag(tuple(names.split(",")), kind, default, usage, choices, validate)


GROUPS: tuple[tuple[str, tuple[Flag, ...]], ...] = (
    (
        "Member",
        (
            _f("name", default="default", usage="Human-readable name for this member."),
            _f("data-dir", default="${name}.fastkv", usage="Path to the data directory."),
            _f("wal-dir", usage="Path to the dedicated wal directory."),
            _f(
                "snapshot-count",
                "uint",
                "100000",
                "Number of committed transactions to trigger a snapshot to disk.",
            ),
            _f("heartbeat-interval", "uint", "100", "Time (in milliseconds) of a heartbeat interval."),
            _f(
                "election-timeout",
                "uint",
                "1000",
                "Time (in milliseconds) for an election to timeout. See tuning documentation for details.",
            ),
            _f(
                "initial-election-tick-advance",
                "bool",
                "true",
                "Whether to fast-forward initial election ticks on boot for faster election.",
            ),
            _f(
                "listen-peer-urls",
                default=DEFAULT_PEER_URLS,
                usage="List of URLs to listen on for peer traffic.",
                validate=urls_problem,
            ),
            _f(
                "listen-client-urls",
                default=DEFAULT_CLIENT_URLS,
                usage="List of URLs to listen on for client traffic.",
                validate=urls_problem,
            ),
            _f("max-snapshots", "uint", "5", "Maximum number of snapshot files to retain (0 is unlimited)."),
            _f("max-wals", "uint", "5", "Maximum number of wal files to retain (0 is unlimited)."),
            _f(
                "quota-backend-bytes",
                "int",
                "0",
                "Raise alarms when backend size exceeds the given quota (0 defaults to low space quota).",
            ),
            _f(
                "backend-batch-interval",
                "duration",
                "",
                "BackendBatchInterval is the maximum time before commit the backend transaction.",
            ),
            _f(
                "backend-batch-limit",
                "int",
                "0",
                "BackendBatchLimit is the maximum operations before commit the backend transaction.",
            ),
            _f("max-txn-ops", "uint", "128", "Maximum number of operations permitted in a transaction."),
            _f(
                "max-request-bytes",
                "uint",
                "1572864",
                "Maximum client request size in bytes the server will accept.",
            ),
            _f(
                "max-concurrent-streams",
                "uint",
                "math.MaxUint32",
                "Maximum concurrent streams that each client can open at a time.",
            ),
            _f(
                "grpc-keepalive-min-time",
                "duration",
                "5s",
                "Minimum duration interval that a client should wait before pinging server.",
            ),
            _f(
                "grpc-keepalive-interval",
                "duration",
                "2h",
                "Frequency duration of server-to-client ping to check if a connection is alive "
                "(0 to disable).",
            ),
            _f(
                "grpc-keepalive-timeout",
                "duration",
                "20s",
                "Additional duration of wait before closing a non-responsive connection (0 to disable).",
            ),
        ),
    ),
    (
        "Clustering",
        (
            _f(
                "initial-advertise-peer-urls",
                default=DEFAULT_ADVERTISE_PEER_URLS,
                usage="List of this member's peer URLs to advertise to the rest of the cluster.",
                validate=urls_problem,
            ),
            _f(
                "initial-cluster",
                default=DEFAULT_INITIAL_CLUSTER,
                usage="Initial cluster configuration for bootstrapping.",
            ),
            _f(
                "initial-cluster-state",
                default="new",
                usage="Initial cluster state ('new' or 'existing').",
                choices=("new", "existing"),
            ),
            _f(
                "initial-cluster-token",
                default="etcd-cluster",
                usage="Initial cluster token for the etcd cluster during bootstrap.\n"
                "Specifying this can protect you from unintended cross-cluster interaction when running "
                "multiple clusters.",
            ),
            _f(
                "advertise-client-urls",
                default=DEFAULT_ADVERTISE_CLIENT_URLS,
                usage="List of this member's client URLs to advertise to the public.\n"
                "The client URLs advertised should be accessible to machines that talk to etcd cluster. "
                "etcd client libraries parse these URLs to connect to the cluster.",
                validate=urls_problem,
            ),
            _f("discovery", usage="Discovery URL used to bootstrap the cluster."),
            _f(
                "discovery-fallback",
                default="proxy",
                usage="Expected behavior ('exit' or 'proxy') when discovery services fails.\n"
                '"proxy" supports v2 API only.',
                choices=("exit", "proxy"),
            ),
            _f("discovery-proxy", usage="HTTP proxy to use for traffic to discovery service."),
            _f("discovery-srv", usage="DNS srv domain used to bootstrap the cluster."),
            _f("discovery-srv-name", usage="Suffix to the dns srv name queried when bootstrapping."),
            _f(
                "strict-reconfig-check",
                "bool",
                "true",
                "Reject reconfiguration requests that would cause quorum loss.",
            ),
            _f("pre-vote", "bool", "false", "Enable to run an additional Raft election phase."),
            _f(
                "auto-compaction-retention",
                default="0",
                usage="Auto compaction retention length. 0 means disable auto compaction.",
            ),
            _f(
                "auto-compaction-mode",
                default="periodic",
                usage="Interpret 'auto-compaction-retention' one of: periodic|revision.",
            ),
            _f("enable-v2", "bool", "true", "Accept etcd V2 client requests (always on in fastkv)."),
        ),
    ),
    (
        "Security",
        tuple(
            _f(name, kind, default, usage)
            for name, kind, default, usage in (
                ("cert-file", "string", "", "Path to the client server TLS cert file."),
                ("key-file", "string", "", "Path to the client server TLS key file."),
                ("client-cert-auth", "bool", "false", "Enable client cert authentication."),
                ("client-crl-file", "string", "", "Path to the client certificate revocation list file."),
                (
                    "client-cert-allowed-hostname",
                    "string",
                    "",
                    "Allowed TLS hostname for client cert authentication.",
                ),
                ("trusted-ca-file", "string", "", "Path to the client server TLS trusted CA cert file."),
                ("auto-tls", "bool", "false", "Client TLS using generated certificates."),
                ("peer-cert-file", "string", "", "Path to the peer server TLS cert file."),
                ("peer-key-file", "string", "", "Path to the peer server TLS key file."),
                ("peer-client-cert-auth", "bool", "false", "Enable peer client cert authentication."),
                ("peer-trusted-ca-file", "string", "", "Path to the peer server TLS trusted CA file."),
                (
                    "peer-cert-allowed-cn",
                    "string",
                    "",
                    "Required CN for client certs connecting to the peer endpoint.",
                ),
                (
                    "peer-cert-allowed-hostname",
                    "string",
                    "",
                    "Allowed TLS hostname for inter peer authentication.",
                ),
                ("peer-auto-tls", "bool", "false", "Peer TLS using self-generated certificates."),
                ("peer-crl-file", "string", "", "Path to the peer certificate revocation list file."),
                ("cipher-suites", "string", "", "Comma-separated list of supported TLS cipher suites."),
                (
                    "cors",
                    "string",
                    "*",
                    "Comma-separated whitelist of origins for CORS (empty or * means allow all).",
                ),
                ("host-whitelist", "string", "*", "Acceptable hostnames from HTTP client requests."),
            )
        ),
    ),
    (
        "Auth",
        (
            _f(
                "auth-token",
                default="simple",
                usage="Specify a v3 authentication token type and its options.",
            ),
            _f("bcrypt-cost", "uint", "10", "Specify the cost / strength of the bcrypt algorithm."),
            _f("auth-token-ttl", "uint", "300", "Time (in seconds) of the auth-token-ttl."),
        ),
    ),
    (
        "Profiling and Monitoring",
        (
            _f("enable-pprof", "bool", "false", "Enable runtime profiling data via HTTP server."),
            _f("metrics", default="basic", usage="Set level of detail for exported metrics."),
            _f(
                "listen-metrics-urls",
                usage="List of URLs to listen on for the metrics and health endpoints.",
                validate=urls_problem,
            ),
        ),
    ),
    (
        "Logging",
        (
            _f("logger", default="capnslog", usage="Specify 'zap' for structured logging or 'capnslog'."),
            _f(
                "log-outputs",
                default="default",
                usage="Specify 'stdout' or 'stderr', or a list of output targets.",
            ),
            _f(
                "log-level",
                default="info",
                usage="Configures log level. Only supports debug, info, warn, error, panic, or fatal.",
            ),
        ),
    ),
    (
        "v2 Proxy (to be deprecated in v4)",
        (
            _f(
                "proxy",
                default="off",
                usage="Proxy mode setting ('off', 'readonly' or 'on').",
                choices=("off", "readonly", "on"),
            ),
            _f(
                "proxy-failure-wait",
                "uint",
                "5000",
                "Time (in milliseconds) an endpoint will be held in a failed state.",
            ),
            _f(
                "proxy-refresh-interval",
                "uint",
                "30000",
                "Time (in milliseconds) of the endpoints refresh interval.",
            ),
            _f("proxy-dial-timeout", "uint", "1000", "Time (in milliseconds) for a dial to timeout."),
            _f("proxy-write-timeout", "uint", "5000", "Time (in milliseconds) for a write to timeout."),
            _f("proxy-read-timeout", "uint", "0", "Time (in milliseconds) for a read to timeout."),
        ),
    ),
    (
        "Experimental feature",
        (
            _f(
                "experimental-initial-corrupt-check",
                "bool",
                "false",
                "Enable to check data corruption before serving.",
            ),
            _f(
                "experimental-corrupt-check-time",
                "duration",
                "0s",
                "Duration of time between cluster corruption checks.",
            ),
            _f(
                "experimental-enable-v2v3",
                usage="Serve v2 requests through the v3 backend under a given prefix.",
            ),
            _f(
                "experimental-backend-bbolt-freelist-type",
                default="array",
                usage="Freelist type of the backend.",
            ),
            _f("experimental-enable-lease-checkpoint", "bool", "false", "Persist lease remainingTTL."),
            _f(
                "experimental-compaction-batch-limit",
                "int",
                "1000",
                "Maximum revisions deleted per compaction batch.",
            ),
            _f(
                "experimental-peer-skip-client-san-verification",
                "bool",
                "false",
                "Skip verification of SAN field in client certificate for peer connections.",
            ),
            _f(
                "experimental-watch-progress-notify-interval",
                "duration",
                "10m",
                "Duration of periodical watch progress notification.",
            ),
            _f(
                "experimental-warning-apply-duration",
                "duration",
                "100ms",
                "Warning is generated if requests take more than this duration.",
            ),
        ),
    ),
    (
        "Unsafe feature",
        (_f("force-new-cluster", "bool", "false", "Force to create a new one-member cluster."),),
    ),
    (
        "TO BE DEPRECATED",
        (
            _f("debug", "bool", "false", "Enable debug-level logging. Use '--log-level=debug' instead."),
            _f("log-package-levels", usage="Specify a particular log level for each etcd package."),
        ),
    ),
)

#: Flags that exist without a place in the usage text.
HIDDEN = (
    _f("config-file", usage="Path to the server configuration file."),
    _f("version", "bool", "false", "Print the version and exit."),
    _f("enable-grpc-gateway", "bool", "true", "Enable GRPC gateway."),
)

#: 0.4-era flags etcd 3.4 still accepts, with a warning, and ignores.
LEGACY_IGNORED = (
    "cluster-active-size",
    "cluster-remove-delay",
    "cluster-sync-interval",
    "config",
    "force",
    "max-result-buffer",
    "max-retry-attempts",
    "peer-heartbeat-interval",
    "peer-election-timeout",
    "retry-interval",
    "snapshot",
    "v",
    "vv",
)

FLAGS = FlagSet(
    [
        *(f for _, group in GROUPS for f in group),
        *HIDDEN,
        *(Flag((name,), "ignored") for name in LEGACY_IGNORED),
    ]
)

USAGE = """Usage:

  fastkv [flags]
    Start a fastkv (etcd v2 compatible) server.

  fastkv --version
    Show the version of fastkv.

  fastkv -h | --help
    Show the help information about fastkv.

  fastkv --config-file
    Path to the server configuration file. Note that if a configuration file is provided, \
other command line flags and environment variables will be ignored.
"""


def flags_text() -> str:
    """The per-flag part of ``--help``, grouped as etcd groups it."""
    lines = [""]
    for title, group in GROUPS:
        lines.append(f"{title}:")
        for flag in group:
            lines.append(f"  --{flag.name} '{flag.default}'")
            lines.extend(f"    {line}" for line in flag.usage.split("\n"))
        lines.append("")
    return "\n".join(lines)


def version_text() -> str:
    machine = {"x86_64": "amd64", "aarch64": "arm64"}.get(platform.machine(), platform.machine())
    return (
        f"etcd Version: {ETCD_SERVER_VERSION}\n"
        f"Git SHA: fastkv {__version__}\n"
        f"Go Version: python{platform.python_version()}\n"
        f"Go OS/Arch: {sys.platform}/{machine}\n"
    )


# ---------------------------------------------------------------------------------------
# Logging in etcd's capnslog shape: "2026-01-02 03:04:05.123456 E | etcdmain: ..."


@dataclass
class Log:
    """Writes etcd-shaped log lines to ``stream``."""

    stream: TextIO

    def line(self, level: str, package: str, message: str) -> None:
        stamp = datetime.datetime.now().strftime("%Y-%m-%d %H:%M:%S.%f")
        self.stream.write(f"{stamp} {level} | {package}: {message}\n")
        self.stream.flush()

    def flag_error(self, message: str) -> Exit:
        self.line("E", "etcdmain", f"error verifying flags, {message}. See 'fastkv --help'.")
        return Exit(1)

    def fatal(self, package: str, message: str) -> Exit:
        self.line("C", package, message)
        return Exit(1)


# ---------------------------------------------------------------------------------------
# Command line -> flag values


def parse_command_line(argv: Sequence[str], log: Log, out: TextIO) -> Parsed:
    """Go-style parse with etcd's reactions to the malformed cases (may raise :class:`Exit`)."""
    try:
        parsed = FLAGS.parse(argv)
    except HelpRequested:
        log.stream.write(USAGE + "\n")
        out.write(flags_text() + "\n")
        raise Exit(0) from None
    except FlagError as err:
        log.stream.write(f"{err}\n{USAGE}\n")
        raise Exit(2) from None
    for name in parsed.ignored:
        log.line("W", "pkg/flags", f'flag "-{name}" is no longer supported - ignoring.')
    if parsed.args:
        raise log.flag_error(f"'{parsed.args[0]}' is not a valid flag")
    return parsed


def values_from_file(path: str, log: Log) -> tuple[dict[str, str], set[str]]:
    """Flag values from an etcd YAML config file (keys are the flag names)."""
    try:
        import yaml  # type: ignore[import-untyped]
    except ImportError:
        raise log.flag_error("--config-file needs PyYAML (pip install pyyaml)") from None
    try:
        with open(path, encoding="utf-8") as fh:
            data = yaml.safe_load(fh)
    except OSError as err:
        raise log.flag_error(f"open {path}: {err.strerror.lower() if err.strerror else err}") from None
    except yaml.YAMLError as err:
        raise log.flag_error(f"error converting YAML to JSON: yaml: {err}") from None
    values: dict[str, str] = {}
    for key, value in (data or {}).items():
        flag = FLAGS.lookup(str(key))
        if flag is None or flag.kind == "ignored":
            continue
        if isinstance(value, bool):
            text = "true" if value else "false"
        elif isinstance(value, list):
            text = ",".join(str(v) for v in value)
        else:
            text = "" if value is None else str(value)
        values[flag.name] = text
    return values, set(values)


def collect_values(
    argv: Sequence[str], environ: Mapping[str, str], log: Log, out: TextIO
) -> tuple[dict[str, str], set[str]]:
    """All explicitly set flag values and which were set (command line, env or file)."""
    parsed = parse_command_line(argv, log, out)
    if parse_bool(parsed.values.get("version", "false")):
        out.write(version_text())
        raise Exit(0)
    config_file = parsed.values.get("config-file") or environ.get(env_key("ETCD", "config-file"), "")
    if config_file:
        log.line(
            "I",
            "etcdmain",
            f"Loading server configuration from {go_q(config_file)}. Other configuration "
            "command line flags and environment variables will be ignored if provided.",
        )
        return values_from_file(config_file, log)
    environ = {k: v for k, v in environ.items() if k != "ETCD_VERSION"}
    try:
        env = from_env(FLAGS, parsed, environ, "ETCD", skip=[env_key("ETCD", "config-file")])
    except FlagError as err:
        raise log.flag_error(str(err)) from None
    for item in env.unknown:
        log.line("W", "pkg/flags", f"unrecognized environment variable {item}")
    for key in env.conflicts:
        raise log.fatal(
            "pkg/flags",
            f"conflicting environment variable {go_q(key)} is shadowed by corresponding "
            "command-line flag (either unset environment variable or disable flag)",
        )
    values = {**env.values, **parsed.values}
    return values, set(values)


# ---------------------------------------------------------------------------------------
# Flag values -> Settings


def value(values: Mapping[str, str], name: str) -> str:
    flag = FLAGS.lookup(name)
    assert flag is not None, name
    return values.get(name, flag.default)


MAPPED = (
    "name",
    "data-dir",
    "listen-client-urls",
    "advertise-client-urls",
    "listen-peer-urls",
    "initial-advertise-peer-urls",
    "initial-cluster",
    "initial-cluster-state",
    "initial-cluster-token",
    "heartbeat-interval",
    "election-timeout",
    "snapshot-count",
    "discovery",
    "discovery-fallback",
    "discovery-proxy",
    "discovery-srv",
    "cors",
    "strict-reconfig-check",
    "log-level",
    "version",
    "config-file",
)


def check_values(values: Mapping[str, str], explicit: set[str], log: Log) -> None:
    """etcd's configuration checks (``embed.Config.Validate`` and friends)."""
    bootstrap = [name for name in ("discovery", "discovery-srv") if values.get(name)]
    if bootstrap and "initial-cluster" in explicit:
        raise log.flag_error(
            'multiple discovery or bootstrap flags are set. Choose one of "initial-cluster", '
            '"discovery" or "discovery-srv"'
        )
    for name in ("listen-peer-urls", "listen-client-urls"):
        for url in split_urls(value(values, name)):
            host = url.partition("://")[2].rsplit(":", 1)[0].strip("[]")
            if url.startswith("unix") or host == "localhost" or _is_ip(host):
                continue
            raise log.flag_error(f"expected IP in URL for binding ({url})")
    tick, election = int(value(values, "heartbeat-interval")), int(value(values, "election-timeout"))
    if tick == 0:
        raise log.flag_error(f"--heartbeat-interval must be >0 (set to {tick}ms)")
    if election == 0:
        raise log.flag_error(f"--election-timeout must be >0 (set to {election}ms)")
    if 5 * tick > election:
        raise log.flag_error(
            f"--election-timeout[{election}ms] should be at least as 5 times as "
            f"--heartbeat-interval[{tick}ms]"
        )
    if election > 50000:
        raise log.flag_error(
            f"--election-timeout[{election}ms] is too long, and should be set less than 50000ms"
        )
    if "listen-client-urls" in explicit and "advertise-client-urls" not in explicit:
        log.line(
            "E",
            "etcdmain",
            "error verifying flags, --advertise-client-urls is required when "
            "--listen-client-urls is set explicitly. See 'fastkv --help'.",
        )
        log.line(
            "E",
            "etcdmain",
            "When listening on specific address(es), this etcd process must advertise "
            "accessible url(s) to each connected client.",
        )
        raise Exit(1)


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def initial_cluster_text(values: Mapping[str, str], explicit: set[str]) -> str:
    """``--initial-cluster`` after etcd's defaulting: a non-default name with the default
    cluster means "just me at my advertised peer URLs"; discovery means "none yet"."""
    text = value(values, "initial-cluster")
    name = value(values, "name")
    if "initial-cluster" not in explicit:
        if values.get("discovery") or values.get("discovery-srv"):
            return ""
        if name != "default":
            peers = split_urls(value(values, "initial-advertise-peer-urls"))
            return ",".join(f"{name}={url}" for url in peers)
    return text


def check_bootstrap(settings: Settings, log: Log) -> None:
    """The checks etcd makes when a new member boots from ``--initial-cluster``, or joins a running
    cluster with it (``existing``)."""
    if settings.initial_cluster_state == "existing":
        check_join(settings, log)
        return
    if settings.discovery or settings.discovery_srv:
        return
    members = dict(settings.initial_cluster)
    if settings.name not in members:
        raise log.fatal(
            "etcdmain", f"couldn't find local name {go_q(settings.name)} in the initial cluster configuration"
        )
    mine = sorted(members[settings.name])
    advertised = sorted(settings.initial_advertise_peer_urls)
    if mine != advertised:
        listed = ",".join(f"{settings.name}={u}" for u in members[settings.name])
        raise log.fatal(
            "etcdmain",
            f"--initial-cluster has {listed} but missing from "
            f"--initial-advertise-peer-urls={','.join(settings.initial_advertise_peer_urls)} "
            f"(resolved urls: {go_q(','.join(advertised))} != {go_q(','.join(mine))})",
        )


def check_join(settings: Settings, log: Log) -> None:
    """etcd's VerifyJoinExisting: the member's name is in ``--initial-cluster``, no peer URL is
    listed twice, and no discovery is asked for."""
    if settings.name not in dict(settings.initial_cluster):
        raise log.fatal(
            "etcdmain", f"couldn't find local name {go_q(settings.name)} in the initial cluster configuration"
        )
    urls = [u for _, member_urls in settings.initial_cluster for u in member_urls]
    if len(set(urls)) != len(urls):
        listed = ",".join(sorted(f"{n}={u}" for n, named in settings.initial_cluster for u in named))
        raise log.fatal("etcdmain", f"initial cluster {listed} has duplicate url")
    if settings.discovery:
        raise log.fatal("etcdmain", "discovery URL should not be set when joining existing initial cluster")


def build_settings(values: Mapping[str, str], explicit: set[str], log: Log) -> Settings:
    """Turn checked flag values into :class:`Settings` (may raise :class:`Exit`)."""
    check_values(values, explicit, log)
    name = value(values, "name")
    data_dir = values.get("data-dir", "")
    if not data_dir:
        data_dir = f"{name}.fastkv"
        log.line("W", "etcdmain", f"no data-dir provided, using default data-dir ./{data_dir}")
    try:
        initial_cluster = parse_initial_cluster(initial_cluster_text(values, explicit))
    except ValueError as err:
        raise log.fatal("etcdmain", f"error setting up initial cluster: {err}") from None
    extra = {k: v for k, v in values.items() if k not in MAPPED}
    return Settings(
        name=name,
        data_dir=data_dir,
        listen_client_urls=split_urls(value(values, "listen-client-urls")),
        advertise_client_urls=split_urls(value(values, "advertise-client-urls")),
        listen_peer_urls=split_urls(value(values, "listen-peer-urls")),
        initial_advertise_peer_urls=split_urls(value(values, "initial-advertise-peer-urls")),
        initial_cluster=initial_cluster,
        initial_cluster_state=value(values, "initial-cluster-state"),
        # etcd names a cluster bootstrapped by discovery after its discovery URL
        initial_cluster_token=value(values, "discovery") or value(values, "initial-cluster-token"),
        heartbeat_interval_ms=int(value(values, "heartbeat-interval")),
        election_timeout_ms=int(value(values, "election-timeout")),
        snapshot_count=int(value(values, "snapshot-count")),
        discovery=value(values, "discovery"),
        discovery_fallback=value(values, "discovery-fallback"),
        discovery_proxy=value(values, "discovery-proxy"),
        discovery_srv=value(values, "discovery-srv"),
        cors=tuple(c for c in value(values, "cors").split(",") if c) or ("*",),
        strict_reconfig_check=parse_bool(value(values, "strict-reconfig-check")),
        log_level="debug" if parse_bool(value(values, "debug")) else value(values, "log-level"),
        extra=extra,
    )


def settings_from(argv: Sequence[str], environ: Mapping[str, str], log: Log, out: TextIO) -> Settings:
    """The whole of etcd's start-up configuration: argv + environment (+ file) -> Settings.

    Raises :class:`Exit` after writing etcd's messages when etcd would stop.
    """
    values, explicit = collect_values(argv, environ, log, out)
    settings = build_settings(values, explicit, log)
    if not is_initialised(settings.data_dir):
        check_bootstrap(settings, log)
    return settings


def is_initialised(data_dir: str) -> bool:
    """Whether ``data_dir`` already holds a member's log (then the initial-cluster flags are ignored)."""
    from fastkv.storage.datadir import is_initialised as holds_log

    return holds_log(data_dir)


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``fastkv`` and ``python -m fastkv``: configure, discover, then serve.

    ``fastkv cluster ...`` runs a local cluster instead (:mod:`fastkv.localcluster`).
    """
    args = sys.argv[1:] if argv is None else argv
    if args[:1] == ["cluster"]:
        from fastkv import localcluster

        return localcluster.main(args[1:])
    log = Log(sys.stderr)
    try:
        settings = settings_from(args, os.environ, log, sys.stdout)
    except Exit as stop:
        sys.stdout.flush()
        return stop.code
    if (settings.discovery or settings.discovery_srv) and not is_initialised(settings.data_dir):
        from fastkv import discovery

        try:
            settings = discovery.bootstrap(settings, log.line)
        except discovery.DiscoveryError as err:
            discovery.explain(err, settings, log.line)
            return 1
    from fastkv.server import app

    return int(app.run(settings) or 0)


if __name__ == "__main__":
    raise SystemExit(main())
