"""Randomized schedules of the whole protocol with safety checks after every step.

A failing seed replays with ``python -m fastkv.raft.simulator --seed N --trace``."""

import time

from fastkv.raft.simulator import CAS, PUT, READ, Op, Simulation, check_linearizable

SCHEDULES = 10_000


def test_many_random_schedules_are_safe_and_linearizable() -> None:
    started = time.monotonic()
    ops = completed = 0
    for seed in range(SCHEDULES):
        sim = Simulation(seed).run()  # raises SafetyViolation naming the seed
        ops += len(sim.ops)
        completed += sum(op.complete is not None for op in sim.ops)
    print(f"{SCHEDULES} schedules, {ops} client operations ({completed} completed) "
          f"in {time.monotonic() - started:.1f}s")
    assert completed > SCHEDULES  # the schedules do real work, not only faults


def test_a_seed_replays_the_same_schedule() -> None:
    first = Simulation(7, trace=True).run()
    second = Simulation(7, trace=True).run()
    assert first.trace == second.trace
    assert first.trace


def op(i: int, kind: str, arg: object, invoke: int, complete: int | None, result: object = None) -> Op:
    return Op(i, kind, "k", arg, invoke, 1, complete, result)


def test_linearizable_history_is_accepted() -> None:
    history = [op(1, PUT, 1, 1, 4), op(2, READ, None, 2, 3, 1), op(3, CAS, (1, 2), 5, 7, True),
               op(4, READ, None, 6, 8, 2)]
    assert check_linearizable(history)


def test_stale_read_is_rejected() -> None:
    history = [op(1, PUT, 1, 1, 2), op(2, PUT, 2, 3, 4), op(3, READ, None, 5, 6, 1)]
    assert not check_linearizable(history)


def test_operation_with_unknown_outcome_may_or_may_not_take_effect() -> None:
    lost = op(1, PUT, 9, 1, None)
    assert check_linearizable([lost, op(2, READ, None, 5, 6, 9)])
    assert check_linearizable([lost, op(2, READ, None, 5, 6, None)])
    assert not check_linearizable([lost, op(2, READ, None, 5, 6, 7)])


def test_failed_cas_must_see_a_different_value() -> None:
    assert not check_linearizable([op(1, PUT, 1, 1, 2), op(2, CAS, (1, 3), 3, 4, False)])
    assert check_linearizable([op(1, PUT, 1, 1, 2), op(2, CAS, (0, 3), 3, 4, False)])
