"""fastkv: a drop-in etcd v2 server with a compiled core."""

__version__ = "0.1.0"
ETCD_SERVER_VERSION = "3.4.23"
ETCD_CLUSTER_VERSION = "3.4.0"
