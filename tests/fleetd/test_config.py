"""fleetd's settings: fleet.conf keys, FLEET_* variables, defaults and precedence, and the additions."""

from __future__ import annotations

from pathlib import Path

import pytest

from fleetd.config import (
    ConfigError,
    FleetConfig,
    ListenAddress,
    load_config,
    parse_config,
    parse_go_duration,
    read_machine_id,
    systemd_booted,
    systemd_on_bus,
)
from fleetd.engine.plan import EngineConfig


def test_defaults_are_fleets() -> None:
    config = parse_config()
    assert config.etcd_servers == ("http://127.0.0.1:2379", "http://127.0.0.1:4001")
    assert config.etcd_key_prefix == "/_coreos.com/fleet/"
    assert config.etcd_request_timeout == 1.0
    assert (config.engine_reconcile_interval, config.agent_ttl) == (2.0, 30.0)
    assert config.lease_ttl == 10.0
    assert (config.units_directory, config.token_limit, config.verbosity) == ("/run/fleet/units/", 100, 0)
    assert not (config.systemd_user or config.enable_grpc or config.disable_engine or config.disable_watches)
    assert config.metadata == {} and config.public_ip == ""
    assert config.api_listen == (ListenAddress(path="/var/run/fleet.sock"),)
    assert config.machine_id_file == "/etc/machine-id"
    assert config.reschedule_grace_period == 0.0
    assert not config.keep_units_on_exit
    assert config == FleetConfig()


def test_file_values_in_fleets_syntax() -> None:
    config = parse_config(
        "# fleet.conf\n"
        "; another comment\n"
        'etcd_servers=["http://10.0.0.1:2379", "http://10.0.0.2:2379"]\n'
        'metadata="region=us-west, az = 1,region=us-east"\n'
        "agent_ttl = 1m30s\n"
        "engine_reconcile_interval=8\n"
        "etcd_request_timeout=3.5\n"
        "disable_engine=true\n"
        "token_limit=50\n"
        'public_ip="10.0.0.5"\n')
    assert config.etcd_servers == ("http://10.0.0.1:2379", "http://10.0.0.2:2379")
    assert config.metadata == {"region": "us-east", "az": "1"}
    assert (config.agent_ttl, config.engine_reconcile_interval, config.lease_ttl) == (90.0, 8.0, 40.0)
    assert (config.etcd_request_timeout, config.disable_engine, config.token_limit) == (3.5, True, 50)
    assert config.public_ip == "10.0.0.5"
    assert parse_config("etcd_servers=http://a:1,http://b:2").etcd_servers == ("http://a:1", "http://b:2")


def test_environment_overrides_the_file_and_empty_variables_do_not() -> None:
    text = "agent_ttl=10s\nverbosity=1\npublic_ip=1.1.1.1\n"
    env = {"FLEET_AGENT_TTL": "3s", "FLEET_PUBLIC_IP": "", "FLEET_ETCD_SERVERS": "http://e:2379",
           "FLEET_DISABLE_WATCHES": "1", "OTHER": "x"}
    config = parse_config(text, env)
    assert (config.agent_ttl, config.verbosity, config.public_ip) == (3.0, 1, "1.1.1.1")
    assert config.etcd_servers == ("http://e:2379",) and config.disable_watches


def test_keep_units_on_exit_from_the_file_or_the_environment() -> None:
    assert parse_config("keep_units_on_exit = true\n").keep_units_on_exit
    assert parse_config("", {"FLEET_KEEP_UNITS_ON_EXIT": "1"}).keep_units_on_exit
    overridden = parse_config("keep_units_on_exit=true", {"FLEET_KEEP_UNITS_ON_EXIT": "false"})
    assert not overridden.keep_units_on_exit
    with pytest.raises(ConfigError, match="keep_units_on_exit"):
        parse_config("keep_units_on_exit=sometimes")


def test_invalid_values_name_the_key() -> None:
    for text, key in [("agent_ttl=30", "agent_ttl"), ("disable_engine=yes", "disable_engine"),
                      ("token_limit=many", "token_limit"), ("runtime=lxc", "runtime"),
                      ("api_listen=nowhere", "api_listen"),
                      ("etcd_request_timeout=0", "etcd_request_timeout")]:
        with pytest.raises(ConfigError, match=key):
            parse_config(text)


