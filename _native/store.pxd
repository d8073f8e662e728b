# The etcd v2 state machine: the tree, its TTL heap, the event history and the JSON encoder.
#
# Invariants:
#   * every successful mutation bumps Store.index by exactly one and appends exactly one Event
#     to Store.history whose `index` is the new store index (history indices are contiguous);
#   * a failed operation raises V2Error and leaves tree, heap, index and history untouched;
#   * Node.heap_pos >= 0 exactly when the node has a TTL and is still in the tree.

from libc.stdint cimport int64_t, uint64_t


cdef class _Buf:
    """A growable byte buffer; the JSON encoder writes into it, `take()` hands out bytes."""
    cdef char* data
    cdef Py_ssize_t length
    cdef Py_ssize_t cap

    cdef int reserve(self, Py_ssize_t extra) except -1
    cdef int put(self, const char* s, Py_ssize_t n) except -1
    cdef int put_bytes(self, bytes b) except -1
    cdef int put_u64(self, uint64_t v) except -1
    cdef int put_i64(self, int64_t v) except -1
    cdef int put_jstr(self, str s, Py_ssize_t start) except -1
    cdef int put_time(self, int64_t unix_ns) except -1
    cdef bytes take(self)


cdef class Node:
    """One file (value is a str, children None) or directory (value None, children a dict)."""
    cdef readonly str path
    cdef readonly str name
    cdef readonly str value
    cdef dict children
    cdef Node parent
    cdef readonly uint64_t created_index
    cdef readonly uint64_t modified_index
    cdef readonly int64_t expire_ns
    cdef Py_ssize_t heap_pos


cdef class Event:
    cdef readonly str action
    cdef readonly str key
    cdef readonly uint64_t index
    cdef readonly uint64_t etcd_index
    cdef readonly bint is_dir
    cdef readonly bint refresh
    cdef readonly bint created
    cdef readonly tuple removed
    cdef readonly bytes body
    cdef readonly object value

    cdef list _state(self)


cdef class EventHistory:
    cdef list _ring
    cdef readonly Py_ssize_t capacity
    cdef Py_ssize_t _front
    cdef Py_ssize_t _size
    cdef readonly uint64_t start_index
    cdef readonly uint64_t last_index

    cpdef add(self, Event event)
    cpdef Event scan(self, str key, bint recursive, uint64_t since_index)
    cdef list _events(self)


cdef class Store:
    cdef Node _root
    cdef dict _nodes
    cdef list _heap
    cdef readonly uint64_t index
    cdef readonly EventHistory history
    cdef uint64_t _stats[15]
    cdef _Buf _buf
    cdef _Buf _out  # get_response assembles the HTTP response here

    # the public operations (Python-visible)
    cpdef Event get(self, str path, bint recursive, bint sorted, int64_t now_ns)
    cpdef Event set(self, str path, bint dir, str value, int64_t expire_ns, bint refresh, int64_t now_ns)
    cpdef Event create(self, str path, bint dir, str value, bint unique, int64_t expire_ns, int64_t now_ns)
    cpdef Event update(self, str path, str value, int64_t expire_ns, bint refresh, int64_t now_ns)
    cpdef Event compare_and_swap(self, str path, object prev_value, uint64_t prev_index, str value,
                                 int64_t expire_ns, bint refresh, int64_t now_ns)
    cpdef Event delete(self, str path, bint dir, bint recursive, int64_t now_ns)
    cpdef Event compare_and_delete(self, str path, object prev_value, uint64_t prev_index, int64_t now_ns)
    cpdef list delete_expired(self, int64_t now_ns)
    cpdef int64_t next_expiry_ns(self)
    cpdef Event apply(self, bytes request, int64_t now_ns)
    cpdef bint auth_enabled(self)

    # tree
    cdef Node _read(self, str path, bint recursive, bint sorted, int64_t now_ns)
    cdef Node _lookup(self, str path)
    cdef Node _walk_error(self, str path)
    cdef Node _prepare_parent(self, str path, list missing)
    cdef Node _make_dirs(self, Node parent, list missing, uint64_t index)
    cdef Node _attach(self, Node parent, str name, str value, bint is_dir, uint64_t index, int64_t expire_ns)
    cdef void _detach(self, Node n, list removed)
    cdef void _set_expiry(self, Node n, int64_t expire_ns)

    # TTL heap, ordered by (expire_ns, path)
    cdef bint _heap_less(self, Node a, Node b)
    cdef void _heap_swap(self, Py_ssize_t i, Py_ssize_t j)
    cdef void _heap_up(self, Py_ssize_t i)
    cdef void _heap_down(self, Py_ssize_t i)
    cdef void _heap_push(self, Node n)
    cdef void _heap_remove(self, Node n)
    cdef void _heap_fix(self, Node n)
    cdef bytes _snapshot(self)

    # encoding
    cdef int _w_fields(self, str path, str value, bint is_dir, int64_t expire_ns, int64_t now_ns,
                       uint64_t modified, uint64_t created, Node listing, bint recursive,
                       bint by_key) except -1
    cdef int _w_tree(self, Node n, bint listing, bint recursive, bint by_key, int64_t now_ns) except -1
    cdef int _w_head(self, str action) except -1
    cdef Event _finish(self, str action, str key, uint64_t index, bint is_dir, bint refresh,
                       bint created, tuple removed, object value)
    cdef Event _record(self, Event e)

    # operations
    cdef Event _create(self, str path, bint is_dir, str value, bint unique, bint replace,
                       int64_t expire_ns, str action, int64_t now_ns)
    cdef Event _update(self, str path, str value, int64_t expire_ns, bint refresh, int64_t now_ns)
    cdef Event _cas(self, str path, object prev_value, uint64_t prev_index, str value,
                    int64_t expire_ns, bint refresh, int64_t now_ns)
    cdef Event _delete(self, str path, bint dir, bint recursive, int64_t now_ns)
    cdef Event _cad(self, str path, object prev_value, uint64_t prev_index, int64_t now_ns)
    cdef Event _expire_one(self, Node n, int64_t now_ns)
    cdef int _compare(self, Node n, object prev_value, uint64_t prev_index) except -1
    cdef Event _remove(self, str action, Node n, uint64_t nxt, int64_t now_ns)
