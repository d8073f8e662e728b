"""The release gate's arithmetic and the macro result's shape, without running any server."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from bench import chart, gate, macro

MODE = macro.MODES["short"]
MACHINE = {"uname": "Linux", "nproc": 2, "cpu": "", "mem_total_mb": 1, "python": "3.11"}


def summary(name: str, fastkv: list[float], etcd: list[float], errors: int = 0) -> dict[str, Any]:
    return macro.summarize(macro.WORKLOAD_BY_NAME[name], {"fastkv": fastkv, "etcd": etcd}, {"fastkv": errors})


def document(*summaries: dict[str, Any], candidate: str = "fastkv") -> dict[str, Any]:
    return macro.result_document(MODE, {"groups": list(macro.GROUPS), "candidate": candidate, "members": 1},
                                 list(summaries), {"sha": "0" * 40, "dirty": False},
                                 MACHINE,
                                 "2026-01-01T00:00:00Z")


# -- summaries and the result document ------------------------------------------------------------

def test_summary_holds_every_run_the_medians_and_their_ratio() -> None:
    s = summary("get_c64", [30.0, 10.0, 20.0], [10.0, 5.0, 40.0])
    assert s["fastkv"] == {"runs": [30.0, 10.0, 20.0], "median": 20.0, "errors": 0}
    assert s["etcd"] == {"runs": [10.0, 5.0, 40.0], "median": 10.0, "errors": 0}
    assert s["ratio"] == 2.0
    assert (s["name"], s["unit"], s["better"]) == ("get_c64", "req/s", "higher")


def test_even_number_of_runs_takes_the_middle_mean() -> None:
    assert summary("rss", [1.0, 3.0], [2.0, 2.0])["ratio"] == 1.0


def test_a_side_without_runs_has_no_ratio() -> None:
    assert summary("restart", [1.0], [])["ratio"] is None
    assert summary("restart", [1.0], [0.0])["ratio"] is None


def test_result_document_is_json_with_commit_machine_mode_and_settings() -> None:
    doc = json.loads(json.dumps(document(summary("put_c1", [2.0], [1.0]))))
    assert doc["schema"] == 1
    assert doc["mode"] == "short"
    assert set(doc["commit"]) == {"sha", "dirty"}
    assert {"uname", "nproc", "mem_total_mb"} <= set(doc["machine"])
    assert doc["settings"]["keys"] == MODE.keys and doc["settings"]["runs"] == MODE.runs
    assert doc["settings"]["candidate"] == "fastkv"
    assert [w["name"] for w in doc["workloads"]] == ["put_c1"]


def test_machine_and_commit_are_read_from_this_machine_and_checkout() -> None:
    machine = macro.machine_info()
    assert machine["nproc"] and machine["mem_total_mb"] > 0 and machine["uname"].startswith("Linux")
    assert len(str(macro.commit_info()["sha"])) == 40


def test_table_shows_both_medians_and_the_ratio_with_its_direction() -> None:
    table = macro.format_table(document(summary("get_c64", [33000.0], [16500.0]),
                                        summary("rss", [50.0], [100.0], errors=1)))
    lines = table.splitlines()
    assert lines[2] == "| GET one key, 64 conn | req/s | 33,000 | 16,500 | 2.00 (higher is better) |"
    assert lines[3].startswith(f"| RSS after {MODE.keys:,} keys ⚠ errors | MB | 50.0 | 100.0 | 0.50 (lower")


def test_every_workload_has_a_direction_and_a_group() -> None:
    for w in macro.WORKLOADS:
        assert w.better in ("higher", "lower")
        assert w.group in macro.GROUPS
    spec_figures = {name for spec in macro.WRK_SPECS for name, _ in spec.figures}
    assert spec_figures <= set(macro.WORKLOAD_BY_NAME)


def test_every_workload_is_measured_by_some_phase() -> None:
    """wrk specs, the watch counts of every mode and the memory figures cover all workloads."""
    spec_figures = {name for spec in macro.WRK_SPECS for name, _ in spec.figures}
    for mode in macro.MODES.values():
        watches = {f"watch_{w}" for w in mode.watch}
        memory = {"fill", "rss", "restart", "rss_restarted"}
        assert spec_figures | watches | memory == set(macro.WORKLOAD_BY_NAME), mode.name


def test_cluster_specs_load_the_leader_or_a_follower_and_single_ones_the_server() -> None:
    for spec in macro.WRK_SPECS:
        assert spec.target == ("single" if spec.group != "cluster" else spec.target)
        assert spec.target in (("leader", "follower") if spec.group == "cluster" else ("single",))
    [qget] = [s for s in macro.WRK_SPECS if s.figures[0][0] == "cluster_qget_c16"]
    assert (qget.read_percent, qget.read_query, qget.connections) == (100, "?quorum=true", 16)
    puts = {(s.target, s.connections) for s in macro.WRK_SPECS if s.group == "cluster" and not s.read_percent}
    assert puts == {(to, c) for to in ("leader", "follower") for c in (1, 16, 64)}


def test_titles_name_the_key_count_the_log_and_the_cluster_size() -> None:
    settings = {"keys": 1_000_000, "members": 3}
    assert macro.workload_title(macro.WORKLOAD_BY_NAME["restart"].title, settings) == (
        "restart with 1,000,000 keys and 100,000 log entries until a read answers")
    assert macro.workload_title(macro.WORKLOAD_BY_NAME["cluster_put_follower_c16"].title, settings) == (
        "3 members: PUT to the follower, 16 conn")


def test_memory_servers_snapshot_so_that_a_tenth_of_the_keys_stays_in_the_log() -> None:
    assert macro.snapshot_count(1_000_000) == 900_000
    assert macro.snapshot_count(20_000) == 18_000
    assert macro.snapshot_count(1) == 1


def test_recorder_keeps_runs_in_order_and_sums_errors() -> None:
    rec = macro.Recorder()
    rec.add("get_c1", "fastkv", 3.0)
    rec.add("get_c1", "etcd", 1.0, errors=1)
    rec.add("get_c1", "fastkv", 5.0)
    rec.add("get_c1", "etcd", 2.0, errors=1)
    [s] = rec.summaries()
    assert s["fastkv"]["runs"] == [3.0, 5.0] and s["etcd"]["errors"] == 2
    assert s["ratio"] == 4.0 / 1.5


def test_runs_alternate_between_the_two_servers() -> None:
    order = [(run, who) for run, who, _ in macro.alternate(2, {"fastkv": None, "etcd": None})]  # type: ignore[dict-item]
    assert order == [(0, "fastkv"), (0, "etcd"), (1, "fastkv"), (1, "etcd")]


# -- command line -----------------------------------------------------------------------------------

def test_a_cluster_of_one_member_is_refused_with_the_reason() -> None:
    with pytest.raises(SystemExit, match="at least 2 members"):
        macro.main(["--members", "1"], run=lambda *a, **k: pytest.fail("must not run"))


def test_options_override_the_mode(capsys: pytest.CaptureFixture[str]) -> None:
    seen: dict[str, Any] = {}

    def fake_run(mode: macro.Mode, groups: set[str], candidate: str,
                 results_dir: Path, members: int) -> tuple[dict[str, Any], Path]:
        seen.update(mode=mode, groups=groups, candidate=candidate, members=members)
        return document(summary("get_c1", [1.0], [1.0])), results_dir / "x.json"

    argv = ["--only", "get,watch,cluster", "--keys", "7", "--runs", "1", "--duration", "0.5",
            "--memory-runs", "4", "--members", "5"]
    assert macro.main(argv, run=fake_run) == 0
    assert seen["groups"] == {"get", "watch", "cluster"} and seen["candidate"] == "fastkv"
    assert (seen["mode"].keys, seen["mode"].runs, seen["mode"].duration_s) == (7, 1, 0.5)
    assert (seen["mode"].memory_runs, seen["members"]) == (4, 5)
    assert "| GET one key, 1 conn |" in capsys.readouterr().out


def test_unknown_group_is_refused() -> None:
    with pytest.raises(SystemExit):
        macro.main(["--only", "get,nonsense"])


# -- floors and verdicts ----------------------------------------------------------------------------

FLOORS = gate.parse_floors({"get_c64": {"min": 1.5}, "rss": {"max": 1.0}})


def test_ratios_within_their_limits_pass() -> None:
    verdicts = gate.check(document(summary("get_c64", [2.0], [1.0]), summary("rss", [1.0], [1.0])), FLOORS)
    assert [(v.name, v.ok) for v in verdicts] == [("get_c64", True), ("rss", True)]
    assert gate.passed(verdicts)


def test_throughput_below_its_floor_fails() -> None:
    verdicts = gate.check(document(summary("get_c64", [1.4], [1.0]), summary("rss", [1.0], [1.0])), FLOORS)
    assert not gate.passed(verdicts)
    assert verdicts[0].reason == "1.40 is below its floor 1.50"


def test_memory_above_its_ceiling_fails() -> None:
    verdicts = gate.check(document(summary("get_c64", [2.0], [1.0]), summary("rss", [1.2], [1.0])), FLOORS)
    assert [v.ok for v in verdicts] == [True, False]
    assert verdicts[1].reason == "1.20 is above its ceiling 1.00"


def test_a_limited_workload_missing_from_the_run_fails() -> None:
    verdicts = gate.check(document(summary("get_c64", [2.0], [1.0])), FLOORS)
    assert [(v.name, v.ok, v.reason) for v in verdicts][-1] == ("rss", False, "not measured")


def test_failed_fastkv_requests_fail_whatever_the_ratio() -> None:
    verdicts = gate.check(document(summary("get_c64", [9.0], [1.0], errors=1), summary("rss", [1.0], [1.0])),
                          FLOORS)
    assert verdicts[0].ok is False and verdicts[0].reason == "fastkv failed requests"


def test_workload_without_a_floor_is_reported_not_failed() -> None:
    verdicts = gate.check(document(summary("get_c1", [0.1], [1.0])), {})
    assert [(v.ok, v.reason) for v in verdicts] == [(True, "no floor")]


def test_a_floor_in_the_wrong_direction_fails() -> None:
    verdicts = gate.check(document(summary("rss", [1.0], [1.0])), gate.parse_floors({"rss": {"min": 0.5}}))
    assert not verdicts[0].ok


def test_a_run_with_etcd_in_fastkvs_slot_never_passes() -> None:
    verdicts = gate.check(document(summary("get_c64", [2.0], [1.0]), summary("rss", [1.0], [1.0]),
                                   candidate="etcd"), FLOORS)
    assert not gate.passed(verdicts) and verdicts[0].name == "candidate"


@pytest.mark.parametrize("table", [{}, {"min": 1, "max": 2}, {"min": 1, "typo": 2}, 3])
def test_a_floor_needs_exactly_one_of_min_and_max(table: object) -> None:
    with pytest.raises(ValueError):
        gate.parse_floors({"get_c64": table})


def test_floors_file_names_known_workloads_in_their_direction() -> None:
    floors = gate.load_floors()
    assert floors
    for name, floor in floors.items():
        assert floor.better == macro.WORKLOAD_BY_NAME[name].better, name


def test_every_workload_has_a_limit_and_the_gate_mode_measures_them_all() -> None:
    assert set(gate.load_floors()) == set(macro.WORKLOAD_BY_NAME)
    gate_mode = macro.MODES["gate"]
    assert {f"watch_{w}" for w in gate_mode.watch} == {w.name for w in macro.WORKLOADS if w.group == "watch"}


def test_gate_checks_a_stored_result_and_exits_1_on_failure(tmp_path: Path,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    floors = tmp_path / "floors.toml"
    floors.write_text("[get_c64]\nmin = 1.5\n")
    good, bad = tmp_path / "good.json", tmp_path / "bad.json"
    good.write_text(json.dumps(document(summary("get_c64", [2.0], [1.0]))))
    bad.write_text(json.dumps(document(summary("get_c64", [1.0], [1.0]))))
    assert gate.main(["--results", str(good), "--floors", str(floors)]) == 0
    assert gate.main(["--results", str(bad), "--floors", str(floors)]) == 1
    assert "FAIL 1.00 is below its floor 1.50" in capsys.readouterr().out


def test_chart_bars_colour_by_direction() -> None:
    doc = document(summary("get_c64", [2.0], [1.0]), summary("rss", [2.0], [1.0]), summary("fill", [1.0], []))
    assert chart.bars(doc) == [("get_c64 ↑", 2.0, True), ("rss ↓", 2.0, False)]
