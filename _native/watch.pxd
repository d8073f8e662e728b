# The watch hub: watchers registered by key, fed events as etcd 3.4's watcherHub feeds them.
#
# Invariants:
#   * a Watcher is in at most one list of WatchHub._watchers (the one of its key), exactly
#     while `registered` is true; WatchHub.count is the number of registered watchers;
#   * notify() frames an event as one HTTP chunk once and writes that same bytes object to
#     every matching watcher; the non-stream ones an event completes get theirs together (through
#     `deliver` when set), before any of their on_done callbacks runs.


cdef class Watcher:
    cdef readonly str key
    cdef readonly bint recursive
    cdef readonly bint stream
    cdef readonly unsigned long long since_index
    cdef readonly object transport
    cdef readonly object on_done
    cdef readonly bint registered


cdef class WatchHub:
    cdef readonly object history
    cdef public object deliver
    cdef dict _watchers
    cdef readonly Py_ssize_t count

    cpdef object watch(self, Watcher watcher, unsigned long long current_index)
    cpdef notify(self, object event)
    cpdef remove(self, Watcher watcher)
    cdef void _notify_path(self, object event, str key, str path, bint deleted,
                           unsigned long long index, list frames, list finished, list done)
