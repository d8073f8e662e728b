"""The fleet scale benchmark's arithmetic and result shape, and its in-memory runtime, without servers."""

from __future__ import annotations

import asyncio

import pytest

from bench import fleet_scale as fs
from bench import macro
from fleetd.etcd import EtcdResult
from fleetd.job import UnitState
from fleetd.registry.layout import Layout, encode_job_object, encode_unit_state
from fleetd.runtime.base import NOT_FOUND, UnitRuntimeError, UnitRuntimeState
from fleetd.unit import UnitFile

METRICS = """# HELP etcd_http_received_total Counter of requests received into the system.
# TYPE etcd_http_received_total counter
etcd_http_received_total{method="GET"} 12
etcd_http_received_total{method="PUT"} 5
etcd_http_received_total{method="QGET"} 3
etcd_http_successful_duration_seconds_count{method="GET"} 99
"""


def test_received_requests_are_read_per_method_and_grow_between_two_reads() -> None:
    before = fs.received_by_method(METRICS)
    assert before == {"GET": 12.0, "PUT": 5.0, "QGET": 3.0}
    after = {**before, "GET": 20.0, "DELETE": 1.0}
    assert fs.counts_between(before, after) == {"DELETE": 1.0, "GET": 8.0, "PUT": 0.0, "QGET": 0.0}


def test_request_kinds() -> None:
    assert fs.request_kind("GET", {"wait": "true"}, watch=True) == "WATCH"
    assert fs.request_kind("GET", {"quorum": "true", "recursive": "true"}, watch=False) == "QGET"
    assert fs.request_kind("GET", {}, watch=False) == "GET"
    assert fs.request_kind("PUT", {"value": "x"}, watch=False) == "PUT"
    assert set(fs.KINDS) == {"GET", "QGET", "WATCH", "PUT", "DELETE"}


def test_a_unit_counts_as_launched_only_when_its_target_reports_it_running() -> None:
    schedule = {"a.service": "m1", "b.service": "m2", "c.service": "m1"}
    states = [UnitState("a.service", "m1", "", "loaded", "active", "running"),
              UnitState("b.service", "m1", "", "loaded", "active", "running"),  # not its target
              UnitState("c.service", "m1", "", "loaded", "inactive", "dead"),
              UnitState("d.service", "m1", "", "loaded", "active", "running")]  # not scheduled
    assert fs.launched_count(schedule, states) == 1


def _event(action: str, key: str, value: str | None = None, index: int = 10) -> EtcdResult:
    node = {"key": fs.PREFIX + key, "modifiedIndex": index, **({"value": value} if value is not None else {})}
    return EtcdResult(action, node, etcd_index=index)


def test_the_launch_tracker_follows_schedule_and_states_from_watch_events() -> None:
    tracker = fs.LaunchTracker(Layout(fs.PREFIX))
    tracker.reset(None, None)
    running = encode_unit_state(UnitState("a.service", "m1", "", "loaded", "active", "running"))
    for event in (_event("set", "job/a.service/target", "m1"),
                  _event("set", "states/a.service/m1", running),
                  _event("set", "job/b.service/target", "m2"),
                  _event("set", "job/a.service/job-state", "m1")):
        tracker.apply(event)
    assert tracker.schedule == {"a.service": "m1", "b.service": "m2"} and tracker.launched() == 1
    tracker.apply(_event("expire", "states/a.service/m1"))
    assert tracker.launched() == 0
    tracker.apply(_event("set", "states/a.service/m1", running))
    tracker.apply(_event("delete", "job/a.service"))  # destroyed: no longer scheduled
    assert tracker.schedule == {"b.service": "m2"} and tracker.launched() == 0
    tracker.apply(_event("delete", "states/a.service"))
    assert tracker.states == {}
    job_object = encode_job_object("c.service", UnitFile.from_text(fs.UNIT_TEXT).hash)
    running_c = encode_unit_state(UnitState("c.service", "m3", "", "loaded", "active", "running"))
    root = {"key": fs.PREFIX.rstrip("/"), "dir": True, "nodes": [
        {"key": fs.PREFIX + "job", "dir": True, "nodes": [
            {"key": fs.PREFIX + "job/c.service", "dir": True, "nodes": [
                {"key": fs.PREFIX + "job/c.service/object", "value": job_object},
                {"key": fs.PREFIX + "job/c.service/target", "value": "m3"}]}]},
        {"key": fs.PREFIX + "states", "dir": True, "nodes": [
            {"key": fs.PREFIX + "states/c.service", "dir": True, "nodes": [
                {"key": fs.PREFIX + "states/c.service/m3", "value": running_c}]}]}]}
    tracker.apply(EtcdResult("get", root, etcd_index=20))  # a re-read replaces everything
    assert tracker.schedule == {"c.service": "m3"} and tracker.launched() == 1


