"""Randomized schedules of the whole protocol with safety checks after every step.

A failing seed replays with ``python -m fastkv.raft.simulator --seed N --trace``."""

import time

import pytest

from fastkv.raft.simulator import Simulation

SCHEDULES = 10_000
PIPELINED_SCHEDULES = 3_000

# Schedules (seed, steps) that once found a bug in the core, kept as regressions:
# * 6950, 9682: the leader accepted the removal of the last voter; nobody could campaign again.
# * 13247, 229 (1500 steps): a member whose removal had committed but was not applied yet took
#   over on MsgTimeoutNow, applied its removal as candidate, then won and failed to lead.
# * 16132, 18669, 741 (1500 steps): the removed leader of two voters stepped down at once; the
#   other never learned that the removal committed and needed its vote, refused to a shorter log.
REGRESSIONS = ((6950, 400), (9682, 400), (13247, 400), (229, 1500), (16132, 400), (18669, 400),
               (741, 1500))


def test_many_random_schedules_are_safe_and_linearizable() -> None:
    started = time.monotonic()
    ops = completed = changes = 0
    for seed in range(SCHEDULES):
        sim = Simulation(seed).run()  # raises SafetyViolation naming the seed
        ops += len(sim.ops)
        completed += sum(op.complete is not None for op in sim.ops)
        changes += len(sim.configs) - 1
    print(f"{SCHEDULES} schedules, {ops} client operations ({completed} completed), "
          f"{changes} configuration changes in {time.monotonic() - started:.1f}s")
    assert completed > SCHEDULES  # the schedules do real work, not only faults
    assert changes > SCHEDULES // 4  # and change the membership


def test_pipelined_readies_are_safe_and_linearizable() -> None:
    """Members take new Readies before older ones are saved (as the server does while its log
    thread syncs): a crash loses every Ready not saved yet."""
    completed = 0
    for seed in range(PIPELINED_SCHEDULES):
        sim = Simulation(seed, pipeline=True).run()
        completed += sum(op.complete is not None for op in sim.ops)
    assert completed > PIPELINED_SCHEDULES


@pytest.mark.parametrize(("seed", "steps"), REGRESSIONS)
def test_regression_schedule(seed: int, steps: int) -> None:
    Simulation(seed, steps).run()


def test_a_seed_replays_the_same_schedule() -> None:
    first = Simulation(7, trace=True).run()
    second = Simulation(7, trace=True).run()
    assert first.trace == second.trace
    assert first.trace


def test_schedules_change_membership_and_leadership() -> None:
    """The schedules add voters, remove them (the leader too) and transfer leadership."""
    traces = [line for seed in range(200) for line in Simulation(seed, trace=True).run().trace or ()]
    assert any("propose add=" in line and "dropped" not in line for line in traces)
    assert any("(the leader) at" in line and "dropped" not in line for line in traces)
    assert any("configuration at" in line for line in traces)
    assert any("MsgTimeoutNow" in line and "deliver" in line for line in traces)
