"""The differential suite: the same requests to the reference etcd and to fastkv, compared."""
