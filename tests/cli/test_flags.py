"""etcd's command line: the Go flag parser, the Settings it yields, and etcd's error messages."""

from __future__ import annotations

import io
import re
import subprocess
import sys
from pathlib import Path

import pytest

from fastkv import cli
from fastkv.flags import Flag, FlagError, FlagSet, HelpRequested, from_env
from fastkv.identity import cluster_id, hex_id, member_id
from fastkv.settings import Settings
from tests.cli import env_with_repo
from tests.harness import REFERENCE_ETCD, free_port

FS = FlagSet(
    [
        Flag(("name",)),
        Flag(("enable-v2",), "bool"),
        Flag(("count",), "uint"),
        Flag(("recursive", "r"), "bool"),
    ]
)


@pytest.mark.parametrize("argv", [["-name", "a"], ["-name=a"], ["--name", "a"], ["--name=a"]])
def test_go_flag_spellings(argv: list[str]) -> None:
    assert FS.parse(argv).values == {"name": "a"}


def test_last_repeated_flag_wins_and_parsing_stops_at_arguments() -> None:
    parsed = FS.parse(["--name", "a", "-name", "b", "--enable-v2", "pos", "--count", "3"])
    assert parsed.values == {"name": "b", "enable-v2": "true"}
    assert parsed.args == ["pos", "--count", "3"]
    assert FS.parse(["--", "--name"]).args == ["--name"]


@pytest.mark.parametrize(
    "argv,message",
    [
        (["-addr", "x"], "flag provided but not defined: -addr"),
        (["--name"], "flag needs an argument: -name"),
        (["--enable-v2=maybe"], 'invalid boolean value "maybe" for -enable-v2: parse error'),
        (["--count", "-1"], 'invalid value "-1" for flag -count: parse error'),
        (["---x"], "bad flag syntax: ---x"),
    ],
)
def test_go_error_texts(argv: list[str], message: str) -> None:
    with pytest.raises(FlagError, match=re.escape(message)):
        FS.parse(argv)


def test_help_is_its_own_error() -> None:
    with pytest.raises(HelpRequested):
        FS.parse(["-h"])


def test_reorder_moves_known_flags_only() -> None:
    assert FS.reorder(["foo", "-r", "--name", "n", "-x"]) == ["-r", "--name", "n", "foo", "-x"]
    assert FS.reorder(["foo", "--", "-r"]) == ["--", "foo", "-r"]


def test_environment_fills_unset_flags_and_reports_the_rest() -> None:
    parsed = FS.parse(["--name", "a"])
    outcome = from_env(
        FS, parsed, {"ETCD_NAME": "b", "ETCD_COUNT": "4", "ETCD_NOPE": "1", "HOME": "/"}, "ETCD"
    )
    assert outcome.values == {"count": "4"}
    assert outcome.conflicts == ["ETCD_NAME"]
    assert outcome.unknown == ["ETCD_NOPE=1"]


def settings(argv: list[str], environ: dict[str, str] | None = None) -> Settings:
    return cli.settings_from(argv, environ or {}, cli.Log(io.StringIO()), io.StringIO())


def test_defaults_are_etcds_urls_plus_the_legacy_client_port() -> None:
    s = settings([])
    assert s.listen_client_urls == ("http://localhost:2379", "http://localhost:4001")
    assert s.advertise_client_urls == ("http://localhost:2379",)
    assert s.listen_peer_urls == s.initial_advertise_peer_urls == ("http://localhost:2380",)
    assert s.initial_cluster == (("default", ("http://localhost:2380",)),)
    assert s.data_dir == "default.fastkv"


def test_a_default_member_has_etcds_member_id() -> None:
    s = settings([])
    ident = member_id(list(s.initial_advertise_peer_urls), s.initial_cluster_token)
    assert hex_id(ident) == "8e9e05c52164694d"
    assert hex_id(cluster_id([ident])) == "cdf818194e3a8c32"


def test_flags_and_environment_map_to_settings(tmp_path: Path) -> None:
    peer = "http://127.0.0.1:7001"
    s = settings(
        [
            "-name",
            "n1",
            "-data-dir",
            str(tmp_path),
            "-initial-cluster",
            "x=http://127.0.0.1:1",
            "-initial-cluster",
            f"n1={peer},n2=http://127.0.0.1:7002",
            "--initial-advertise-peer-urls",
            peer,
            "--listen-client-urls",
            "http://127.0.0.1:4001",
            "--advertise-client-urls",
            "http://h:4001",
            "--enable-v2",
            "--cert-file=c.pem",
            "-snapshot",
        ],
        {"ETCD_INITIAL_CLUSTER_TOKEN": "tok", "ETCD_DISCOVERY_FALLBACK": "exit"},
    )
    assert s.name == "n1" and s.data_dir == str(tmp_path)
    assert s.initial_cluster == (("n1", (peer,)), ("n2", ("http://127.0.0.1:7002",)))
    assert s.initial_cluster_token == "tok" and s.discovery_fallback == "exit"
    assert s.advertise_client_urls == ("http://h:4001",)
    assert s.extra["enable-v2"] == "true" and s.extra["cert-file"] == "c.pem"


def test_a_named_member_defaults_to_a_cluster_of_itself() -> None:
    s = settings(["--name", "solo", "--initial-advertise-peer-urls", "http://127.0.0.1:9"])
    assert s.initial_cluster == (("solo", ("http://127.0.0.1:9",)),)
    assert s.data_dir == "solo.fastkv"


