"""Benchmarks: compiled-core micro benchmarks and the fastkv-versus-etcd macro suite.

``pytest bench --benchmark-only`` runs the micro benchmarks; ``python -m bench.macro`` the macro
suite; ``python -m bench.gate`` the release gate (a short macro run checked against
``bench/floors.toml``). See docs/performance.md.
"""
