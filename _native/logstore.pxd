# cython: language_level=3
"""C-level declarations of the LMDB log (see logstore.pyx)."""

cdef class LogStore:
    cdef object _env
    cdef object _entries
    cdef object _state
    cdef object _meta
    cdef readonly unsigned long long first_index
    cdef readonly unsigned long long last_index
    cdef readonly unsigned long long compacted_index
    cdef readonly unsigned long long compacted_term
    cdef tuple _hard_state
    cdef readonly str path

    cdef void _load(self) except *
    cdef void _truncate_after(self, object txn, unsigned long long start) except *
    cdef void _put_entries(self, object txn, list entries) except *
