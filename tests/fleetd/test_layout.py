"""fleet's etcd key layout and value formats: what any fleet tool reading the same etcd expects."""

import dataclasses
import json
from typing import Any

import pytest

from fleetd.job import (
    JobState,
    JobStateError,
    ScheduledUnit,
    Unit,
    UnitState,
    determine_job_state,
    parse_job_state,
    unit_to_api,
)
from fleetd.machine import MachineState, format_metadata, merge_metadata, parse_metadata
from fleetd.registry.layout import (
    EtcdOp,
    JobRecord,
    Layout,
    LayoutError,
    Lease,
    OpKind,
    Writes,
    build_snapshot,
    decode_job_object,
    decode_lease,
    decode_machine_object,
    decode_target_state,
    decode_unit_blob,
    decode_unit_state,
    encode_job_object,
    encode_lease,
    encode_machine_object,
    encode_unit_blob,
    encode_unit_state,
    go_json,
    read_dynamic_metadata,
    read_jobs,
    read_machines,
    read_unit_blobs,
    read_unit_states,
)
from fleetd.unit import UnitFile

HELLO = UnitFile.from_text(
    '[Service]\nExecStart=/bin/bash -c "while true; do echo Hello, World!; sleep 1; done"\n')
MID = "10000000000000000000000000000001"
MID2 = "20000000000000000000000000000002"
P = "/_coreos.com/fleet"


def test_keys_of_the_default_layout() -> None:
    lay = Layout()
    assert lay.engine_version() == f"{P}/engine/version"
    assert lay.lease() == f"{P}/lease/engine-leader"
    assert lay.machines_dir() == f"{P}/machines"
    assert lay.machine_object(MID) == f"{P}/machines/{MID}/object"
    assert lay.machine_metadata(MID, "disk") == f"{P}/machines/{MID}/metadata/disk"
    assert lay.unit_blob(HELLO.hash) == f"{P}/unit/3750b3e9f3962a56c7582929426e9abb012754cf"
    assert lay.jobs_dir() == f"{P}/job"
    assert lay.job_dir("hello.service") == f"{P}/job/hello.service"
    assert lay.job_object("hello.service") == f"{P}/job/hello.service/object"
    assert lay.job_target_state("hello.service") == f"{P}/job/hello.service/target-state"
    assert lay.job_target("hello.service") == f"{P}/job/hello.service/target"
    assert lay.job_heartbeat("hello.service") == f"{P}/job/hello.service/job-state"
    assert lay.states_dir() == f"{P}/states"
    assert lay.states_dir("hello.service") == f"{P}/states/hello.service"
    assert lay.unit_state("hello.service", MID) == f"{P}/states/hello.service/{MID}"
    assert lay.legacy_unit_state("hello.service") == f"{P}/state/hello.service"


@pytest.mark.parametrize("prefix", ["/custom/", "/custom", "custom", "//custom//"])
def test_custom_prefix_is_joined_like_path_join(prefix: str) -> None:
    assert Layout(prefix).job_target("a@1.service") == "/custom/job/a@1.service/target"


def test_watch_triggers_are_target_and_target_state_only() -> None:
    lay = Layout()
    assert lay.is_job_trigger(f"{P}/job/a.service/target")
    assert lay.is_job_trigger(f"{P}/job/a.service/target-state")
    assert not lay.is_job_trigger(f"{P}/job/a.service/object")
    assert not lay.is_job_trigger(f"{P}/job/a.service/job-state")
    assert not lay.is_job_trigger("/other/job/a.service/target")
    assert lay.relative(f"{P}/states/a.service/{MID}") == ["states", "a.service", MID]


# --- values ------------------------------------------------------------------------------------------

def test_job_object_has_go_byte_array_hash() -> None:
    value = encode_job_object("hello.service", HELLO.hash)
    assert value.startswith('{"Name":"hello.service","UnitHash":[55,80,179,')
    assert json.loads(value)["UnitHash"] == list(bytes.fromhex("3750b3e9f3962a56c7582929426e9abb012754cf"))
    assert decode_job_object(value) == ("hello.service", HELLO.hash)


