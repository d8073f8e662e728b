"""The linearizability checker accepts what a register allows and rejects what it cannot explain."""

from fastkv.raft.linearizability import CAS, PUT, READ, Op, check_keys, check_linearizable


def op(i: int, kind: str, arg: object, invoke: float, complete: float | None, result: object = None,
       key: str = "k") -> Op:
    return Op(i, kind, key, arg, invoke, 1, complete, result)


def test_linearizable_history_is_accepted() -> None:
    history = [op(1, PUT, 1, 1, 4), op(2, READ, None, 2, 3, 1), op(3, CAS, (1, 2), 5, 7, True),
               op(4, READ, None, 6, 8, 2)]
    assert check_linearizable(history)


def test_stale_read_is_rejected() -> None:
    history = [op(1, PUT, 1, 1, 2), op(2, PUT, 2, 3, 4), op(3, READ, None, 5, 6, 1)]
    assert not check_linearizable(history)


def test_read_of_a_value_never_written_is_rejected() -> None:
    assert not check_linearizable([op(1, PUT, 1, 1, 2), op(2, READ, None, 1.5, 3, 7)])
    assert check_linearizable([op(1, PUT, 1, 1, 2), op(2, READ, None, 1.5, 3, None)])  # before the put


def test_operation_with_unknown_outcome_may_or_may_not_take_effect() -> None:
    lost = op(1, PUT, 9, 1, None)
    assert check_linearizable([lost, op(2, READ, None, 5, 6, 9)])
    assert check_linearizable([lost, op(2, READ, None, 5, 6, None)])
    assert not check_linearizable([lost, op(2, READ, None, 5, 6, 7)])
    # but not before it was invoked
    assert not check_linearizable([op(2, READ, None, 1, 2, 9), op(1, PUT, 9, 3, None)])


def test_unknown_cas_swaps_only_on_a_match() -> None:
    assert check_linearizable([op(1, PUT, 1, 1, 2), op(2, CAS, (1, 5), 3, None), op(3, READ, None, 4, 5, 5)])
    assert not check_linearizable([op(1, PUT, 1, 1, 2), op(2, CAS, (0, 5), 3, None),
                                   op(3, READ, None, 4, 5, 5)])


def test_failed_cas_must_see_a_different_value() -> None:
    assert not check_linearizable([op(1, PUT, 1, 1, 2), op(2, CAS, (1, 3), 3, 4, False)])
    assert check_linearizable([op(1, PUT, 1, 1, 2), op(2, CAS, (0, 3), 3, 4, False)])


def test_concurrent_writes_may_be_seen_in_either_order_but_consistently() -> None:
    writes = [op(1, PUT, "a", 0.0, 10.0), op(2, PUT, "b", 0.5, 10.0)]
    assert check_linearizable([*writes, op(3, READ, None, 11, 12, "a")])
    assert check_linearizable([*writes, op(3, READ, None, 1, 2, "b"), op(4, READ, None, 11, 12, "a")])
    assert not check_linearizable([*writes, op(3, READ, None, 1, 2, "b"), op(4, READ, None, 3, 4, "a"),
                                   op(5, READ, None, 5, 6, "b")])


def test_long_histories_do_not_exhaust_the_stack() -> None:
    history = []
    for i in range(3000):
        history.append(op(2 * i, PUT, i, 4 * i, 4 * i + 1))
        history.append(op(2 * i + 1, READ, None, 4 * i + 2, 4 * i + 3, i))
    assert check_linearizable(history)
    history[-1].result = 0
    assert not check_linearizable(history)


def test_keys_are_checked_separately() -> None:
    history = [op(1, PUT, 1, 1, 2, key="a"), op(2, READ, None, 3, 4, None, key="b"),
               op(3, READ, None, 3, 4, 2, key="c")]
    assert check_keys(history) == ["c"]
