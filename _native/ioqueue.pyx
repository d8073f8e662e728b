# cython: language_level=3
"""I/O queues: batches of work on descriptors done by a thread that never holds the GIL.

The event loop hands over a batch (``submit``) and goes on; the thread does the work and signals
``event_fd`` (an eventfd); the loop, woken by it, takes the outcomes (``collect``): for each
batch, per item, a number. Batches are done and collected in submission order. The queue keeps
every ``bytes`` of a batch alive until its outcome is collected.

``SendQueue`` sends answers to sockets. Each item is sent with one non-blocking ``send``; its
outcome is the count of bytes sent or ``-errno``; a send that would block or fails is not
retried (the caller writes the rest, or drops it). The descriptors handed over are the queue's
and each is closed right after its send: hand over a ``dup`` of the socket's own (or let
``submit`` take one), so that the socket outlives whatever its owner does meanwhile (a closed and
reused descriptor would receive another connection's bytes).

``SyncQueue`` writes records to a file and makes them durable: every item is written at its
offset, then the file is synced ONCE for all the batches the thread took together (a group
commit); an item's outcome is 0 once it is durable, else ``-errno``. The descriptor stays the
caller's. A failure is sticky: every item after a failed one fails too, unwritten, until
``reset()``, so nothing is written behind a record that may be incomplete.
"""

cimport cython
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_GET_SIZE
from libc.errno cimport EAGAIN, EINTR, EIO, errno
from libc.stdint cimport int64_t, uint64_t
from libc.stdlib cimport free, malloc
from posix.time cimport CLOCK_MONOTONIC, clock_gettime, timespec
from posix.types cimport off_t
from posix.unistd cimport close, dup, pwrite, read, write

from collections import deque


cdef extern from "<sys/socket.h>" nogil:
    ssize_t send(int fd, const void *buf, size_t n, int flags)
    int MSG_NOSIGNAL
    int MSG_DONTWAIT


cdef extern from "<unistd.h>" nogil:
    int _fdatasync "fdatasync"(int fd)


cdef extern from "<sys/eventfd.h>" nogil:
    int eventfd(unsigned int initval, int flags)
    int EFD_CLOEXEC
    int EFD_NONBLOCK


cdef extern from "<pthread.h>" nogil:
    ctypedef struct pthread_mutex_t:
        pass
    ctypedef struct pthread_cond_t:
        pass
    int pthread_mutex_init(pthread_mutex_t *mutex, void *attr)
    int pthread_mutex_destroy(pthread_mutex_t *mutex)
    int pthread_mutex_lock(pthread_mutex_t *mutex)
    int pthread_mutex_unlock(pthread_mutex_t *mutex)
    int pthread_cond_init(pthread_cond_t *cond, void *attr)
    int pthread_cond_destroy(pthread_cond_t *cond)
    int pthread_cond_wait(pthread_cond_t *cond, pthread_mutex_t *mutex)
    int pthread_cond_signal(pthread_cond_t *cond)


cdef struct Item:
    int fd
    long long offset  # SyncQueue: where in the file
    const char *data
    Py_ssize_t size
    Py_ssize_t outcome


cdef struct Batch:
    Item *items
    Py_ssize_t count
    double seconds  # SyncQueue: the time its group's writes and sync took (the group's last batch)
    Batch *next


cdef struct BatchList:
    Batch *head
    Batch *tail


cdef inline void _push(BatchList *batches, Batch *batch) noexcept nogil:
    batch.next = NULL
    if batches.tail == NULL:
        batches.head = batch
    else:
        batches.tail.next = batch
    batches.tail = batch


cdef inline Batch *_take_all(BatchList *batches) noexcept nogil:
    cdef Batch *head = batches.head
    batches.head = NULL
    batches.tail = NULL
    return head


cdef inline void _free_all(Batch *batch) noexcept nogil:
    cdef Batch *next_batch
    while batch != NULL:
        next_batch = batch.next
        free(batch.items)
        free(batch)
        batch = next_batch


cdef Py_ssize_t _send_whole(int fd, const char *data, Py_ssize_t size) noexcept nogil:
    """Bytes of ``data`` sent to ``fd`` before it would block (or all), else ``-errno``."""
    cdef Py_ssize_t done = 0
    cdef ssize_t n
    while done < size:
        n = send(fd, data + done, size - done, MSG_NOSIGNAL | MSG_DONTWAIT)
        if n >= 0:
            done += n
        elif errno == EINTR:
            continue
        elif errno == EAGAIN:
            break
        else:
            return -errno if done == 0 else done
    return done