def test_unit_blob() -> None:
    value = encode_unit_blob(HELLO)
    assert value == ('{"Raw":"[Service]\\nExecStart=/bin/bash -c \\"while true; do echo Hello, World!; '
                     'sleep 1; done\\"\\n"}')
    assert decode_unit_blob(value) == HELLO


def test_machine_object_as_observed() -> None:
    machine = MachineState(MID, "127.0.0.1", {"role": "web", "region": "us-east"},
                           {"GRPC": False, "DISABLE_ENGINE": False}, "v1.0.0-15-g45224983")
    value = encode_machine_object(machine)
    assert value == (f'{{"ID":"{MID}","PublicIP":"127.0.0.1","Metadata":{{"region":"us-east","role":"web"}},'
                     '"Capabilities":{"DISABLE_ENGINE":false,"GRPC":false},"Version":"v1.0.0-15-g45224983"}')
    assert decode_machine_object(value) == machine


def test_machine_object_with_dynamic_metadata() -> None:
    value = encode_machine_object(MachineState(MID, metadata={"region": "us-east", "disk": "hdd"}))
    machine = decode_machine_object(value, {"disk": "ssd", "region": "", "rack": "7"})
    assert machine.metadata == {"disk": "ssd", "rack": "7"}


def test_unit_state_as_observed() -> None:
    state = UnitState("hello.service", MID, HELLO.hash.hex, "loaded", "active", "running")
    value = encode_unit_state(state)
    assert value == ('{"loadState":"loaded","activeState":"active","subState":"running",'
                     f'"machineState":{{"ID":"{MID}","PublicIP":"","Metadata":null,"Capabilities":null,'
                     f'"Version":""}},"unitHash":"{HELLO.hash.hex}"}}')
    assert decode_unit_state(value, "hello.service") == state


def test_unit_state_with_containers_adds_one_field_at_the_end() -> None:
    plain = UnitState("web.service", MID, HELLO.hash.hex, "loaded", "active", "running")
    state = dataclasses.replace(plain, containers=("3f2a1c0d9e8b running", "5e6f7a8b9c0d exited"))
    value = encode_unit_state(state)
    assert value == (encode_unit_state(plain)[:-1]
                     + ',"containers":["3f2a1c0d9e8b running","5e6f7a8b9c0d exited"]}')
    decoded = decode_unit_state(value, "web.service")
    assert decoded == state and decoded.containers == ("3f2a1c0d9e8b running", "5e6f7a8b9c0d exited")
    assert decoded.same_systemd_state(plain)
    assert state.to_api() == {**plain.to_api(), "containers": ["3f2a1c0d9e8b running", "5e6f7a8b9c0d exited"]}
    assert list(state.to_api()) == sorted(state.to_api())


def test_unit_state_without_containers_stays_fleets_record() -> None:
    plain = UnitState("web.service", MID, HELLO.hash.hex, "loaded", "active", "running")
    assert plain.containers == ()
    assert "containers" not in encode_unit_state(plain)
    decoded = decode_unit_state(encode_unit_state(plain)[:-1] + ',"containers":[]}', "web.service")
    assert decoded == plain and "containers" not in decoded.to_api()


def test_unit_state_machine_from_key_when_value_lacks_it() -> None:
    value = '{"loadState":"loaded","activeState":"inactive","subState":"dead"}'
    state = decode_unit_state(value, "a.service", MID)
    assert (state.machine_id, state.active_state, state.unit_hash) == (MID, "inactive", "")


def test_lease() -> None:
    assert encode_lease(Lease(MID, 1)) == f'{{"MachineID":"{MID}","Version":1}}'
    assert decode_lease(encode_lease(Lease(MID, 1))) == Lease(MID, 1)


@pytest.mark.parametrize("text", ["inactive", "loaded", "launched"])
def test_target_states(text: str) -> None:
    assert decode_target_state(text) == JobState(text)


def test_invalid_target_state_reads_as_inactive() -> None:
    assert decode_target_state("running") is JobState.INACTIVE


@pytest.mark.parametrize(("decoder", "value"), [
    (decode_job_object, "{}"), (decode_job_object, "not json"),
    (decode_job_object, '{"Name":"a","UnitHash":[1]}'),
    (decode_unit_blob, '{"Raw":1}'), (decode_unit_blob, '{"Raw":"[Unit"}'), (decode_machine_object, "[]"),
    (decode_lease, "{}"),
])
def test_malformed_values(decoder: Any, value: str) -> None:
    with pytest.raises(LayoutError):
        decoder(value)


