"""The macro suite: fastkv and the reference etcd side by side, under the same load.

``python -m bench.macro [--mode short|full|gate] [--keys N] [--runs R] [--only GROUP,...]
[--members M]`` starts both servers with the same flags (bench/servers.py builds them), drives
them with the same load (wrk with one thread and the scripts in bench/lua, or bench/loadgen.py for
watches), alternates them run by run (fastkv, etcd, fastkv, etcd, ...) and prints, for every
workload, the median of each and the ratio fastkv / etcd. The whole result, with the commit, the
machine and the mode, is written as JSON under bench/results/.

Groups: ``get`` (one key, 1/16/64 connections), ``put`` (1/16/64; p50 at 1), ``mixed`` (90 %
GET / 10 % PUT at 64), ``cluster`` (an M-member cluster of each, M = 3 by default: PUT to the
leader and to a follower at 1/16/64, GET at 64 and quorum GET at 16 on the leader), ``watch`` (PUT
until 1/100/1,000/10,000 long-poll watchers have the event), ``memory`` (RSS after N keys, restart
time with N keys and an N/10-entry log).

Only medians and ratios mean anything: absolute figures drift between runs and machines.
"""

from __future__ import annotations

import argparse
import datetime
import http.client
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from bench import servers as srv
from bench.loadgen import watch_fanout

ROOT = Path(__file__).resolve().parent.parent
LUA_DIR = Path(__file__).resolve().parent / "lua"
RESULTS_DIR = Path(__file__).resolve().parent / "results"
SCHEMA = 1
CONTENDERS = ("fastkv", "etcd")
GROUPS = ("get", "put", "mixed", "cluster", "watch", "memory")
RESTART_KEY = "/v2/keys/bench/restart"  # written after the fill; the restart ends when it reads back
MAX_ERROR_SHARE = 0.001  # wrk runs with more failed requests than this are reported as errors
WATCHERS = (1, 100, 1000, 10_000)
LOG_SHARE = 10  # the memory servers snapshot after N - N/LOG_SHARE entries: an N/LOG_SHARE-entry log


@dataclass(frozen=True)
class Workload:
    """One figure compared between the servers. ``better`` is ``higher`` or ``lower``. In
    ``title``, ``N`` stands for the key count and ``M`` for the cluster size of the run."""

    name: str
    group: str
    title: str
    unit: str
    better: str


def _watch_title(watchers: int) -> str:
    return f"PUT until {watchers:,} watcher{'s have' if watchers > 1 else ' has'} it"


WORKLOADS: tuple[Workload, ...] = (
    *(Workload(f"get_c{c}", "get", f"GET one key, {c} conn", "req/s", "higher") for c in (1, 16, 64)),
    *(Workload(f"put_c{c}", "put", f"PUT, {c} conn", "req/s", "higher") for c in (1, 16, 64)),
    Workload("put_c1_p50", "put", "PUT, 1 conn, p50 latency", "ms", "lower"),
    Workload("mixed_c64", "mixed", "90% GET / 10% PUT, 64 conn", "req/s", "higher"),
    *(Workload(f"cluster_put_{to}_c{c}", "cluster", f"M members: PUT to the {to}, {c} conn", "req/s",
               "higher") for to in ("leader", "follower") for c in (1, 16, 64)),
    Workload("cluster_get_c64", "cluster", "M members: GET one key, 64 conn", "req/s", "higher"),
    Workload("cluster_qget_c16", "cluster", "M members: quorum GET, 16 conn", "req/s", "higher"),
    *(Workload(f"watch_{w}", "watch", _watch_title(w), "ms", "lower") for w in WATCHERS),
    Workload("fill", "memory", "writing N distinct keys, 64 conn", "PUT/s", "higher"),
    Workload("rss", "memory", "RSS after N keys", "MB", "lower"),
    Workload("restart", "memory", "restart with N keys and N/10 log entries until a read answers", "s",
             "lower"),
    Workload("rss_restarted", "memory", "RSS after the restart", "MB", "lower"),
)
WORKLOAD_BY_NAME = {w.name: w for w in WORKLOADS}