def test_deprecated_and_unknown_keys_are_ignored_with_a_warning() -> None:
    text = "verify_units=true\nauthorized_keys_file=/x\nbogus=1\n"
    config = parse_config(text, {"FLEET_VERIFY_UNITS": "1"})
    assert config == FleetConfig()
    assert set(config.warnings) == {"verify_units is deprecated and ignored",
                                    "authorized_keys_file is deprecated and ignored", "unknown option bogus"}


def test_go_durations() -> None:
    assert parse_go_duration("30s") == 30.0
    assert parse_go_duration("1h2m3.5s") == 3723.5
    assert parse_go_duration("500ms") == 0.5
    assert parse_go_duration("0") == 0.0
    for bad in ("30", "", "s", "1x", "1s x"):
        with pytest.raises(ValueError):
            parse_go_duration(bad)


def test_several_machines_on_one_host() -> None:
    config = parse_config(
        "machine_id=aaaaaaaa00000000000000000000000a\n"
        "api_listen=unix:/tmp/m1/fleet.sock, 127.0.0.1:54728, :49153, [::1]:1\n"
        "units_directory=/tmp/m1/units\n"
        "reschedule_grace_period=1m\n", systemd_booted=True)
    assert read_machine_id(config) == "aaaaaaaa00000000000000000000000a"
    assert config.api_listen == (ListenAddress(path="/tmp/m1/fleet.sock"),
                                 ListenAddress(host="127.0.0.1", port=54728),
                                 ListenAddress(port=49153), ListenAddress(host="::1", port=1))
    assert [str(a) for a in config.api_listen[:2]] == ["unix:/tmp/m1/fleet.sock", "127.0.0.1:54728"]
    assert config.engine_config() == EngineConfig(grace=60.0)
    assert config.runtime == "systemd"  # auto on a systemd host
    assert parse_config(systemd_booted=False).runtime == "supervisor"
    assert parse_config("runtime=docker", systemd_booted=True).runtime == "docker"
    assert parse_config("reschedule_grace_period=45").reschedule_grace_period == 45.0
    assert config.layout().job_dir("a.service") == "/_coreos.com/fleet/job/a.service"


def test_load_config_and_machine_id_files(tmp_path: Path) -> None:
    conf = tmp_path / "fleet.conf"
    conf.write_text("etcd_key_prefix=/other/\nmachine_id_file=%s\n" % (tmp_path / "machine-id"))
    (tmp_path / "machine-id").write_text("3d1219c7c4c5404aaa1f6d2a48adfda4\n")
    config = load_config(str(conf), {"FLEET_VERBOSITY": "2"})
    assert (config.etcd_key_prefix, config.verbosity) == ("/other/", 2)
    assert read_machine_id(config) == "3d1219c7c4c5404aaa1f6d2a48adfda4"
    (tmp_path / "machine-id").write_text("\n")
    with pytest.raises(ConfigError, match="empty"):
        read_machine_id(config)
    with pytest.raises(ConfigError, match="cannot read"):
        read_machine_id(parse_config(f"machine_id_file={tmp_path / 'absent'}"))
    with pytest.raises(ConfigError, match="cannot read config file"):
        load_config(str(tmp_path / "absent.conf"), {})


def test_auto_runtime_asks_the_system_bus_first(tmp_path: Path) -> None:
    """systemd on the bus decides; only a bus that cannot be asked falls back to /run/systemd/system."""
    run_dir = tmp_path / "run-systemd-system"
    assert systemd_booted(lambda: True, str(run_dir))
    assert not systemd_booted(lambda: False, str(run_dir))
    assert not systemd_booted(lambda: None, str(run_dir))
    run_dir.mkdir()
    assert systemd_booted(lambda: None, str(run_dir))
    assert not systemd_booted(lambda: False, str(run_dir))


def test_a_bus_that_cannot_be_asked_gives_no_answer(tmp_path: Path) -> None:
    assert systemd_on_bus(f"unix:path={tmp_path / 'no-bus'}", timeout=1.0) is None
