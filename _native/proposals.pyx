# cython: language_level=3
"""The proposals of one member on their way through the log, kept in compiled code.

A proposal has a key (a normal entry's id, or what the node uses for a configuration change),
the waiter its proposer holds, and a deadline in ``time.monotonic()`` seconds. ``waiters`` maps
key -> ``(waiter, deadline)`` until the entry applies (``apply_requests`` pops and settles it),
the deadline passes or the log fails (the node settles it then). Normal entries wait in
``batch`` as ``(key, payload)``, oldest first, for the next pass of the node's Raft loop, which
proposes them together in one step (``take``).

Contract with the owner: ``kick()`` is called whenever an entry joins an empty batch; the owner
schedules a pass of its loop then, and every pass takes the whole batch. So an entry never
waits in the batch without a pass to come, and a busy loop pass adds no call per proposal.

``submit_request`` is a store request's whole way in, in one call: a new id, the entry's data
(``TAG_REQUEST`` + the id and the proposer's ``clock()`` in nanoseconds, each 8 bytes
big-endian, + the request), the waiter and the batch. Ids come from one 64-bit counter (wrapping),
so they do not repeat in a member's lifetime; the node starts it from its member id and the wall
clock, so that a restarted member starts elsewhere.
"""

cimport cython
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from libc.stdint cimport int64_t, uint64_t
from libc.string cimport memcpy
from posix.time cimport CLOCK_MONOTONIC, clock_gettime, timespec

from fastkv._native.store import V2Error

STOPPED = "etcdserver: server stopped"
TAG_REQUEST = b"N"  # the first byte of a store request's entry data
cdef Py_ssize_t _HEAD = 17  # tag, id, stamp: what precedes a store request in an entry's data
HEAD_SIZE = _HEAD


cdef inline void _put_big_endian(unsigned char *p, uint64_t value) noexcept nogil:
    cdef int i
    for i in range(7, -1, -1):
        p[i] = value & 0xFF
        value >>= 8


cdef inline double _monotonic() noexcept nogil:
    """``time.monotonic()`` (the same clock, CLOCK_MONOTONIC), without the call."""
    cdef timespec ts
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return ts.tv_sec + ts.tv_nsec * 1e-9


@cython.final
cdef class Proposals:
    """The waiters and the batch of one member's proposals (see the module doc)."""

    def __init__(self, uint64_t first_id, object clock, double timeout_s, object kick):
        self.waiters = {}
        self.batch = []
        self.timeout_s = timeout_s
        self.closed = False
        self._next_id = first_id
        self._clock = clock
        self._kick = kick

    cpdef uint64_t next_id(self):
        """A new proposal id."""
        cdef uint64_t pid = self._next_id
        self._next_id += 1
        return pid

    cpdef object register(self, object key, object waiter):
        """Keep ``waiter`` for ``key`` until ``timeout_s`` from now; returns it."""
        self.waiters[key] = (waiter, _monotonic() + self.timeout_s)
        return waiter

    cpdef object add(self, object key, bytes payload, object waiter):
        """``register`` and put the normal entry ``payload`` in the batch; returns ``waiter``."""
        self.register(key, waiter)
        self.batch.append((key, payload))
        if len(self.batch) == 1:
            self._kick()
        return waiter

    cpdef object submit_request(self, bytes request, object waiter):
        """Propose the store ``request`` (made by ``encode_request``) with ``waiter``, which
        gets the Event or the store's V2Error once it applies; returns ``waiter``. Raises
        V2Error (300) at once when ``closed`` (the member is stopping)."""
        if self.closed:
            raise V2Error(300, STOPPED, 0)
        cdef uint64_t pid = self.next_id()
        cdef int64_t now_ns = self._clock()
        cdef Py_ssize_t size = PyBytes_GET_SIZE(request)
        cdef bytes payload = PyBytes_FromStringAndSize(NULL, _HEAD + size)
        cdef unsigned char *p = <unsigned char *> PyBytes_AS_STRING(payload)
        p[0] = c'N'  # TAG_REQUEST
        _put_big_endian(p + 1, pid)
        _put_big_endian(p + 9, <uint64_t> now_ns)
        memcpy(p + _HEAD, PyBytes_AS_STRING(request), size)
        return self.add(pid, payload, waiter)

    cpdef list take(self):
        """The batch, oldest first; the batch is empty afterwards."""
        cdef list batch = self.batch[:]
        self.batch.clear()
        return batch