@dataclass(frozen=True)
class Mode:
    """How long and how often. ``watch`` maps watchers -> (runs per side, PUTs timed per run)."""

    name: str
    runs: int
    duration_s: float
    keys: int
    memory_runs: int
    watch: dict[int, tuple[int, int]] = field(default_factory=dict)


MODES = {
    "gate": Mode("gate", runs=3, duration_s=1.0, keys=20_000, memory_runs=2,
                 watch={1: (3, 5), 100: (3, 3), 1000: (3, 3), 10_000: (1, 3)}),
    "short": Mode("short", runs=3, duration_s=2.0, keys=50_000, memory_runs=2,
                  watch={1: (3, 9), 100: (3, 5), 1000: (3, 3), 10_000: (1, 3)}),
    "full": Mode("full", runs=5, duration_s=10.0, keys=1_000_000, memory_runs=3,
                 watch={1: (5, 21), 100: (5, 11), 1000: (5, 5), 10_000: (3, 3)}),
}


# -- pure: summaries, the result document, the table ---------------------------------------------

def summarize(workload: Workload, runs: dict[str, list[float]], errors: dict[str, int]) -> dict[str, Any]:
    """One workload's entry in the result: every run, the medians and the ratio fastkv / etcd.

    The ratio is ``None`` when either side has no runs or etcd's median is 0.
    """
    medians = {who: statistics.median(runs[who]) if runs.get(who) else None for who in CONTENDERS}
    fk, ref = medians["fastkv"], medians["etcd"]
    ratio = fk / ref if fk is not None and ref else None
    return {
        **asdict(workload),
        **{who: {"runs": list(runs.get(who, [])), "median": medians[who], "errors": errors.get(who, 0)}
           for who in CONTENDERS},
        "ratio": ratio,
    }


def result_document(mode: Mode, settings: dict[str, Any], summaries: list[dict[str, Any]],
                    commit: dict[str, Any], machine: dict[str, Any], started: str) -> dict[str, Any]:
    """The JSON written under bench/results/ (``schema`` 1)."""
    return {"schema": SCHEMA, "started": started, "mode": mode.name, "commit": commit, "machine": machine,
            "settings": {**asdict(mode), **settings}, "workloads": summaries}


def _figure(value: object) -> str:
    if not isinstance(value, int | float):
        return "-"
    if value >= 1000:
        return f"{value:,.0f}"
    return f"{value:.3g}" if value < 10 else f"{value:.1f}"


def workload_title(title: str, settings: dict[str, Any]) -> str:
    """``title`` with ``N`` (keys), ``N/10`` (log entries) and ``M`` (members) filled in."""
    keys = settings["keys"]
    title = title.replace(" N/10 ", f" {keys // LOG_SHARE:,} ").replace(" N ", f" {keys:,} ")
    return title.replace("M members", f"{settings.get('members', 3)} members")


def format_table(doc: dict[str, Any]) -> str:
    """A Markdown table: workload, unit, fastkv, etcd, ratio (and which way is better)."""
    lines = ["| workload | unit | fastkv | etcd | fastkv / etcd |", "|---|---|---:|---:|---:|"]
    for w in doc["workloads"]:
        title = workload_title(w["title"], doc["settings"])
        arrow = "higher is better" if w["better"] == "higher" else "lower is better"
        ratio = "-" if w["ratio"] is None else f"{w['ratio']:.2f} ({arrow})"
        flag = " ⚠ errors" if w["fastkv"]["errors"] or w["etcd"]["errors"] else ""
        lines.append(f"| {title}{flag} | {w['unit']} | {_figure(w['fastkv']['median'])} | "
                     f"{_figure(w['etcd']['median'])} | {ratio} |")
    return "\n".join(lines)


