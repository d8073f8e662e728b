# cython: language_level=3
"""The watch hub: long-poll and stream watchers fed the way etcd 3.4's watcherHub feeds them.

An event is framed once as an HTTP chunk (``<hex length>\\r\\n<body>\\r\\n``) and that same bytes
object is written to every matching watcher; a non-stream watcher gets the chunk followed by
the last chunk (``0\\r\\n\\r\\n``) in one write, is unregistered and its ``on_done()`` is called.
The non-stream watchers an event completes get their write together, through ``deliver`` when
the hub has one (a fan-out's sends can then leave from several threads at once).
"""

cimport cython

from fastkv._native.store import V2Error

cdef bytes _LAST_CHUNK = b"0\r\n\r\n"


@cython.final
cdef class Watcher:
    """One waiting ``?wait=true`` request.

    ``transport`` needs ``write(bytes)`` and ``is_closing()``; ``on_done()`` (no arguments) is
    called once the hub has written a non-stream watcher's event and forgotten it.
    ``since_index`` 0 means "the next event" (the hub fixes it to current index + 1).
    """

    def __init__(self, str key, bint recursive, bint stream, unsigned long long since_index,
                 object transport, object on_done):
        if len(key) > 1 and key.endswith("/"):
            key = key.rstrip("/") or "/"
        self.key = key
        self.recursive = recursive
        self.stream = stream
        self.since_index = since_index
        self.transport = transport
        self.on_done = on_done
        self.registered = False

    def __repr__(self):
        return (f"<Watcher {self.key} recursive={self.recursive} stream={self.stream} "
                f"since={self.since_index}>")


@cython.final
cdef class WatchHub:
    """Watchers by watched key, plus the event history that ``waitIndex`` watches scan.

    ``deliver(transports, data)``, when set, writes ``data`` (a whole answer: an event's chunk and
    the last chunk) to each of ``transports``, at once: the transports of the non-stream watchers
    one event completes, in the order they matched. Without it each gets ``transport.write``.
    """

    def __init__(self, history, deliver=None):
        self.history = history
        self.deliver = deliver
        self._watchers = {}
        self.count = 0

    cpdef object watch(self, Watcher watcher, unsigned long long current_index):
        """Answer from history or register.

        Returns the first history event at or after ``since_index`` that matches (the watcher
        is then NOT registered, stream or not: etcd's GH2854), else None after registering.
        Raises V2Error 401 (index = ``current_index``) when the history was cleared.
        """
        cdef list waiting
        if watcher.registered:
            raise ValueError("watcher already registered")
        if watcher.since_index == 0:
            watcher.since_index = current_index + 1
        try:
            event = self.history.scan(watcher.key, watcher.recursive, watcher.since_index)
        except V2Error as err:
            raise V2Error(err.code, err.cause, current_index) from None
        if event is not None:
            return event
        waiting = self._watchers.get(watcher.key)
        if waiting is None:
            self._watchers[watcher.key] = [watcher]
        else:
            waiting.append(watcher)
        watcher.registered = True
        self.count += 1
        return None

    cpdef remove(self, Watcher watcher):
        """Forget a watcher (its connection closed). Idempotent."""
        cdef list waiting
        if not watcher.registered:
            return
        watcher.registered = False
        self.count -= 1
        waiting = self._watchers.get(watcher.key)
        if waiting is not None:
            for i in range(len(waiting)):
                if waiting[i] is watcher:
                    del waiting[i]
                    break
            if not waiting:
                del self._watchers[watcher.key]

    cpdef notify(self, object event):
        """Deliver ``event`` to every matching watcher (refresh events are never delivered).

        Order and rules of etcd's hub: first every path the event removed (delete, expire,
        compareAndDelete) with "deleted" semantics -- any watcher there matches -- then every
        ancestor of the event key from ``/`` down to the key itself, where only recursive
        watchers (or those on the exact key) match, and not when the key has a ``/_`` segment
        below the watched path. Watchers need ``event.index >= since_index``.
        """
        cdef str key
        cdef unsigned long long index
        cdef list frames, finished, done
        cdef Py_ssize_t pos
        if not self._watchers or event.refresh:
            return
        key = event.key
        index = event.index
        frames = [None]
        finished = []  # the transports of the non-stream watchers this event completes
        done = []  # their on_done callbacks
        for path in event.removed:
            self._notify_path(event, key, path, True, index, frames, finished, done)
        self._notify_path(event, key, "/", False, index, frames, finished, done)
        pos = key.find("/", 1)
        while pos > 0:
            self._notify_path(event, key, key[:pos], False, index, frames, finished, done)
            pos = key.find("/", pos + 1)
        if key != "/":
            self._notify_path(event, key, key, False, index, frames, finished, done)
        if finished:
            last = frames[0] + _LAST_CHUNK
            if self.deliver is None:
                for transport in finished:
                    transport.write(last)
            else:
                self.deliver(finished, last)
        first_error = None
        for on_done in done:
            try:
                on_done()
            except Exception as err:  # every watcher gets its callback; report the first failure
                if first_error is None:
                    first_error = err
        if first_error is not None:
            raise first_error

    cdef void _notify_path(self, object event, str key, str path, bint deleted,
                           unsigned long long index, list frames, list finished, list done):
        """Feed the watchers registered at ``path``; keep the ones that stay registered."""
        cdef list waiting = self._watchers.get(path)
        cdef list kept
        cdef Watcher w
        cdef bint original
        if waiting is None:
            return
        original = path == key
        if not original and not deleted and len(path) <= len(key) and key.find("/_", len(path) - 1) >= 0:
            return  # hidden below the watched path
        kept = []
        for w in waiting:
            if not (w.recursive or original or deleted) or index < w.since_index:
                kept.append(w)
                continue
            transport = w.transport
            if transport.is_closing():
                w.registered = False
                self.count -= 1
                continue
            if frames[0] is None:
                body = event.body
                frames[0] = b"%x\r\n%b\r\n" % (len(body), body)
            if w.stream:
                transport.write(frames[0])
                kept.append(w)
                continue
            finished.append(transport)
            w.registered = False
            self.count -= 1
            done.append(w.on_done)
        if kept:
            waiting[:] = kept
        else:
            del self._watchers[path]
