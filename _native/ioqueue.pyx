# cython: language_level=3
"""I/O queues: work on descriptors done by a thread that never holds the GIL.

``SendQueue`` sends a batch of answers from two threads at once. ``send`` hands the batch to the
thread that runs ``serve`` and, with the GIL released, sends alongside it: each of the two takes
the next unsent item until none is left, so the faster one sends more. ``send`` returns once every
item is sent and the thread has let go of the batch: per item the count of bytes sent or
``-errno``. Each item is sent with one non-blocking ``send``; a send that would block or fails is
not retried (the caller writes the rest, or drops it). The descriptors stay the caller's: its
thread waits in ``send``, so none can be closed (and reused) meanwhile by their owner. Items of
one batch are sent in no particular order: give each descriptor at most one item per batch.

``SyncQueue`` writes records to a file and makes them durable: ``submit`` queues a record and
returns at once; the thread writes every queued record at its offset, then syncs the file ONCE
for all the records it took together (a group commit), and signals ``event_fd`` (an eventfd); the
loop, woken by it, takes the outcomes (``collect``) in submission order: 0 once a record is
durable, else ``-errno``. The descriptor stays the caller's. A failure is sticky: every record
after a failed one fails too, unwritten, until ``reset()``, so nothing is written behind a record
that may be incomplete.
"""

cimport cython
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_GET_SIZE
from libc.errno cimport EAGAIN, EINTR, EIO, errno
from libc.stdint cimport int64_t, uint64_t
from libc.stdlib cimport free, malloc
from posix.time cimport CLOCK_MONOTONIC, clock_gettime, timespec
from posix.types cimport off_t
from posix.unistd cimport close, pwrite, read, write

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


cdef extern from *:
    """
    static inline Py_ssize_t fastkv_next_item(Py_ssize_t *next) {
        return __atomic_fetch_add(next, 1, __ATOMIC_RELAXED);
    }
    """
    # The index of the next unsent item of a shared batch: each index is taken exactly once.
    Py_ssize_t _next_item "fastkv_next_item"(Py_ssize_t *next) noexcept nogil


cdef struct Item:
    int fd
    long long offset  # SyncQueue: where in the file
    const char *data
    Py_ssize_t size
    Py_ssize_t outcome


cdef struct Batch:
    Item *items
    Py_ssize_t count
    Py_ssize_t next_item  # SendQueue: the next item either thread may take
    bint released  # SendQueue: the thread has let go of the batch
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


cdef bint _unlink(BatchList *batches, Batch *batch) noexcept nogil:
    """Take ``batch`` out of ``batches``; False when it is not there."""
    cdef Batch *before = NULL
    cdef Batch *current = batches.head
    while current != NULL and current != batch:
        before, current = current, current.next
    if current == NULL:
        return False
    if before == NULL:
        batches.head = batch.next
    else:
        before.next = batch.next
    if batches.tail == batch:
        batches.tail = before
    batch.next = NULL
    return True


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


cdef Batch *_new_batch(list fds, list payloads) except NULL:
    """A batch of items on ``fds`` pointing into ``payloads`` (which the caller keeps alive)."""
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
    batch.next_item = 0
    batch.released = False
    batch.seconds = 0
    batch.next = NULL
    for i in range(count):
        payload = payloads[i]
        batch.items[i].fd = fds[i]
        batch.items[i].offset = 0
        batch.items[i].data = PyBytes_AS_STRING(payload)
        batch.items[i].size = PyBytes_GET_SIZE(payload)
        batch.items[i].outcome = 0
    return batch


cdef class _IoQueue:
    """The machinery both queues share: the queued batches, the lock, the thread's loop."""

    cdef pthread_mutex_t _lock
    cdef pthread_cond_t _wake  # the thread waits on it for work
    cdef BatchList _queued  # handed over, not yet taken by the thread
    cdef bint _stopping

    def __cinit__(self, *args):
        pthread_mutex_init(&self._lock, NULL)
        pthread_cond_init(&self._wake, NULL)

    def __dealloc__(self):
        _free_all(self._queued.head)
        pthread_cond_destroy(&self._wake)
        pthread_mutex_destroy(&self._lock)

    cdef void _queue(self, Batch *batch) noexcept nogil:
        # Called with the GIL held: the thread holds the lock only to queue or take batches, never
        # while it works, and releasing the GIL here would hand it to another thread for a while.
        pthread_mutex_lock(&self._lock)
        _push(&self._queued, batch)
        pthread_cond_signal(&self._wake)
        pthread_mutex_unlock(&self._lock)

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
        """Do the batches ``taken`` (a list, oldest first)."""
        pass

    def stop(self):
        """Ask ``serve`` to return once the queued batches are done."""
        pthread_mutex_lock(&self._lock)
        self._stopping = True
        pthread_cond_signal(&self._wake)
        pthread_mutex_unlock(&self._lock)