def test_go_json_escapes_like_go() -> None:
    assert go_json({"a": "<b> & c\u2028"}) == '{"a":"\\u003cb\\u003e \\u0026 c\\u2028"}'
    assert go_json({"a": "\b\f\n\\b"}) == '{"a":"\\u0008\\u000c\\n\\\\b"}'
    assert go_json({"a": "é", "b": None, "c": [1, True]}) == '{"a":"é","b":null,"c":[1,true]}'


# --- recursive reads -----------------------------------------------------------------------------------

def leaf(key: str, value: str) -> dict[str, Any]:
    return {"key": key, "value": value, "modifiedIndex": 7, "createdIndex": 7}


def directory(key: str, *nodes: dict[str, Any]) -> dict[str, Any]:
    return {"key": key, "dir": True, "nodes": list(nodes)}


def job_dir(name: str, unit_file: UnitFile, **leaves: str) -> dict[str, Any]:
    obj = leaf(f"{P}/job/{name}/object", encode_job_object(name, unit_file.hash))
    return directory(f"{P}/job/{name}", obj,
                     *(leaf(f"{P}/job/{name}/{k.replace('_', '-')}", v) for k, v in leaves.items()))


GLOBAL = UnitFile.from_text("[Service]\nExecStart=/bin/mon\n[X-Fleet]\nGlobal=true\n")


def jobs_tree() -> dict[str, Any]:
    return directory(f"{P}/job",
                     job_dir("web@2.service", HELLO, target_state="launched"),
                     job_dir("hello.service", HELLO, target_state="launched", target=MID, job_state=MID),
                     job_dir("mon.service", GLOBAL, target_state="launched"),
                     job_dir("web@1.service", HELLO, target_state="loaded", target=MID2),
                     directory(f"{P}/job/orphan.service", leaf(f"{P}/job/orphan.service/target", MID)),
                     job_dir("bad.service", HELLO, target_state="bogus"))


def test_read_jobs_sorted_and_skipping_dirs_without_object() -> None:
    records = read_jobs(jobs_tree())
    assert [r.name for r in records] == ["bad.service", "hello.service", "mon.service", "web@1.service",
                                         "web@2.service"]
    assert records[1] == JobRecord("hello.service", HELLO.hash, JobState.LAUNCHED, MID, MID)
    assert records[0].target_state is JobState.INACTIVE
    assert read_jobs(None) == []


def test_read_unit_blobs() -> None:
    tree = directory(f"{P}/unit", leaf(f"{P}/unit/{HELLO.hash.hex}", encode_unit_blob(HELLO)),
                     leaf(f"{P}/unit/{'0' * 40}", "garbage"))
    assert read_unit_blobs(tree) == {HELLO.hash.hex: HELLO}


def test_read_machines_merges_dynamic_metadata_and_skips_expired() -> None:
    m1 = MachineState(MID, "127.0.0.1", {"region": "us-east"})
    tree = directory(
        f"{P}/machines",
        directory(f"{P}/machines/{MID}", leaf(f"{P}/machines/{MID}/object", encode_machine_object(m1)),
                  directory(f"{P}/machines/{MID}/metadata", leaf(f"{P}/machines/{MID}/metadata/disk", "ssd"),
                            leaf(f"{P}/machines/{MID}/metadata/region", ""))),
        directory(f"{P}/machines/{MID2}", directory(f"{P}/machines/{MID2}/metadata",
                                                    leaf(f"{P}/machines/{MID2}/metadata/disk", "hdd"))))
    machines = read_machines(tree)
    assert [(m.id, dict(m.metadata)) for m in machines] == [(MID, {"disk": "ssd"})]
    assert read_dynamic_metadata(tree) == {MID: {"disk": "ssd", "region": ""}, MID2: {"disk": "hdd"}}