# -- the machine and the commit -------------------------------------------------------------------

def machine_info() -> dict[str, Any]:
    """``uname``, CPU count and model, memory."""
    mem_kb = 0
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemTotal:"):
                mem_kb = int(line.split()[1])
    model = ""
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    u = platform.uname()
    return {"uname": " ".join((u.system, u.node, u.release, u.version, u.machine)), "nproc": os.cpu_count(),
            "cpu": model, "mem_total_mb": mem_kb // 1024, "python": platform.python_version()}


def commit_info() -> dict[str, Any]:
    """The checked-out commit and whether the tree has uncommitted changes."""
    def git(*args: str) -> str:
        done = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, check=False)
        return done.stdout.strip()

    dirty = bool(git("status", "--porcelain", "--untracked-files=no"))
    return {"sha": git("rev-parse", "HEAD"), "dirty": dirty}


# -- servers --------------------------------------------------------------------------------------

def make_server(who: str, candidate: str, tmp: Path, name: str, extra: list[str] | None = None) -> srv.Server:
    """A single server for one side (not started). ``candidate="etcd"`` puts a second reference
    etcd in fastkv's slot (an A/A run, for working on the runner itself)."""
    return srv.single(who if who == "etcd" else candidate, tmp, name, extra)


def make_cluster(who: str, candidate: str, tmp: Path, members: int) -> list[srv.Server]:
    """An ``members``-member cluster for one side (not started), as ``make_server``."""
    return srv.cluster(who if who == "etcd" else candidate, tmp, members, prefix=f"{who}-m")


def tree_rss_mb(pid: int) -> float:
    """Resident memory of a process and all its descendants, in MB (10^6 bytes)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry))
    total_kb, todo = 0, [pid]
    while todo:
        p = todo.pop()
        todo += children.get(p, [])
        try:
            with open(f"/proc/{p}/status") as f:
                total_kb += next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))
        except (OSError, StopIteration):
            continue
    return total_kb * 1024 / 1e6


def put_key(server: srv.Server, path: str, value: str) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", server.client_port, timeout=10)
    try:
        conn.request("PUT", path, body=f"value={value}",
                     headers={"Content-Type": "application/x-www-form-urlencoded"})
        status = conn.getresponse().status
    finally:
        conn.close()
    if status not in (200, 201):
        raise RuntimeError(f"PUT {path} answered {status}")


# -- load -------------------------------------------------------------------------------------------

def _wrk_env() -> dict[str, str]:
    return {**os.environ, "LUA_PATH": f"{LUA_DIR}/?.lua;;"}


def wrk(server: srv.Server, script: str, connections: int, duration_s: float,
        *args: object) -> dict[str, float]:
    """One wrk run (one thread); the figures its script's ``done`` printed."""
    cmd = ["wrk", "-t1", f"-c{connections}", f"-d{duration_s:g}s", "--timeout", "10s",
           "-s", str(LUA_DIR / script), server.url, "--", *map(str, args)]
    out = subprocess.run(cmd, capture_output=True, text=True, env=_wrk_env(), check=True).stdout
    line = next((x for x in out.splitlines() if x.startswith("BENCH ")), None)
    if line is None:
        raise RuntimeError(f"wrk printed no result:\n{out}")
    result: dict[str, float] = json.loads(line[6:])
    result["rate"] = result["requests"] / (result["duration_us"] / 1e6)
    result["failed"] = result["status_errors"] + result["connect_errors"] + result["timeouts"]
    return result


def fill(server: srv.Server, count: int, connections: int = 64) -> float:
    """Write ``count`` distinct keys (bench/lua/fill.lua); PUTs per second."""
    cmd = ["wrk", "-t1", f"-c{connections}", "-d3600s", "--timeout", "10s", "-s", str(LUA_DIR / "fill.lua"),
           server.url, "--", str(count)]
    started = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True, env=_wrk_env(), check=False)
    elapsed = time.perf_counter() - started
    if done.returncode != 0:
        raise RuntimeError(f"filling {server.kind} failed ({done.returncode}): {done.stderr[-2000:]}")
    if done.stderr.strip():
        log(f"  filling {server.kind}: {done.stderr.strip().splitlines()[-1]}")
    return count / elapsed