cdef void _send_shared(Batch *batch) noexcept nogil:
    """Send items of ``batch`` until none is left unsent (another thread may be taking some)."""
    cdef Py_ssize_t i
    cdef Item *item
    while True:
        i = _next_item(&batch.next_item)
        if i >= batch.count:
            return
        item = &batch.items[i]
        item.outcome = _send_whole(item.fd, item.data, item.size)


@cython.final
cdef class SendQueue(_IoQueue):
    """Batches of ``(fd, bytes)`` sent by the caller of ``send`` and the thread that runs
    ``serve``, together (see the module doc)."""

    cdef pthread_cond_t _released  # ``send`` waits on it for the thread to let go of its batch

    def __cinit__(self):
        pthread_cond_init(&self._released, NULL)

    def __dealloc__(self):
        pthread_cond_destroy(&self._released)

    def send(self, list fds, list payloads):
        """Send ``payloads[i]`` (bytes) on descriptor ``fds[i]``, sharing the work with the thread,
        and return per item the bytes sent or ``-errno``. Without a serving thread the caller
        sends them all."""
        cdef Batch *batch = _new_batch(fds, payloads)
        cdef Py_ssize_t i
        self._queue(batch)
        with nogil:
            _send_shared(batch)
            pthread_mutex_lock(&self._lock)
            if not _unlink(&self._queued, batch):  # the thread took it: wait until it lets go
                while not batch.released:
                    pthread_cond_wait(&self._released, &self._lock)
            pthread_mutex_unlock(&self._lock)
        outcomes = [batch.items[i].outcome for i in range(batch.count)]
        _free_all(batch)
        return outcomes

    cdef void _work(self, Batch *taken) noexcept nogil:
        cdef Batch *next_batch
        while taken != NULL:
            next_batch = taken.next  # once released, the batch is the caller's to free
            _send_shared(taken)
            pthread_mutex_lock(&self._lock)
            taken.released = True
            pthread_cond_signal(&self._released)
            pthread_mutex_unlock(&self._lock)
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
    cdef BatchList _done  # done, outcome not yet collected
    cdef readonly int event_fd
    cdef object _records  # per record in flight, its bytes (kept alive until collected)

    def __cinit__(self, int fd):
        self._fd = fd
        self.event_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK)
        if self.event_fd < 0:
            raise OSError(errno, "eventfd failed")
        self._records = deque()

    def __dealloc__(self):
        _free_all(self._done.head)
        if self.event_fd >= 0:
            close(self.event_fd)

    def submit(self, long long offset, bytes record):
        """Queue one record, to be written at ``offset`` and synced."""
        cdef Batch *batch = _new_batch([self._fd], [record])
        batch.items[0].offset = offset
        self._records.append(record)
        self._queue(batch)

    def reset(self):
        """Forget a failure: later records are written again. Call it only once every record
        submitted before is collected."""
        pthread_mutex_lock(&self._lock)
        self._failure = 0
        pthread_mutex_unlock(&self._lock)

    def collect(self):
        """``(outcome, seconds)`` of each record done since the last call, oldest first. Resets
        ``event_fd``."""
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
            outcomes.append((batch.items[0].outcome, batch.seconds))
            self._records.popleft()
            batch = batch.next
        _free_all(first)
        return outcomes

    cdef void _work(self, Batch *taken) noexcept nogil:
        cdef Batch *batch = taken
        cdef Batch *next_batch
        cdef Py_ssize_t i, failure
        cdef int64_t started = _now_ns()
        cdef bint wrote = False
        cdef uint64_t one = 1
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
        batch = taken
        while batch != NULL:
            for i in range(batch.count):
                batch.items[i].outcome = failure
            next_batch = batch.next
            if next_batch == NULL:
                batch.seconds = (_now_ns() - started) / 1e9
            _push(&self._done, batch)
            batch = next_batch
        pthread_mutex_unlock(&self._lock)
        write(self.event_fd, &one, sizeof(one))