def states_tree() -> dict[str, Any]:
    def state(name: str, mid: str) -> dict[str, Any]:
        value = encode_unit_state(UnitState(name, mid, HELLO.hash.hex, "loaded", "active", "running"))
        return leaf(f"{P}/states/{name}/{mid}", value)
    return directory(f"{P}/states",
                     directory(f"{P}/states/mon.service", state("mon.service", MID2),
                               state("mon.service", MID)),
                     directory(f"{P}/states/hello.service", state("hello.service", MID)),
                     directory(f"{P}/states/web@1.service", state("web@1.service", MID2),
                               leaf(f"{P}/states/web@1.service/broken", "{")))


def test_read_unit_states_sorted_by_name_then_machine() -> None:
    states = read_unit_states(states_tree())
    assert [(s.unit_name, s.machine_id) for s in states] == [
        ("hello.service", MID), ("mon.service", MID), ("mon.service", MID2), ("web@1.service", MID2)]


def test_snapshot_current_states_follow_determine_job_state() -> None:
    blobs = {HELLO.hash.hex: HELLO, GLOBAL.hash.hex: GLOBAL}
    snap = build_snapshot(read_jobs(jobs_tree()), blobs, [], read_unit_states(states_tree()))
    assert snap.current_states == {"bad.service": JobState.INACTIVE, "hello.service": JobState.LAUNCHED,
                                   "web@1.service": JobState.LOADED, "web@2.service": JobState.INACTIVE}
    assert snap.schedule == {"hello.service": MID, "web@1.service": MID2}
    assert snap.units["mon.service"].is_global
    assert snap.units["web@2.service"].target_state is JobState.LAUNCHED


def test_snapshot_skips_jobs_without_blob() -> None:
    snap = build_snapshot(read_jobs(jobs_tree()), {}, [], [])
    assert snap.units == {}


# --- writes ------------------------------------------------------------------------------------------

def test_write_semantics() -> None:
    w = Writes()
    unit = Unit("hello.service", HELLO, JobState.INACTIVE)
    blob, obj, target_state = w.create_unit(unit)
    assert blob == EtcdOp(OpKind.SET, f"{P}/unit/{HELLO.hash.hex}", encode_unit_blob(HELLO), prev_exist=False,
                          ok_if_exists=True)
    assert obj == EtcdOp(OpKind.SET, f"{P}/job/hello.service/object",
                         encode_job_object("hello.service", HELLO.hash))
    assert target_state == EtcdOp(OpKind.SET, f"{P}/job/hello.service/target-state", "inactive")
    assert w.schedule_unit("a.service", MID) == EtcdOp(OpKind.SET, f"{P}/job/a.service/target", MID,
                                                       prev_exist=False)
    assert w.unschedule_unit("a.service", MID) == EtcdOp(OpKind.DELETE, f"{P}/job/a.service/target",
                                                         prev_value=MID)
    assert w.destroy_unit("a.service") == EtcdOp(OpKind.DELETE, f"{P}/job/a.service", recursive=True)
    m = MachineState(MID)
    assert w.register_machine(m, 30).prev_exist is False and w.register_machine(m, 30).ttl == 30
    assert w.beat_machine(m, 30).prev_exist is True
    assert w.acquire_lease(MID, 10).prev_exist is False
    assert w.renew_lease(MID, 10, index=42).prev_index == 42
    assert w.release_lease(42) == EtcdOp(OpKind.DELETE, f"{P}/lease/engine-leader", prev_index=42)
    assert w.set_engine_version(1, None) == EtcdOp(OpKind.SET, f"{P}/engine/version", "1", prev_exist=False)
    assert w.set_engine_version(2, 1).prev_value == "1"
    assert w.set_machine_metadata(MID, "disk", "").value == ""
    assert [op.key for op in w.remove_unit_state("a.service")] == [f"{P}/state/a.service",
                                                                   f"{P}/states/a.service"]
    state = UnitState("a.service", MID, HELLO.hash.hex, "loaded", "active", "running")
    assert [op.key for op in w.save_unit_state(state, 30)] == [f"{P}/states/a.service/{MID}",
                                                               f"{P}/state/a.service"]
    assert w.job_heartbeat("a.service", MID, 30) == EtcdOp(OpKind.SET, f"{P}/job/a.service/job-state", MID,
                                                           ttl=30)
    # additions: the engine's reason for leaving a unit unscheduled, where a machine's API answers
    assert w.set_unplaced_reason("a.service", "why") == EtcdOp(OpKind.SET, f"{P}/engine/unplaced/a.service",
                                                               "why")
    assert w.clear_unplaced_reason("a.service") == EtcdOp(OpKind.DELETE, f"{P}/engine/unplaced/a.service")
    assert w.publish_api(MID, "http://x:1") == EtcdOp(OpKind.SET, f"{P}/machines/{MID}/api", "http://x:1")


