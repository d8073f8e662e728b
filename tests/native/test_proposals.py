"""The compiled proposal queue: ids, the entry data of a store request, waiters with their
deadlines, the batch and the owner's kick, and the refusal once closed."""

from __future__ import annotations

import struct
import time

import pytest

from fastkv._native.proposals import HEAD_SIZE, STOPPED, TAG_REQUEST, Proposals
from fastkv._native.store import V2Error


class Owner:
    """Counts kicks and takes the batch as the node's loop pass does."""

    def __init__(self) -> None:
        self.kicks = 0
        self.now_ns = 1_700_000_000_123_456_789
        self.proposals = Proposals(2**64 - 2, lambda: self.now_ns, 5.0, self.kick)

    def kick(self) -> None:
        self.kicks += 1


def test_ids_count_up_and_wrap_at_64_bits() -> None:
    owner = Owner()
    assert [owner.proposals.next_id() for _ in range(4)] == [2**64 - 2, 2**64 - 1, 0, 1]


def test_a_store_request_becomes_tag_id_stamp_and_request() -> None:
    owner = Owner()
    waiter = object()
    assert owner.proposals.submit_request(b"request bytes", waiter) is waiter
    ((key, payload),) = owner.proposals.batch
    assert key == 2**64 - 2
    assert HEAD_SIZE == 17
    assert payload[:1] == TAG_REQUEST == b"N"  # the tag the log and the applier know
    assert struct.unpack(">QQ", payload[1:17]) == (key, owner.now_ns)
    assert payload[17:] == b"request bytes"


def test_a_waiter_is_kept_until_its_deadline() -> None:
    owner = Owner()
    before = time.monotonic()
    owner.proposals.submit_request(b"r", "waiter")
    after = time.monotonic()
    ((_, (waiter, deadline)),) = owner.proposals.waiters.items()
    assert waiter == "waiter"
    assert before + 5.0 <= deadline <= after + 5.0
    owner.proposals.register(("conf", 1, 7), "conf waiter")  # waits, but is no normal entry
    assert owner.proposals.waiters[("conf", 1, 7)][0] == "conf waiter"
    assert len(owner.proposals.batch) == 1


def test_the_owner_is_kicked_when_an_entry_joins_an_empty_batch() -> None:
    owner = Owner()
    owner.proposals.submit_request(b"a", 1)
    owner.proposals.add("member", b"b", 2)
    owner.proposals.submit_request(b"c", 3)
    assert owner.kicks == 1
    taken = owner.proposals.take()
    assert [payload[17:] if isinstance(key, int) else payload for key, payload in taken] == [b"a", b"b", b"c"]
    assert owner.proposals.batch == [] and owner.proposals.take() == []
    owner.proposals.submit_request(b"d", 4)
    assert owner.kicks == 2
    assert len(owner.proposals.waiters) == 4  # taken entries still wait for their outcome


def test_closed_refuses_with_etcds_stopped_error_and_keeps_nothing() -> None:
    owner = Owner()
    owner.proposals.closed = True
    with pytest.raises(V2Error) as refused:
        owner.proposals.submit_request(b"r", "waiter")
    assert (refused.value.code, refused.value.cause) == (300, STOPPED)
    assert owner.proposals.waiters == {} and owner.proposals.batch == [] and owner.kicks == 0