# -- the phases ---------------------------------------------------------------------------------

class Recorder:
    """Collects every run of every workload, per side."""

    def __init__(self) -> None:
        self.runs: dict[str, dict[str, list[float]]] = {}
        self.errors: dict[str, dict[str, int]] = {}

    def add(self, name: str, who: str, value: float, errors: int = 0) -> None:
        self.runs.setdefault(name, {}).setdefault(who, []).append(value)
        side = self.errors.setdefault(name, {})
        side[who] = side.get(who, 0) + errors

    def summaries(self) -> list[dict[str, Any]]:
        return [summarize(w, self.runs[w.name], self.errors.get(w.name, {})) for w in WORKLOADS
                if w.name in self.runs]


@dataclass(frozen=True)
class WrkSpec:
    """A wrk workload: ``read_percent`` of GETs (with ``read_query``; the rest PUTs over ``keys``
    keys), sent to the ``target`` of each side: ``single`` (the one server), ``leader`` or
    ``follower`` (of the cluster)."""

    group: str
    connections: int
    read_percent: int
    keys: int
    figures: tuple[tuple[str, str], ...]  # (workload name, "rate" | "p50_ms")
    target: str = "single"
    read_query: str = ""


WRK_SPECS: tuple[WrkSpec, ...] = (
    *(WrkSpec("get", c, 100, 1, ((f"get_c{c}", "rate"),)) for c in (1, 16, 64)),
    WrkSpec("put", 1, 0, 1000, (("put_c1", "rate"), ("put_c1_p50", "p50_ms"))),
    *(WrkSpec("put", c, 0, 1000, ((f"put_c{c}", "rate"),)) for c in (16, 64)),
    WrkSpec("mixed", 64, 90, 1000, (("mixed_c64", "rate"),)),
    *(WrkSpec("cluster", c, 0, 1000, ((f"cluster_put_{to}_c{c}", "rate"),), to)
      for to in ("leader", "follower") for c in (1, 16, 64)),
    WrkSpec("cluster", 64, 100, 1, (("cluster_get_c64", "rate"),), "leader"),
    WrkSpec("cluster", 16, 100, 1, (("cluster_qget_c16", "rate"),), "leader", "?quorum=true"),
)


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def alternate(runs: int, servers: dict[str, Any]) -> Iterable[tuple[int, str, Any]]:
    """(run, side, server) in the order fastkv, etcd, fastkv, etcd, ..."""
    for run in range(runs):
        for who in CONTENDERS:
            yield run, who, servers[who]


def prepare(server: srv.Server) -> None:
    """The key GETs read, and a one-second GET and PUT warm-up (not recorded)."""
    put_key(server, "/v2/keys/bench/k0", "v" * 32)
    wrk(server, "kv.lua", 16, 1, 100, 1)
    wrk(server, "kv.lua", 16, 1, 0, 1000)


def wrk_phase(targets: dict[str, dict[str, srv.Server]], mode: Mode, specs: Iterable[WrkSpec],
              rec: Recorder) -> None:
    """Run ``specs`` alternating the sides; ``targets[who][spec.target]`` is the server a spec loads."""
    for spec in specs:
        for run, who, side in alternate(mode.runs, targets):
            result = wrk(side[spec.target], "kv.lua", spec.connections, mode.duration_s, spec.read_percent,
                         spec.keys, spec.read_query)
            bad = int(result["failed"] > MAX_ERROR_SHARE * max(result["requests"], 1))
            for name, figure in spec.figures:
                value = result["p50_us"] / 1000 if figure == "p50_ms" else result["rate"]
                rec.add(name, who, value, bad)
            log(f"  {spec.figures[0][0]} run {run + 1} {who}: {result['rate']:,.0f} req/s, "
                f"p50 {result['p50_us'] / 1000:.2f} ms, failed {result['failed']}")