def test_discovery_is_kept_and_clears_the_default_cluster() -> None:
    s = settings(["--discovery", "http://127.0.0.1:1/v2/keys/_etcd/registry/x"])
    assert s.discovery.endswith("/x") and s.initial_cluster == ()


def test_config_file(tmp_path: Path) -> None:
    conf = tmp_path / "c.yml"
    conf.write_text(
        "name: y\ninitial-cluster: y=http://127.0.0.1:5\ninitial-advertise-peer-urls: "
        "http://127.0.0.1:5\nenable-v2: true\nsnapshot-count: 7\n"
    )
    s = settings(["--config-file", str(conf), "--name", "ignored"])
    assert (s.name, s.snapshot_count, s.extra["enable-v2"]) == ("y", 7, "true")


def test_version_names_fastkv() -> None:
    out = io.StringIO()
    with pytest.raises(cli.Exit) as stop:
        cli.settings_from(["--version"], {}, cli.Log(io.StringIO()), out)
    assert stop.value.code == 0
    assert out.getvalue().startswith("etcd Version: 3.4.23\nGit SHA: fastkv ")


# --- the real binaries: same exit code, same message ----------------------------------------------------

_STAMP = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d+ ")


def errors_of(stderr: str) -> list[str]:
    """The lines that explain a failure, without times, program names and start-up chatter."""
    lines = []
    for line in stderr.splitlines():
        line = (
            _STAMP.sub("", line).replace("etcd --help", "PROG --help").replace("fastkv --help", "PROG --help")
        )
        if line.startswith(("E |", "C |", "W | pkg/flags")) or (
            line
            and not line.startswith(("[WARNING]", "I |", "N |", "W |", " ", "raft", "Usage:"))
            and "|" not in line[:4]
        ):
            lines.append(line)
    return lines[:3]


def run(program: list[str], args: list[str], cwd: Path, env: dict[str, str]) -> tuple[int, list[str]]:
    proc = subprocess.run(
        [*program, *args], capture_output=True, text=True, timeout=20, cwd=cwd, env=env_with_repo(env)
    )
    return proc.returncode, errors_of(proc.stderr)


P = free_port()
CASES: list[tuple[list[str], dict[str, str]]] = [
    (["positional"], {}),
    (["--enable-v2", "true"], {}),
    (["-addr", "127.0.0.1:4001"], {}),
    (["-peer-addr", "x"], {}),
    (["-bind-addr", "x"], {}),
    (["--listen-client-urls", f"http://127.0.0.1:{P}"], {}),
    (["--listen-client-urls", "notaurl", "--advertise-client-urls", f"http://127.0.0.1:{P}"], {}),
    (["--listen-peer-urls", "http://127.0.0.1:xx"], {}),
    (["--listen-peer-urls", "http://foo.example:2"], {}),
    (["--initial-cluster-state", "bogus"], {}),
    (["--snapshot-count", "abc"], {}),
    (["--enable-v2=maybe"], {}),
    (["--heartbeat-interval"], {}),
    (["--heartbeat-interval", "500"], {}),
    (["-snapshot", "x"], {}),
    (["--name", "x", "--initial-cluster", f"y=http://127.0.0.1:{P}"], {}),
    (
        [
            "--name",
            "x",
            "--initial-cluster",
            f"x=http://127.0.0.1:{P}",
            "--initial-advertise-peer-urls",
            f"http://127.0.0.1:{P + 1}",
        ],
        {},
    ),
    (["--initial-cluster", "bad"], {}),
    (["--config-file", "/nonexistent"], {}),
    (
        [
            "--discovery",
            "http://127.0.0.1:1/x",
            "--initial-cluster",
            f"x=http://127.0.0.1:{P}",
            "--name",
            "x",
        ],
        {},
    ),
    (["--name", "y"], {"ETCD_NAME": "x"}),
    (["--name", "x", "--initial-cluster", "y=http://127.0.0.1:1"], {"ETCD_SNAPSHOT_COUNT": "abc"}),
    (["--name", "x", "--initial-cluster", "y=http://127.0.0.1:1"], {"ETCD_BOGUS": "1"}),
]


@pytest.mark.reference
@pytest.mark.parametrize("args,env", CASES, ids=[" ".join(a) + (" +env" if e else "") for a, e in CASES])
def test_errors_match_etcd(tmp_path: Path, args: list[str], env: dict[str, str]) -> None:
    (tmp_path / "etcd").mkdir()
    (tmp_path / "fastkv").mkdir()
    expected = run([REFERENCE_ETCD], args, tmp_path / "etcd", env)
    got = run([sys.executable, "-m", "fastkv"], args, tmp_path / "fastkv", env)
    assert expected[0] != 0
    assert got == expected


@pytest.mark.reference
def test_version_and_help_exit_zero(tmp_path: Path) -> None:
    for args in (["--version"], ["-version"], ["--help"], ["-h"]):
        etcd = subprocess.run([REFERENCE_ETCD, *args], capture_output=True, text=True, timeout=10)
        mine = subprocess.run(
            [sys.executable, "-m", "fastkv", *args],
            capture_output=True,
            text=True,
            timeout=10,
            env=env_with_repo(),
            cwd=tmp_path,
        )
        assert (mine.returncode, bool(mine.stdout)) == (etcd.returncode, bool(etcd.stdout)) == (0, True)
        assert (
            mine.stdout.splitlines()[0] == etcd.stdout.splitlines()[0]
            or args[0].endswith("h")
            or args[0] == "--help"
        )
