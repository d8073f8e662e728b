# cython: language_level=3
"""A send queue: batches of (socket, bytes) written by a thread that never holds the GIL.

The event loop hands over the answers of one loop pass as one batch (``submit``) and goes on;
the thread sends each item with one non-blocking ``send`` and signals ``event_fd`` (an
eventfd) once a batch is done; the loop, woken by it, takes the outcomes (``collect``): for each
item the count of bytes sent, or ``-errno``. Batches are sent and collected in submission order.

Contracts:
* the descriptors handed over are the queue's: each is closed right after its send (hand over a
  ``dup`` of the socket's own, so that the socket outlives whatever its owner does meanwhile: a
  closed and reused descriptor would receive another connection's bytes);
* the queue keeps every ``bytes`` of a batch alive until its outcome is collected;
* a send that would block or fails is not retried: its outcome says how far it got, and the
  caller writes the rest (or drops it) itself.
"""

cimport cython
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_GET_SIZE
from libc.errno cimport EAGAIN, EINTR, errno
from libc.stdint cimport uint64_t
from libc.stdlib cimport free, malloc
from posix.unistd cimport close, dup, read, write

from collections import deque


cdef extern from "<sys/socket.h>" nogil:
    ssize_t send(int fd, const void *buf, size_t n, int flags)
    int MSG_NOSIGNAL
    int MSG_DONTWAIT


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
    const char *data
    Py_ssize_t size
    Py_ssize_t outcome


cdef struct Batch:
    Item *items
    Py_ssize_t count
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
    batch.next = NULL
    for i in range(count):
        payload = payloads[i]
        batch.items[i].fd = dup(fds[i]) if duplicate else fds[i]
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


@cython.final
cdef class SendQueue:
    """Batches of ``(fd, bytes)`` sent in order by the thread that runs ``serve``."""

    cdef pthread_mutex_t _lock
    cdef pthread_cond_t _wake
    cdef BatchList _queued  # submitted, not yet taken by the thread
    cdef BatchList _sent  # sent, outcome not yet collected
    cdef bint _stopping
    cdef readonly int event_fd
    cdef object _payloads  # per batch in flight, its list of bytes (kept alive)

    def __cinit__(self):
        pthread_mutex_init(&self._lock, NULL)
        pthread_cond_init(&self._wake, NULL)
        self.event_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK)
        if self.event_fd < 0:
            raise OSError(errno, "eventfd failed")
        self._payloads = deque()

    def __dealloc__(self):
        cdef Batch *batch = self._queued.head
        cdef Py_ssize_t i
        while batch != NULL:  # never sent: their descriptors are still ours to close
            for i in range(batch.count):
                close(batch.items[i].fd)
            batch = batch.next
        _free_all(self._queued.head)
        _free_all(self._sent.head)
        if self.event_fd >= 0:
            close(self.event_fd)
        pthread_cond_destroy(&self._wake)
        pthread_mutex_destroy(&self._lock)

    def submit(self, list fds, list payloads, bint duplicate=False):
        """Queue one batch: ``payloads[i]`` (bytes) to be sent on descriptor ``fds[i]``, which
        the thread closes after the send. With ``duplicate`` the thread gets a ``dup`` of each
        descriptor, taken here, and the caller keeps its own; an item that gets none (the
        open-file limit) is reported ``-EBADF``."""
        cdef Batch *batch = _new_batch(fds, payloads, duplicate)
        self._payloads.append(payloads)
        # The GIL stays held: the thread holds the lock only to queue or take a batch, never
        # while it sends, and releasing the GIL here would hand it to another thread for a while.
        pthread_mutex_lock(&self._lock)
        _push(&self._queued, batch)
        pthread_cond_signal(&self._wake)
        pthread_mutex_unlock(&self._lock)

    def collect(self):
        """The outcomes of the batches sent since the last call, oldest first: for each batch a
        list with, per item, the bytes sent or ``-errno``. Resets ``event_fd``."""
        cdef uint64_t counter
        cdef Batch *batch
        cdef Batch *first
        cdef Py_ssize_t i
        cdef list outcomes = []
        cdef list one
        read(self.event_fd, &counter, sizeof(counter))
        pthread_mutex_lock(&self._lock)
        first = _take_all(&self._sent)
        pthread_mutex_unlock(&self._lock)
        batch = first
        while batch != NULL:
            one = [batch.items[i].outcome for i in range(batch.count)]
            outcomes.append(one)
            self._payloads.popleft()
            batch = batch.next
        _free_all(first)
        return outcomes

    def serve(self):
        """Send queued batches until ``stop`` (then the queued ones first). Run it on a thread of
        its own: it releases the GIL for good and blocks."""
        with nogil:
            self._serve()

    cdef void _serve(self) noexcept nogil:
        cdef Batch *batch
        cdef Batch *next_batch
        cdef uint64_t one = 1
        while True:
            pthread_mutex_lock(&self._lock)
            while self._queued.head == NULL and not self._stopping:
                pthread_cond_wait(&self._wake, &self._lock)
            batch = _take_all(&self._queued)
            pthread_mutex_unlock(&self._lock)
            if batch == NULL:
                return  # stopping, nothing left
            while batch != NULL:
                _send_batch(batch, True)
                next_batch = batch.next
                pthread_mutex_lock(&self._lock)
                _push(&self._sent, batch)
                pthread_mutex_unlock(&self._lock)
                write(self.event_fd, &one, sizeof(one))
                batch = next_batch

    def stop(self):
        """Ask ``serve`` to return once the queued batches are sent."""
        pthread_mutex_lock(&self._lock)
        self._stopping = True
        pthread_cond_signal(&self._wake)
        pthread_mutex_unlock(&self._lock)