cdef Batch *_new_batch(list fds, list payloads, bint duplicate=False) except NULL:
    """A batch of items pointing into ``payloads`` (which the caller keeps alive), on ``fds``
    or, with ``duplicate``, on a ``dup`` of each (-1 where none can be had: that send then
    reports ``-EBADF``)."""
    cdef Py_ssize_t count = len(fds)
    cdef Py_ssize_t i
    cdef bytes payload
    cdef Batch *batch
    if len(payloads) != count:
        raise ValueError("one payload per descriptor")
    batch = <Batch *> malloc(sizeof(Batch))
    if batch == NULL:
        raise MemoryError()
    batch.items = <Item *> malloc(sizeof(Item) * (count if count > 0 else 1))
    if batch.items == NULL:
        free(batch)
        raise MemoryError()
    batch.count = count
    batch.seconds = 0
    batch.next = NULL
    for i in range(count):
        payload = payloads[i]
        batch.items[i].fd = dup(fds[i]) if duplicate else fds[i]
        batch.items[i].offset = 0
        batch.items[i].data = PyBytes_AS_STRING(payload)
        batch.items[i].size = PyBytes_GET_SIZE(payload)
        batch.items[i].outcome = 0
    return batch


cdef inline void _send_batch(Batch *batch, bint close_after) noexcept nogil:
    """Send every item; then close its descriptor when it was handed over with it."""
    cdef Py_ssize_t i
    cdef Item *item
    for i in range(batch.count):
        item = &batch.items[i]
        item.outcome = _send_whole(item.fd, item.data, item.size)
        if close_after:
            close(item.fd)


def send_now(list fds, list payloads, bint close_after=True):
    """Send ``payloads[i]`` on ``fds[i]`` right here, with the GIL released meanwhile; per item
    the bytes sent or ``-errno`` (as ``SendQueue.collect`` reports them). Each descriptor is
    closed after its send unless ``close_after`` is false: then they stay the caller's (whose
    thread is blocked here, so none of them can be closed meanwhile by their owner)."""
    cdef Batch *batch = _new_batch(fds, payloads)
    cdef Py_ssize_t i
    with nogil:
        _send_batch(batch, close_after)
    outcomes = [batch.items[i].outcome for i in range(batch.count)]
    _free_all(batch)
    return outcomes


cdef class _IoQueue:
    """The machinery both queues share: the batches, the lock, the thread's loop, ``event_fd``."""

    cdef pthread_mutex_t _lock
    cdef pthread_cond_t _wake
    cdef BatchList _queued  # submitted, not yet taken by the thread
    cdef BatchList _done  # done, outcome not yet collected
    cdef bint _stopping
    cdef bint _owns_fds  # the descriptors handed over are the queue's to close
    cdef readonly int event_fd
    cdef object _payloads  # per batch in flight, what keeps its bytes alive

    def __cinit__(self, *args):
        pthread_mutex_init(&self._lock, NULL)
        pthread_cond_init(&self._wake, NULL)
        self.event_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK)
        if self.event_fd < 0:
            raise OSError(errno, "eventfd failed")
        self._payloads = deque()

    def __dealloc__(self):
        cdef Batch *batch = self._queued.head
        cdef Py_ssize_t i
        while batch != NULL and self._owns_fds:  # never sent: their descriptors are ours to close
            for i in range(batch.count):
                close(batch.items[i].fd)
            batch = batch.next
        _free_all(self._queued.head)
        _free_all(self._done.head)
        if self.event_fd >= 0:
            close(self.event_fd)
        pthread_cond_destroy(&self._wake)
        pthread_mutex_destroy(&self._lock)

    cdef void _queue(self, Batch *batch, object keep_alive):
        self._payloads.append(keep_alive)
        # The GIL stays held: the thread holds the lock only to queue or take batches, never
        # while it works, and releasing the GIL here would hand it to another thread for a while.
        pthread_mutex_lock(&self._lock)
        _push(&self._queued, batch)
        pthread_cond_signal(&self._wake)
        pthread_mutex_unlock(&self._lock)

    def collect(self):
        """The outcomes of the batches done since the last call, oldest first (for each batch
        what ``_outcome`` makes of it). Resets ``event_fd``."""
        cdef uint64_t counter
        cdef Batch *batch
        cdef Batch *first
        cdef list outcomes = []
        read(self.event_fd, &counter, sizeof(counter))
        pthread_mutex_lock(&self._lock)
        first = _take_all(&self._done)
        pthread_mutex_unlock(&self._lock)
        batch = first
        while batch != NULL:
            outcomes.append(self._outcome(batch))
            self._payloads.popleft()
            batch = batch.next
        _free_all(first)
        return outcomes

    cdef object _outcome(self, Batch *batch):
        """What ``collect`` reports for ``batch``: its items' outcomes."""
        cdef Py_ssize_t i
        return [batch.items[i].outcome for i in range(batch.count)]

    def serve(self):
        """Work through queued batches until ``stop`` (then the queued ones first). Run it on a
        thread of its own: it releases the GIL for good and blocks."""
        with nogil:
            self._serve()

    cdef void _serve(self) noexcept nogil:
        cdef Batch *taken
        while True:
            pthread_mutex_lock(&self._lock)
            while self._queued.head == NULL and not self._stopping:
                pthread_cond_wait(&self._wake, &self._lock)
            taken = _take_all(&self._queued)
            pthread_mutex_unlock(&self._lock)
            if taken == NULL:
                return  # stopping, nothing left
            self._work(taken)

    cdef void _work(self, Batch *taken) noexcept nogil:
        """Do the batches ``taken`` (a list, oldest first), handing each to ``_finished``."""
        pass

    cdef void _finished(self, Batch *batch) noexcept nogil:
        """``batch`` is done: make its outcomes collectable and wake the loop."""
        cdef uint64_t one = 1
        pthread_mutex_lock(&self._lock)
        _push(&self._done, batch)
        pthread_mutex_unlock(&self._lock)
        write(self.event_fd, &one, sizeof(one))

    def stop(self):
        """Ask ``serve`` to return once the queued batches are done."""
        pthread_mutex_lock(&self._lock)
        self._stopping = True
        pthread_cond_signal(&self._wake)
        pthread_mutex_unlock(&self._lock)


