# cython: language_level=3
"""The node's hot loop in compiled code: applying a run of committed store requests.

``apply_requests(store, hub, waiters, entries, start, applied_index)`` goes through
``entries`` from position ``start`` and applies every entry that is a store request: type
normal, data ``b"N"`` + the proposal id (8 bytes, big-endian) + the proposer's ``now_ns`` (8) +
a request made by ``encode_request``. For each one, in order:

* entries at or below ``applied_index`` are skipped (applied before);
* the store applies the request; a ``V2Error`` it raises is the outcome, and nothing changed;
* every watcher of a changed key is notified (a failure is logged, never raised: a broken
  watcher must not stall the log);
* the proposer waiting on the id in ``waiters`` (id -> ``(waiter, deadline)``, as the node keeps
  them) is dropped from it and settled with the outcome (``set_result``, or ``set_exception`` for
  an error), unless it is settled already.

It stops at the first entry that is anything else (the node applies that one itself), and right
after a request whose event changed a key below ``/0/`` (the node's membership records: the node
looks at that key before it goes on). Returns ``(next, index, term, member_key)``: the position to
go on from (of the entry it stopped at, or after the ``/0/`` one; ``len(entries)`` at the end),
the index and term of the last entry applied (``applied_index`` and 0 when none) and the ``/0/``
key, else None.
"""

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_GET_SIZE
from libc.stdint cimport int64_t, uint64_t

from fastkv._native.raft cimport Entry, EntryNormal
from fastkv._native.store cimport Event, Store
from fastkv._native.watch cimport WatchHub

import logging

from fastkv._native.store import V2Error

log = logging.getLogger("fastkv.server")

cdef Py_ssize_t _HEAD = 17  # tag, id, now_ns


cpdef bint notify_watchers(WatchHub hub, Event event):
    """Tell ``event``'s watchers (a failure is logged, never raised: a broken watcher must not
    stall the log); whether the event changed a key below ``/0/`` (a membership record)."""
    try:
        hub.notify(event)
    except Exception:
        log.exception("notifying watchers of index %d failed", event.index)
    return event.key.startswith("/0/")


cdef inline uint64_t _big_endian(const unsigned char *p) noexcept nogil:
    cdef uint64_t value = 0
    cdef int i
    for i in range(8):
        value = (value << 8) | p[i]
    return value


def apply_requests(Store store, WatchHub hub, dict waiters, list entries, Py_ssize_t start,
                   uint64_t applied_index):
    """Apply the store requests of ``entries`` from ``start`` on (see the module doc)."""
    cdef Py_ssize_t i = start, n = len(entries)
    cdef Entry entry
    cdef bytes data
    cdef const unsigned char *raw
    cdef uint64_t index = applied_index, term = 0
    cdef Event event
    cdef object outcome, waiter
    cdef str member_key = None
    while i < n:
        entry = <Entry> entries[i]
        if entry.index <= applied_index:
            i += 1
            continue
        data = entry.data
        if entry.type != EntryNormal or PyBytes_GET_SIZE(data) < _HEAD:
            break
        raw = <const unsigned char *> PyBytes_AS_STRING(data)
        if raw[0] != c'N':
            break
        try:
            outcome = store.apply(data[_HEAD:], <int64_t> _big_endian(raw + 9))
        except V2Error as error:
            outcome = error
        else:
            event = <Event> outcome
            if event.action != "get" and notify_watchers(hub, event):
                member_key = event.key
        index, term = entry.index, entry.term
        i += 1
        waiter = waiters.pop(_big_endian(raw + 1), None)
        if waiter is not None:
            waiter = waiter[0]
            if not waiter.done():
                if isinstance(outcome, BaseException):
                    waiter.set_exception(outcome)
                else:
                    waiter.set_result(outcome)
        if member_key is not None:
            break
    return i, index, term, member_key