def watch_phase(servers: dict[str, srv.Server], mode: Mode, rec: Recorder) -> None:
    srv.raise_open_file_limit(max(mode.watch, default=0) + 1024)
    for watchers, (runs, samples) in mode.watch.items():
        for run, who, server in alternate(runs, servers):
            times = watch_fanout("127.0.0.1", server.client_port, watchers, samples)
            rec.add(f"watch_{watchers}", who, statistics.median(times) * 1000)
            log(f"  watch {watchers} run {run + 1} {who}: median {statistics.median(times) * 1000:.2f} ms")


def single_phase(mode: Mode, groups: set[str], candidate: str, tmp: Path, rec: Recorder) -> None:
    """The single-server groups: wrk workloads and watches, on one server of each side."""
    servers = {who: make_server(who, candidate, tmp, who) for who in CONTENDERS}
    if "watch" in groups:
        srv.raise_open_file_limit(max(mode.watch, default=0) + 1024)  # inherited by the servers
    try:
        srv.start_all(list(servers.values()))
        for server in servers.values():
            prepare(server)
        log("throughput, one member (wrk, one thread):")
        wrk_phase({who: {"single": s} for who, s in servers.items()}, mode,
                  (spec for spec in WRK_SPECS if spec.target == "single" and spec.group in groups), rec)
        if "watch" in groups:
            log("watch fan-out:")
            watch_phase(servers, mode, rec)
    finally:
        srv.stop_all(list(servers.values()))


def cluster_phase(mode: Mode, members: int, candidate: str, tmp: Path, rec: Recorder) -> None:
    """The cluster group: an ``members``-member cluster of each side, both running side by side."""
    clusters = {who: make_cluster(who, candidate, tmp, members) for who in CONTENDERS}
    try:
        for cluster in clusters.values():
            srv.start_all(cluster)
        targets = {}
        for who, cluster in clusters.items():
            leader = srv.leader(cluster)
            follower = next(m for m in cluster if m is not leader)
            targets[who] = {"leader": leader, "follower": follower}
            prepare(leader)
            log(f"  {who}: leader {leader.name}, follower {follower.name}")
        log(f"throughput, {members} members (wrk, one thread):")
        wrk_phase(targets, mode, (spec for spec in WRK_SPECS if spec.group == "cluster"), rec)
    finally:
        for cluster in clusters.values():
            srv.stop_all(cluster)