@cython.final
cdef class SendQueue(_IoQueue):
    """Batches of ``(fd, bytes)`` sent in order by the thread that runs ``serve``."""

    def __cinit__(self):
        self._owns_fds = True

    def submit(self, list fds, list payloads, bint duplicate=False):
        """Queue one batch: ``payloads[i]`` (bytes) to be sent on descriptor ``fds[i]``, which
        the thread closes after the send. With ``duplicate`` the thread gets a ``dup`` of each
        descriptor, taken here, and the caller keeps its own; an item that gets none (the
        open-file limit) is reported ``-EBADF``."""
        self._queue(_new_batch(fds, payloads, duplicate), payloads)

    cdef void _work(self, Batch *taken) noexcept nogil:
        cdef Batch *next_batch
        while taken != NULL:
            _send_batch(taken, True)
            next_batch = taken.next
            self._finished(taken)
            taken = next_batch


cdef inline int64_t _now_ns() noexcept nogil:
    cdef timespec ts
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return <int64_t> ts.tv_sec * 1000000000 + ts.tv_nsec


cdef Py_ssize_t _write_at(int fd, const char *data, Py_ssize_t size, long long offset) noexcept nogil:
    """Write all of ``data`` at ``offset``: 0, else ``-errno`` (``-EIO`` for a write of nothing)."""
    cdef Py_ssize_t done = 0
    cdef ssize_t n
    while done < size:
        n = pwrite(fd, data + done, size - done, <off_t> (offset + done))
        if n > 0:
            done += n
        elif n < 0 and errno == EINTR:
            continue
        else:
            return -errno if n < 0 else -EIO
    return 0


@cython.final
cdef class SyncQueue(_IoQueue):
    """Records written at their offsets and synced, a group at a time, by the thread that runs
    ``serve``; see the module doc. ``collect`` reports, per record, ``(outcome, seconds)``: 0 or
    ``-errno``, and for the last record of each group the time its writes and sync took (else 0)."""

    cdef int _fd
    cdef Py_ssize_t _failure  # -errno of the first failure since ``reset``, else 0

    def __cinit__(self, int fd):
        self._fd = fd
        self._owns_fds = False

    def submit(self, long long offset, bytes record):
        """Queue one record, to be written at ``offset`` and synced."""
        cdef Batch *batch = _new_batch([self._fd], [record])
        batch.items[0].offset = offset
        self._queue(batch, record)

    def reset(self):
        """Forget a failure: later records are written again. Call it only once every record
        submitted before is collected."""
        pthread_mutex_lock(&self._lock)
        self._failure = 0
        pthread_mutex_unlock(&self._lock)

    cdef object _outcome(self, Batch *batch):
        return batch.items[0].outcome, batch.seconds

    cdef void _work(self, Batch *taken) noexcept nogil:
        cdef Batch *batch = taken
        cdef Batch *next_batch
        cdef Py_ssize_t i, failure
        cdef int64_t started = _now_ns()
        cdef bint wrote = False
        pthread_mutex_lock(&self._lock)
        failure = self._failure
        pthread_mutex_unlock(&self._lock)
        while batch != NULL:
            for i in range(batch.count):
                if failure == 0:
                    failure = _write_at(batch.items[i].fd, batch.items[i].data, batch.items[i].size,
                                        batch.items[i].offset)
                    wrote = True
            batch = batch.next
        if failure == 0 and wrote and _fdatasync(self._fd) != 0:
            failure = -errno
        pthread_mutex_lock(&self._lock)
        self._failure = failure
        pthread_mutex_unlock(&self._lock)
        batch = taken
        while batch != NULL:
            for i in range(batch.count):
                batch.items[i].outcome = failure
            next_batch = batch.next
            if next_batch == NULL:
                batch.seconds = (_now_ns() - started) / 1e9
            self._finished(batch)
            batch = next_batch
