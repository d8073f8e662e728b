# The proposals of one member on their way through the log (see proposals.pyx).
#
# Invariants:
#   * a key is in `waiters` from its proposal until its entry applies (the applier pops it), it
#     times out or the log fails; each key is proposed with a waiter of its own;
#   * whenever an entry joins an empty `batch`, `kick()` is called: the owner schedules a pass
#     of its loop, and every pass takes the whole batch.

from libc.stdint cimport uint64_t


cdef class Proposals:
    cdef readonly dict waiters
    cdef readonly list batch
    cdef readonly double timeout_s
    cdef public bint closed
    cdef uint64_t _next_id
    cdef object _clock
    cdef object _kick

    cpdef uint64_t next_id(self)
    cpdef object register(self, object key, object waiter)
    cpdef object add(self, object key, bytes payload, object waiter)
    cpdef object submit_request(self, bytes request, object waiter)
    cpdef list take(self)