def test_reconcile_figures_split_launch_from_steady_state() -> None:
    rounds = [(1.0, 0.5, 40), (2.0, 2.0, 10), (3.0, 0.1, 0), (5.0, 0.02, 0), (6.0, 0.04, 0), (7.0, 0.9, 3),
              (8.0, 0.03, 0)]
    figures = fs.reconcile_figures(rounds, launched_at=3.0)
    assert figures == {"reconcile_steady": pytest.approx(30.0), "reconcile_launch_max": pytest.approx(2000.0)}
    assert fs.reconcile_figures([], 3.0) == {"reconcile_steady": None, "reconcile_launch_max": None}


def measured(registry: str, scale: float) -> fs.Measurement:
    return fs.Measurement(registry, {"launch": 10.0 * scale, "submit": 1.0 * scale,
                                     "steady_rps": 100.0 * scale, "reconcile_steady": 5.0 * scale,
                                     "reconcile_launch_max": None})


def test_summaries_put_fastkv_and_its_cluster_against_the_same_etcd_figures() -> None:
    rows = {row["name"]: row for row in fs.summaries([measured("fastkv", 1.0), measured("etcd", 2.0),
                                                      measured("fastkv3", 4.0)])}
    names = [f.name for f in fs.FIGURES]
    assert list(rows) == names + [f"{name}_3m" for name in names]
    launch = rows["launch"]
    assert (launch["fastkv"]["median"], launch["etcd"]["median"], launch["ratio"]) == (10.0, 20.0, 0.5)
    assert (rows["launch_3m"]["fastkv"]["median"], rows["launch_3m"]["ratio"]) == (40.0, 2.0)
    assert rows["launch_3m"]["title"].endswith("(fastkv: 3 members)")
    assert rows["reconcile_launch_max"]["ratio"] is None
    assert rows["reconcile_launch_max"]["fastkv"]["runs"] == []


def test_without_etcd_the_ratios_are_missing_and_an_unmeasured_cluster_has_no_rows() -> None:
    rows = fs.summaries([measured("fastkv", 1.0)])
    assert [row["name"] for row in rows] == [f.name for f in fs.FIGURES]
    assert all(row["ratio"] is None for row in rows)


def test_the_document_is_the_macro_format_and_its_table_names_the_scale() -> None:
    scale = fs.Scale(units=200, machines=10, processes=2, agent_ttl=6.0, window=6.0)
    mode = macro.Mode("fleet-short", runs=1, duration_s=6.0, keys=200, memory_runs=0)
    doc = macro.result_document(mode, {"registries": ["fastkv", "etcd"]},
                                fs.summaries([measured("fastkv", 1.0), measured("etcd", 2.0)]),
                                {"sha": "0" * 40, "dirty": False}, {}, "2026-01-01T00:00:00Z")
    table = macro.format_table(fs.titles_for(scale, doc))
    row = "| submit and start 200 units on 10 machines until all report active | s | 10.0 | 20.0 | 0.50"
    assert row in table
    assert doc["workloads"][0]["title"].startswith("submit and start U units on M machines")


def test_parse_registries() -> None:
    assert fs.parse_registries("fastkv, etcd") == ["fastkv", "etcd"]
    with pytest.raises(Exception, match="unknown registry zk"):
        fs.parse_registries("etcd,zk")


def test_recording_runtime_keeps_the_runtime_contract() -> None:
    async def scenario() -> None:
        runtime = fs.RecordingRuntime()
        unit = UnitFile.from_text("[Service]\nExecStart=/bin/sleep 1\n")
        with pytest.raises(UnitRuntimeError):
            await runtime.start("a.service")
        await runtime.load("a.service", unit)
        assert await runtime.states(["a.service", "b.service"]) == {
            "a.service": UnitRuntimeState("loaded", "inactive", "dead"), "b.service": NOT_FOUND}
        await runtime.start("a.service")
        assert await runtime.states() == {"a.service": UnitRuntimeState("loaded", "active", "running")}
        assert await runtime.units() == {"a.service": unit.hash.hex}
        await runtime.stop("a.service")
        assert (await runtime.states())["a.service"].active_state == "inactive"
        await runtime.unload("a.service")
        assert await runtime.states(["a.service"]) == {"a.service": NOT_FOUND}
        assert await runtime.status("a.service") is None
        assert [line async for line in runtime.journal("a.service")] == []
    asyncio.run(scenario())