def snapshot_count(keys: int) -> int:
    """The ``--snapshot-count`` of the memory servers: the last snapshot leaves N/10 entries in the
    log after a fill of N keys."""
    return max(1, keys - keys // LOG_SHARE)


def memory_phase(mode: Mode, candidate: str, tmp: Path, rec: Recorder) -> None:
    """Per run and side: a fresh server, N keys, RSS, a restart timed until a key reads back."""
    extra = ["--snapshot-count", str(snapshot_count(mode.keys))]
    for run, who in ((r, w) for r in range(mode.memory_runs) for w in CONTENDERS):
        server = make_server(who, candidate, tmp, f"{who}-mem{run}", extra)
        try:
            server.start()
            rate = fill(server, mode.keys)
            put_key(server, RESTART_KEY, "after the fill")
            rss = tree_rss_mb(server.pid)
            server.stop()
            restart = server.timed_start(RESTART_KEY)
            rss_restarted = tree_rss_mb(server.pid)
        finally:
            server.stop()
            shutil.rmtree(server.data_dir, ignore_errors=True)
        figures = {"fill": rate, "rss": rss, "restart": restart, "rss_restarted": rss_restarted}
        for name, value in figures.items():
            rec.add(name, who, value)
        log(f"  memory run {run + 1} {who}: fill {rate:,.0f}/s, RSS {rss:.0f} MB, restart {restart:.2f} s, "
            f"RSS after restart {rss_restarted:.0f} MB")


def run_suite(mode: Mode, groups: set[str], candidate: str = "fastkv", results_dir: Path = RESULTS_DIR,
              workdir: Path | None = None, members: int = 3) -> tuple[dict[str, Any], Path]:
    """Run the chosen groups, write the JSON result and return it with its path."""
    started = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    commit = commit_info()
    with tempfile.TemporaryDirectory(prefix="fastkv-bench-", dir=workdir) as tmp_name:
        tmp = Path(tmp_name)
        rec = Recorder()
        if groups & {"get", "put", "mixed", "watch"}:
            single_phase(mode, groups, candidate, tmp, rec)
        if "cluster" in groups:
            cluster_phase(mode, members, candidate, tmp, rec)
        if "memory" in groups:
            log(f"memory and restart with {mode.keys:,} keys:")
            memory_phase(mode, candidate, tmp, rec)
    settings = {"groups": sorted(groups), "candidate": candidate, "members": members,
                "snapshot_count": snapshot_count(mode.keys)}
    doc = result_document(mode, settings, rec.summaries(), commit, machine_info(), started)
    results_dir.mkdir(parents=True, exist_ok=True)
    path = results_dir / f"{started.replace(':', '')}-{mode.name}-{str(commit['sha'])[:8]}.json"
    path.write_text(json.dumps(doc, indent=1) + "\n")
    return doc, path


# -- command line -------------------------------------------------------------------------------

def parse_groups(text: str) -> set[str]:
    groups = {g.strip() for g in text.split(",") if g.strip()}
    unknown = groups - set(GROUPS)
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown group(s) {', '.join(sorted(unknown))}; "
                                         f"known: {', '.join(GROUPS)}")
    return groups


def check_members(members: int) -> None:
    """The cluster group needs a cluster: 2 members or more."""
    if members < 2:
        raise SystemExit(f"--members {members}: the cluster workloads need at least 2 members "
                         "(the single-member workloads are the other groups)")


def parser(description: str = __doc__.split("\n\n")[0]) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--mode", choices=sorted(MODES), default="short")
    p.add_argument("--keys", type=int, help="keys for the memory and restart workloads (default: by mode)")
    p.add_argument("--runs", type=int, help="runs per side of each wrk workload (default: by mode)")
    p.add_argument("--memory-runs", type=int, help="runs per side of the memory group (default: by mode)")
    p.add_argument("--duration", type=float, help="seconds per wrk run (default: by mode)")
    p.add_argument("--only", type=parse_groups, default=set(GROUPS), help=f"groups, of {','.join(GROUPS)}")
    p.add_argument("--members", type=int, default=3, help="members of the clusters of the cluster group")
    p.add_argument("--candidate", choices=("fastkv", "etcd"), default="fastkv",
                   help="what runs in fastkv's slot; 'etcd' only for working on this runner")
    p.add_argument("--results-dir", type=Path, default=RESULTS_DIR)
    return p


def mode_from(args: argparse.Namespace) -> Mode:
    base = MODES[args.mode]
    return Mode(base.name, args.runs or base.runs, args.duration or base.duration_s, args.keys or base.keys,
                args.memory_runs or base.memory_runs, base.watch)


Runner = Callable[..., tuple[dict[str, Any], Path]]


def main(argv: list[str] | None = None, run: Runner = run_suite) -> int:
    args = parser().parse_args(argv)
    if "cluster" in args.only:
        check_members(args.members)
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is not installed: apt-get install -y wrk")
    mode = mode_from(args)
    doc, path = run(mode, args.only, args.candidate, args.results_dir, members=args.members)
    print(format_table(doc))
    print(f"\nresult: {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
