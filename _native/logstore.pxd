# cython: language_level=3
"""C-level declarations of the log (see logstore.pyx)."""

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
    cdef int _wal_fd
    cdef long long _wal_offset
    cdef long long _direct_bytes
    cdef unsigned long long _salt
    cdef unsigned long long _flushed
    cdef list _tail
    # Records staged for another writer and not yet committed (see ``stage``)
    cdef long long _staged_bytes
    cdef Py_ssize_t _staged_entries
    cdef Py_ssize_t _staged_count
    cdef unsigned long long _staged_to  # the last staged entry's index
    cdef bint _new_pass  # a write may have left bytes in the file: the next append checkpoints

    cdef void _load(self) except *
    cdef void _open_wal(self) except *
    cdef void _replay(self) except *
    cdef void _check_end_of_pass(self, bytes data, Py_ssize_t off, bint torn) except *
    cdef void _write_wal(self, bytes record) except *
    cdef unsigned long long _staged_last(self)
    cdef tuple _checked(self, list entries, unsigned long long last)
    cdef bint _fits(self, Py_ssize_t record_size, Py_ssize_t new_entries)
    cdef void _add(self, unsigned long long start, list entries, tuple hard) except *
    cdef void _not_staged(self, str what) except *
    cdef void _add_to_tail(self, unsigned long long start, list entries) except *
    cdef void _checkpoint(self, unsigned long long start, list entries, tuple hard) except *
    cdef void _flush(self) except *
    cdef void _truncate_after(self, object txn, unsigned long long start) except *
    cdef void _put_entries(self, object txn, list entries) except *
    cdef list _read(self, unsigned long long lo, unsigned long long hi)