# --- the value types behind the API's JSON (spec 3, 4) ---------------------------------------------------

@pytest.mark.parametrize(("target", "has_state", "heartbeat", "expected"), [
    ("", False, "", JobState.INACTIVE),
    ("", True, MID, JobState.INACTIVE),
    (MID, False, MID, JobState.INACTIVE),
    (MID, True, "", JobState.LOADED),
    (MID, True, MID2, JobState.LOADED),
    (MID, True, MID, JobState.LAUNCHED),
])
def test_determine_job_state(target: str, has_state: bool, heartbeat: str, expected: JobState) -> None:
    assert determine_job_state(target, has_state, heartbeat) is expected


def test_parse_job_state() -> None:
    assert parse_job_state("launched") is JobState.LAUNCHED
    with pytest.raises(JobStateError) as err:
        parse_job_state("started")
    assert str(err.value) == 'invalid value "started" for JobState'


def test_api_unit_shapes() -> None:
    hello = Unit("hello.service", HELLO, JobState.LAUNCHED)
    assert unit_to_api(hello, ScheduledUnit("hello.service", MID, JobState.LAUNCHED)) == {
        "currentState": "launched", "desiredState": "launched", "machineID": MID, "name": "hello.service",
        "options": [{"name": "ExecStart", "section": "Service",
                     "value": '/bin/bash -c "while true; do echo Hello, World!; sleep 1; done"'}]}
    assert unit_to_api(hello)["currentState"] == "inactive" and "machineID" not in unit_to_api(hello)
    mon = Unit("mon.service", GLOBAL, JobState.LAUNCHED)
    assert "currentState" not in unit_to_api(mon)
    assert unit_to_api(mon, listing=True)["currentState"] == "inactive"
    assert list(unit_to_api(hello)) == sorted(unit_to_api(hello))


def test_api_unit_state_shape() -> None:
    state = UnitState("hello.service", MID, HELLO.hash.hex, "loaded", "active", "running")
    assert state.to_api() == {"hash": HELLO.hash.hex, "machineID": MID, "name": "hello.service",
                              "systemdActiveState": "active", "systemdLoadState": "loaded",
                              "systemdSubState": "running"}
    elsewhere = UnitState("hello.service", MID2, HELLO.hash.hex, "loaded", "active", "running")
    assert state.same_systemd_state(elsewhere)
    assert not state.same_systemd_state(None)


def test_api_machine_shape_and_fleetctl_columns() -> None:
    machine = MachineState("3d1219c7c4c5404aaa1f6d2a48adfda4", "127.0.0.1",
                           {"region": "us-east", "disk": "ssd"})
    assert machine.to_api() == {"id": "3d1219c7c4c5404aaa1f6d2a48adfda4",
                                "metadata": {"disk": "ssd", "region": "us-east"}, "primaryIP": "127.0.0.1"}
    assert MachineState(MID).to_api() == {"id": MID}
    assert machine.legend() == "3d1219c7.../127.0.0.1"
    assert machine.legend(full=True) == "3d1219c7c4c5404aaa1f6d2a48adfda4/127.0.0.1"
    assert MachineState(MID).legend() == "10000000..."
    assert format_metadata(machine.metadata) == "disk=ssd,region=us-east"
    assert format_metadata({}) == "-"


@pytest.mark.parametrize(("text", "metadata"), [
    ("", {}),
    ("region=us-east,role=web", {"region": "us-east", "role": "web"}),
    ('"region=us-east, role = web"', {"region": "us-east", "role": "web"}),
    ("a=1,a=2,junk,=x", {"a": "2"}),
])
def test_parse_config_metadata(text: str, metadata: dict[str, str]) -> None:
    assert parse_metadata(text) == metadata


def test_merge_metadata_tombstones() -> None:
    assert merge_metadata({"a": "1", "b": "2"}, {"b": "", "c": "3", "a": "9"}) == {"a": "9", "c": "3"}
