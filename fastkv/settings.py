"""The server's configuration, as etcd's flags describe it.

``fastkv.cli`` turns command-line flags and ``ETCD_*`` variables into one ``Settings``;
everything below the command line takes a ``Settings`` and never reads flags or the
environment itself.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Settings:
    """Everything a member needs to start. Defaults are etcd 3.4's, with two of fastkv's own:
    the data directory is ``default.fastkv`` and clients are also served on the legacy port
    4001 (listened on, not advertised).

    URLs keep etcd's spelling (``http://host:port``); ``initial_cluster`` maps a member
    name to its peer URLs in the order given. The default URLs are spelled exactly as etcd
    spells them (``http://localhost:...``): the member and cluster ids are computed from
    these strings and ``/v2/members`` and ``/v2/machines`` show them, so a member started
    without flags has etcd's ids and answers. A client listener given ``localhost`` binds
    127.0.0.1; the peer listener binds what ``localhost`` resolves to.
    """

    name: str = "default"
    data_dir: str = "default.fastkv"
    listen_client_urls: tuple[str, ...] = ("http://localhost:2379", "http://localhost:4001")
    advertise_client_urls: tuple[str, ...] = ("http://localhost:2379",)
    listen_peer_urls: tuple[str, ...] = ("http://localhost:2380",)
    initial_advertise_peer_urls: tuple[str, ...] = ("http://localhost:2380",)
    initial_cluster: tuple[tuple[str, tuple[str, ...]], ...] = (("default", ("http://localhost:2380",)),)
    initial_cluster_state: str = "new"
    initial_cluster_token: str = "etcd-cluster"
    heartbeat_interval_ms: int = 100
    election_timeout_ms: int = 1000
    snapshot_count: int = 100000
    discovery: str = ""
    discovery_fallback: str = "proxy"
    discovery_proxy: str = ""
    discovery_srv: str = ""
    cors: tuple[str, ...] = ("*",)
    strict_reconfig_check: bool = True
    log_level: str = "info"
    extra: dict[str, str] = field(default_factory=dict)
