# cython: language_level=3
"""The etcd v2 state machine (etcd 3.4's v2store): tree, TTL heap, event history, JSON.

Paths are internal: user keys live under ``/1`` and cluster data under ``/0``; all share one
index and one history. JSON output strips the ``/1`` namespace from keys and error causes.
Nothing here reads a clock: every operation is given ``now_ns`` (Unix nanoseconds) and
expirations are absolute Unix nanoseconds (0 = permanent).
"""

cimport cython
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from cpython.mem cimport PyMem_Free, PyMem_Malloc, PyMem_Realloc
from cpython.unicode cimport PyUnicode_AsUTF8AndSize, PyUnicode_DecodeUTF8
from libc.stdint cimport int64_t, uint64_t
from libc.string cimport memcmp, memcpy

import gc
from contextlib import contextmanager

import msgpack

cdef extern from "Python.h":
    bint PyUnicode_IS_ASCII(object o)
    int PyUnicode_KIND(object o)
    void* PyUnicode_DATA(object o)
    Py_UCS4 PyUnicode_READ(int kind, void* data, Py_ssize_t index)


# ---------------------------------------------------------------------------------------------
# Requests (the log entry payload) and constants

DEF _OP_SET = 1
OP_SET = _OP_SET
OP_CREATE = 2
OP_UNIQUE = 3
OP_UPDATE = 4
OP_CAS = 5
OP_DELETE = 6
OP_CAD = 7
OP_QGET = 8

DEF NS = 1000000000
# etcd treats expirations before 2000-01-01T00:00:00Z as "permanent" when creating nodes.
DEF MIN_EXPIRE_NS = 946684800 * 1000000000

cdef frozenset _READ_ONLY = frozenset(("/", "/0", "/1"))
cdef str AUTH_ENABLED_PATH = "/2/enabled"

_packer = msgpack.Packer(unicode_errors="surrogatepass")


def encode_request(int op, str path, str value="", bint dir=False, int64_t expire_ns=0,
                   object prev_value=None, uint64_t prev_index=0, bint refresh=False,
                   bint recursive=False, bint sorted=False):
    """Pack one store request as a compact msgpack array (the log entry's data)."""
    return _packer.pack((op, path, value, dir, expire_ns, prev_value, prev_index, refresh,
                         recursive, sorted))


# A plain set, ``encode_request(OP_SET, path, value)``, is the msgpack array
# 0x9a, OP_SET, <str path>, <str value>, then the defaults of the other seven fields.
cdef const char *_SET_TAIL = b"\xc2\x00\xc0\x00\xc2\xc2\xc2"
cdef Py_ssize_t _SET_TAIL_SIZE = 7


cdef inline unsigned char *_put_str(unsigned char *p, const char *s, Py_ssize_t n) noexcept:
    """Write a msgpack str (the shortest header, as the packer writes it); past its end."""
    cdef int i, width
    if n < 32:
        p[0] = 0xa0 | n
        p += 1
    else:
        if n < 256:
            p[0], width = 0xd9, 1
        elif n < 65536:
            p[0], width = 0xda, 2
        else:
            p[0], width = 0xdb, 4
        for i in range(width):
            p[width - i] = (n >> (8 * i)) & 0xFF
        p += 1 + width
    memcpy(p, s, n)
    return p + n


cdef inline Py_ssize_t _str_at(const unsigned char *p, Py_ssize_t n, Py_ssize_t at, Py_ssize_t *size) noexcept:
    """Where the msgpack str at ``at`` starts its bytes (their count in ``size``), else -1."""
    cdef Py_ssize_t width, i, length = 0
    if at >= n:
        return -1
    if p[at] & 0xe0 == 0xa0:
        size[0] = p[at] & 0x1f
        at += 1
    else:
        if p[at] == 0xd9:
            width = 1
        elif p[at] == 0xda:
            width = 2
        elif p[at] == 0xdb:
            width = 4
        else:
            return -1
        if at + width >= n:
            return -1
        for i in range(width):
            length = (length << 8) | p[at + 1 + i]
        size[0] = length
        at += 1 + width
    return at if at + size[0] <= n else -1


def encode_set(str path, str value):
    """``encode_request(OP_SET, path, value)``, the same bytes, written without the packer."""
    cdef Py_ssize_t path_size, value_size
    cdef const char *path_utf8
    cdef const char *value_utf8
    try:
        path_utf8 = PyUnicode_AsUTF8AndSize(path, &path_size)
        value_utf8 = PyUnicode_AsUTF8AndSize(value, &value_size)
    except UnicodeEncodeError:  # a lone surrogate: the packer writes it ("surrogatepass")
        return encode_request(OP_SET, path, value)
    cdef bytes out = PyBytes_FromStringAndSize(NULL, 2 + 5 + path_size + 5 + value_size + _SET_TAIL_SIZE)
    cdef unsigned char *start = <unsigned char *> PyBytes_AS_STRING(out)
    cdef unsigned char *p = start
    p[0], p[1] = 0x9a, _OP_SET
    p = _put_str(p + 2, path_utf8, path_size)
    p = _put_str(p, value_utf8, value_size)
    memcpy(p, _SET_TAIL, _SET_TAIL_SIZE)
    return out[:p + _SET_TAIL_SIZE - start]


# ---------------------------------------------------------------------------------------------
# Errors

cdef dict _MESSAGES = {
    100: "Key not found",
    101: "Compare failed",
    102: "Not a file",
    103: "Reached the max number of peers in the cluster",
    104: "Not a directory",
    105: "Key already exists",
    106: "The prefix of given key is a keyword in etcd",
    107: "Root is read only",
    108: "Directory not empty",
    109: "Peer address has existed",
    110: "The request requires user authentication",
    200: "Value is Required in POST form",
    201: "PrevValue is Required in POST form",
    202: "The given TTL in POST form is not a number",
    203: "The given index in POST form is not a number",
    204: "Value or TTL is required in POST form",
    205: "The given timeout in POST form is not a number",
    206: "Name is required in POST form",
    207: "Index or value is required",
    208: "Index and value cannot both be specified",
    209: "Invalid field",
    210: "Invalid POST form",
    211: "Value provided on refresh",
    212: "A TTL must be provided on refresh",
    300: "Raft Internal Error",
    301: "During Leader Election",
    400: "watcher is cleared due to etcd recovery",
    401: "The event in requested index is outdated and cleared",
    402: "Standby Internal Error",
    403: "Invalid active size",
    404: "Standby remove delay",
    500: "Client Internal Error",
}

cdef dict _STATUS = {100: 404, 101: 412, 105: 412, 102: 403, 108: 403, 110: 401, 300: 500, 301: 500}


class V2Error(Exception):
    """An etcd v2 error: ``code`` (errorCode), ``cause``, ``index`` (X-Etcd-Index), ``message``."""

    def __init__(self, code, cause="", index=0):
        super().__init__(code, cause, index)
        self.code = code
        self.cause = cause
        self.index = index
        self.message = _MESSAGES.get(code, "")

    @property
    def status(self):
        """The HTTP status etcd answers this error with."""
        return _STATUS.get(self.code, 400)

    @property
    def body(self):
        """``{"errorCode":N,"message":M,"cause":C,"index":I}`` + newline (cause omitted when empty)."""
        cdef _Buf b = _Buf()
        b.put(b'{"errorCode":', 13)
        b.put_i64(self.code)
        b.put(b',"message":', 11)
        b.put_jstr(self.message, 0)
        if self.cause:
            b.put(b',"cause":', 9)
            b.put_jstr(self.cause, 0)
        b.put(b',"index":', 9)
        b.put_u64(self.index)
        b.put(b'}\n', 2)
        return b.take()

    def __str__(self):
        return f"{self.code}: {self.message} ({self.cause}) [{self.index}]"


cdef inline str _cause(str path):
    """An internal path as etcd's HTTP layer shows it in an error cause (``/1`` stripped)."""
    if path == "/1":
        return ""
    if path.startswith("/1/"):
        return path[2:]
    return path


cdef inline str _join(str parent, str name):
    return "/" + name if parent == "/" else parent + "/" + name


cdef str _clean(str path):
    """``path.Clean(path.Join("/", path))``: one leading slash, no empty, ``.`` or ``..`` parts."""
    cdef Py_ssize_t n = len(path)
    if (n and path[0] == "/" and (n == 1 or path[n - 1] != "/")
            and "//" not in path and "/." not in path):
        return path
    cdef list parts = []
    for part in path.split("/"):
        if not part or part == ".":
            continue
        if part == "..":
            if parts:
                parts.pop()
            continue
        parts.append(part)
    return "/" + "/".join(parts)


@cython.cdivision(True)
cdef inline int64_t _ttl(int64_t expire_ns, int64_t now_ns):
    """ceil((expire - now) / 1 s) as etcd computes it (Go division truncates toward zero)."""
    cdef int64_t d = expire_ns - now_ns
    cdef int64_t q = d / NS
    if d % NS > 0:
        q += 1
    return q


# ---------------------------------------------------------------------------------------------
# JSON encoding (Go encoding/json, Go 1.19 escaping rules)

cdef unsigned char _ESC[128]
cdef char _SHORT[128]
cdef const char* _HEX = b"0123456789abcdef"


cdef void _init_escapes():
    cdef int c
    for c in range(128):
        _ESC[c] = 0
        _SHORT[c] = 0
        if c < 0x20 or c == 60 or c == 62 or c == 38:  # control, < > &
            _ESC[c] = 2
    for c, s in ((34, 34), (92, 92), (10, 110), (13, 114), (9, 116)):  # " \ \n \r \t
        _ESC[c] = 1
        _SHORT[c] = s


_init_escapes()


@cython.final
cdef class _Buf:

    def __cinit__(self):
        self.cap = 512
        self.length = 0
        self.data = <char*>PyMem_Malloc(self.cap)
        if self.data == NULL:
            raise MemoryError()

    def __dealloc__(self):
        PyMem_Free(self.data)

    cdef int reserve(self, Py_ssize_t extra) except -1:
        cdef Py_ssize_t need = self.length + extra
        cdef Py_ssize_t cap = self.cap
        cdef char* data
        if need <= cap:
            return 0
        while cap < need:
            cap *= 2
        data = <char*>PyMem_Realloc(self.data, cap)
        if data == NULL:
            raise MemoryError()
        self.data = data
        self.cap = cap
        return 0

    cdef int put(self, const char* s, Py_ssize_t n) except -1:
        self.reserve(n)
        memcpy(self.data + self.length, s, n)
        self.length += n
        return 0

    cdef int put_bytes(self, bytes b) except -1:
        return self.put(b, len(b))

    cdef int put_u64(self, uint64_t v) except -1:
        cdef char tmp[24]
        cdef int i = 24
        while True:
            i -= 1
            tmp[i] = <char>(48 + v % 10)
            v //= 10
            if v == 0:
                break
        return self.put(tmp + i, 24 - i)

    cdef int put_i64(self, int64_t v) except -1:
        if v < 0:
            self.put(b"-", 1)
            return self.put_u64(<uint64_t>(-(v + 1)) + 1)
        return self.put_u64(<uint64_t>v)

    cdef int put_jstr(self, str s, Py_ssize_t start) except -1:
        """A JSON string literal of ``s[start:]``, escaped as Go's encoding/json does."""
        cdef Py_ssize_t n = len(s)
        cdef Py_ssize_t i
        cdef unsigned int c
        cdef unsigned char e
        cdef int kind
        cdef void* data
        cdef const unsigned char* ascii
        cdef char* p
        self.reserve((n - start) * 6 + 2)
        p = self.data + self.length
        p[0] = 34
        p += 1
        if PyUnicode_IS_ASCII(s):
            ascii = <const unsigned char*>PyUnicode_DATA(s)
            for i in range(start, n):
                c = ascii[i]
                e = _ESC[c]
                if e == 0:
                    p[0] = <char>c
                    p += 1
                elif e == 1:
                    p[0] = 92
                    p[1] = _SHORT[c]
                    p += 2
                else:
                    memcpy(p, b"\\u00", 4)
                    p[4] = _HEX[c >> 4]
                    p[5] = _HEX[c & 15]
                    p += 6
        else:
            kind = PyUnicode_KIND(s)
            data = PyUnicode_DATA(s)
            for i in range(start, n):
                c = PyUnicode_READ(kind, data, i)
                if c < 128:
                    e = _ESC[c]
                    if e == 0:
                        p[0] = <char>c
                        p += 1
                    elif e == 1:
                        p[0] = 92
                        p[1] = _SHORT[c]
                        p += 2
                    else:
                        memcpy(p, b"\\u00", 4)
                        p[4] = _HEX[c >> 4]
                        p[5] = _HEX[c & 15]
                        p += 6
                elif c < 0x800:
                    p[0] = <char>(0xC0 | (c >> 6))
                    p[1] = <char>(0x80 | (c & 0x3F))
                    p += 2
                elif c == 0x2028 or c == 0x2029:
                    memcpy(p, b"\\u202", 5)
                    p[5] = 56 if c == 0x2028 else 57  # '8' / '9'
                    p += 6
                elif 0xD800 <= c <= 0xDFFF:  # a lone surrogate: an invalid byte in the request
                    memcpy(p, b"\\ufffd", 6)
                    p += 6
                elif c < 0x10000:
                    p[0] = <char>(0xE0 | (c >> 12))
                    p[1] = <char>(0x80 | ((c >> 6) & 0x3F))
                    p[2] = <char>(0x80 | (c & 0x3F))
                    p += 3
                else:
                    p[0] = <char>(0xF0 | (c >> 18))
                    p[1] = <char>(0x80 | ((c >> 12) & 0x3F))
                    p[2] = <char>(0x80 | ((c >> 6) & 0x3F))
                    p[3] = <char>(0x80 | (c & 0x3F))
                    p += 4
        p[0] = 34
        p += 1
        self.length = p - self.data
        return 0

    @cython.cdivision(True)
    cdef int put_time(self, int64_t unix_ns) except -1:
        """RFC3339Nano in UTC: ``2026-11-27T11:48:12.806676802Z`` (fraction trimmed, or absent)."""
        cdef int64_t secs = unix_ns // NS
        cdef int64_t nanos = unix_ns - secs * NS
        cdef int64_t days = secs // 86400
        cdef int64_t sod = secs - days * 86400
        cdef int64_t z, era, doe, yoe, y, doy, mp, d, m
        cdef char tmp[32]
        cdef int i, end
        if sod < 0:
            sod += 86400
            days -= 1
        if nanos < 0:
            nanos += NS
        # days since 1970-01-01 -> proleptic Gregorian civil date
        z = days + 719468
        era = (z if z >= 0 else z - 146096) // 146097
        doe = z - era * 146097
        yoe = (doe - doe // 1460 + doe // 36524 - doe // 146096) // 365
        y = yoe + era * 400
        doy = doe - (365 * yoe + yoe // 4 - yoe // 100)
        mp = (5 * doy + 2) // 153
        d = doy - (153 * mp + 2) // 5 + 1
        m = mp + 3 if mp < 10 else mp - 9
        if m <= 2:
            y += 1
        _digits(tmp, y, 4)
        tmp[4] = 45
        _digits(tmp + 5, m, 2)
        tmp[7] = 45
        _digits(tmp + 8, d, 2)
        tmp[10] = 84
        _digits(tmp + 11, sod // 3600, 2)
        tmp[13] = 58
        _digits(tmp + 14, (sod // 60) % 60, 2)
        tmp[16] = 58
        _digits(tmp + 17, sod % 60, 2)
        end = 19
        if nanos:
            tmp[19] = 46
            _digits(tmp + 20, nanos, 9)
            end = 29
            while tmp[end - 1] == 48:
                end -= 1
        tmp[end] = 90
        return self.put(tmp, end + 1)

    cdef bytes take(self):
        cdef bytes out = PyBytes_FromStringAndSize(self.data, self.length)
        self.length = 0
        return out


@cython.cdivision(True)
cdef inline void _digits(char* out, int64_t v, int width):
    cdef int i
    for i in range(width - 1, -1, -1):
        out[i] = <char>(48 + v % 10)
        v //= 10


cdef dict _HEADS = {
    action: ('{"action":"%s","node":' % action).encode()
    for action in ("get", "set", "create", "update", "compareAndSwap", "delete",
                   "compareAndDelete", "expire")
}


# ---------------------------------------------------------------------------------------------
# Tree nodes and events

@cython.final
cdef class Node:
    """A node of the tree. Read-only from Python (for introspection and tests)."""

    def __repr__(self):
        return f"<Node {self.path} dir={self.children is not None} mi={self.modified_index}>"


cdef Node _new_node(Node parent, str name, str value, bint is_dir, uint64_t index, int64_t expire_ns):
    cdef Node n = Node.__new__(Node)
    n.path = "/" if parent is None else _join(parent.path, name)
    n.name = name
    n.value = None if is_dir else value
    n.children = {} if is_dir else None
    n.parent = parent
    n.created_index = index
    n.modified_index = index
    n.expire_ns = expire_ns
    n.heap_pos = -1
    return n


cdef _Buf _ANSWER = _Buf()  # Event.response's buffer (the GIL keeps its users apart)


cdef bytes _answer(_Buf out, bytes head, uint64_t etcd_index, uint64_t raft_index, uint64_t raft_term,
                   bytes date, const char *body, Py_ssize_t body_size):
    """``head``, the ``X-Etcd-Index``, ``X-Raft-Index``, ``X-Raft-Term``, ``Date`` and
    ``Content-Length`` headers, a blank line and ``body``, assembled in ``out``."""
    out.length = 0
    out.put_bytes(head)
    out.put(b"X-Etcd-Index: ", 14)
    out.put_u64(etcd_index)
    out.put(b"\r\nX-Raft-Index: ", 16)
    out.put_u64(raft_index)
    out.put(b"\r\nX-Raft-Term: ", 15)
    out.put_u64(raft_term)
    out.put(b"\r\nDate: ", 8)
    out.put_bytes(date)
    out.put(b"\r\nContent-Length: ", 18)
    out.put_u64(body_size)
    out.put(b"\r\n\r\n", 4)
    out.put(body, body_size)
    return out.take()


@cython.final
cdef class Event:
    """One store event; ``body`` is the complete response JSON plus newline, encoded once."""

    def __init__(self, str action, str key, uint64_t index, uint64_t etcd_index=0, bint is_dir=False,
                 bint refresh=False, bint created=False, tuple removed=(), bytes body=b"",
                 object value=None):
        self.action = action
        self.key = key
        self.index = index
        self.etcd_index = etcd_index
        self.is_dir = is_dir
        self.refresh = refresh
        self.created = created
        self.removed = removed
        self.body = body
        self.value = value

    def __repr__(self):
        return f"<Event {self.action} {self.key} index={self.index}>"

    def response(self, bytes head, uint64_t raft_index, uint64_t raft_term, bytes date):
        """The complete HTTP answer to the request that made this event, as ``Store.get_response``
        builds one: ``head``, ``X-Etcd-Index`` (``etcd_index``), ``X-Raft-Index``,
        ``X-Raft-Term``, ``Date``, ``Content-Length`` and ``body``."""
        return _answer(_ANSWER, head, self.etcd_index, raft_index, raft_term, date,
                       PyBytes_AS_STRING(self.body), PyBytes_GET_SIZE(self.body))

    cdef list _state(self):
        return [self.action, self.key, self.index, self.etcd_index, self.is_dir, self.refresh,
                self.created, list(self.removed), self.body, self.value]



cdef Event _event_from_state(list s):
    return Event(s[0], s[1], s[2], s[3], s[4], s[5], s[6], tuple(s[7]), s[8], s[9])


# ---------------------------------------------------------------------------------------------
# Event history: the last `capacity` events in a ring

@cython.final
cdef class EventHistory:
    """The window of the last ``capacity`` events that watches with ``waitIndex`` scan."""

    def __init__(self, Py_ssize_t capacity=1000):
        if capacity <= 0:
            raise ValueError("capacity must be positive")
        self.capacity = capacity
        self._ring = [None] * capacity
        self._front = 0
        self._size = 0
        self.start_index = 0
        self.last_index = 0

    def __len__(self):
        return self._size

    cpdef add(self, Event event):
        """Append an event (indices are contiguous); the oldest falls out of a full window."""
        cdef Py_ssize_t back = (self._front + self._size) % self.capacity
        self._ring[back] = event
        if self._size == self.capacity:
            self._front = (self._front + 1) % self.capacity
        else:
            self._size += 1
        self.last_index = event.index
        self.start_index = (<Event>self._ring[self._front]).index

    cpdef Event scan(self, str key, bint recursive, uint64_t since_index):
        """The first non-refresh event with index >= ``since_index`` that matches ``key``.

        Matches: same key; with ``recursive`` any key below ``key``; and a delete/expire of a
        directory whose key is a plain string prefix of ``key``. Hidden keys are not filtered.
        Returns None when nothing in the window matches; raises V2Error 401 (index = the
        newest event's index) when ``since_index`` is older than the window.
        """
        cdef Py_ssize_t j
        cdef Event e
        cdef str prefix
        if since_index < self.start_index:
            raise V2Error(401, "the requested history has been cleared [%d/%d]"
                          % (self.start_index, since_index), self.last_index)
        if since_index > self.last_index or self._size == 0:
            return None
        prefix = key if key.endswith("/") else key + "/"
        for j in range(<Py_ssize_t>(since_index - self.start_index), self._size):
            e = <Event>self._ring[(self._front + j) % self.capacity]
            if e.refresh:
                continue
            if e.key == key or (recursive and e.key.startswith(prefix)):
                return e
            if e.is_dir and (e.action == "delete" or e.action == "expire") and key.startswith(e.key):
                return e
        return None

    cdef list _events(self):
        cdef Py_ssize_t j
        return [self._ring[(self._front + j) % self.capacity] for j in range(self._size)]

    def events(self):
        """The events in the window, oldest first."""
        return self._events()


# ---------------------------------------------------------------------------------------------
# The store

DEF GETS_SUCCESS = 0
DEF GETS_FAIL = 1
DEF SETS_SUCCESS = 2
DEF SETS_FAIL = 3
DEF DELETE_SUCCESS = 4
DEF DELETE_FAIL = 5
DEF UPDATE_SUCCESS = 6
DEF UPDATE_FAIL = 7
DEF CREATE_SUCCESS = 8
DEF CREATE_FAIL = 9
DEF CAS_SUCCESS = 10
DEF CAS_FAIL = 11
DEF CAD_SUCCESS = 12
DEF CAD_FAIL = 13
DEF EXPIRE_COUNT = 14

cdef tuple _STAT_NAMES = (
    "getsSuccess", "getsFail", "setsSuccess", "setsFail", "deleteSuccess", "deleteFail",
    "updateSuccess", "updateFail", "createSuccess", "createFail", "compareAndSwapSuccess",
    "compareAndSwapFail", "compareAndDeleteSuccess", "compareAndDeleteFail", "expireCount",
)


@contextmanager
def _collector_paused():
    """The cyclic garbage collector off while a big store is built or serialised, back as it was
    after: every object made meanwhile stays alive, and the collections their allocation would
    trigger, each scanning the growing heap, cost more than the work itself (1,000,000 keys:
    restore 3.8 s against 2.3 s, snapshot 0.60 s against 0.48 s)."""
    collecting = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if collecting:
            gc.enable()


@cython.final
cdef class Store:
    """The v2 tree with ``/0`` and ``/1`` created at index 0; see the module docstring."""

    def __init__(self, Py_ssize_t history_capacity=1000):
        cdef int i
        self._root = _new_node(None, "", None, True, 0, 0)
        self._nodes = {"/": self._root}
        self._heap = []
        self.index = 0
        self.history = EventHistory(history_capacity)
        for i in range(15):
            self._stats[i] = 0
        self._buf = _Buf()
        self._out = _Buf()
        for ns in ("0", "1"):
            self._attach(self._root, ns, None, True, 0, 0)

    # --- tree ------------------------------------------------------------------------------

    cdef Node _lookup(self, str path):
        cdef Node n = self._nodes.get(path)
        if n is not None:
            return n
        return self._walk_error(path)

    cdef Node _walk_error(self, str path):
        """Walk ``path`` component by component; raise 104 at a file, 100 at the first gap."""
        cdef Node cur = self._root
        cdef Node child
        for name in path.split("/"):
            if not name:
                continue
            if cur.children is None:
                raise V2Error(104, _cause(cur.path), self.index)
            child = cur.children.get(name)
            if child is None:
                raise V2Error(100, _cause(_join(cur.path, name)), self.index)
            cur = child
        return cur

    cdef Node _prepare_parent(self, str path, list missing):
        """The deepest existing directory on ``path``; names still to create go to ``missing``.

        Raises 104 (cause: the file) when a component is a file.
        """
        cdef Node cur = self._root
        cdef Node child
        for name in path.split("/"):
            if not name:
                continue
            if missing:
                missing.append(name)
                continue
            child = cur.children.get(name)
            if child is None:
                missing.append(name)
            elif child.children is None:
                raise V2Error(104, _cause(child.path), self.index)
            else:
                cur = child
        return cur

    cdef Node _make_dirs(self, Node parent, list missing, uint64_t index):
        for name in missing:
            parent = self._attach(parent, name, None, True, index, 0)
        return parent

    cdef Node _attach(self, Node parent, str name, str value, bint is_dir, uint64_t index,
                      int64_t expire_ns):
        cdef Node n = _new_node(parent, name, value, is_dir, index, 0)
        parent.children[name] = n
        self._nodes[n.path] = n
        self._set_expiry(n, expire_ns)
        return n

    cdef void _detach(self, Node n, list removed):
        """Unlink ``n`` and its subtree (children first); their paths go to ``removed``."""
        cdef Node child
        if n.children:
            for child in list(n.children.values()):
                self._detach(child, removed)
        if n.parent is not None and n.parent.children.get(n.name) is n:
            del n.parent.children[n.name]
        self._nodes.pop(n.path, None)
        if n.heap_pos >= 0:
            self._heap_remove(n)
        if removed is not None:
            removed.append(n.path)

    cdef void _set_expiry(self, Node n, int64_t expire_ns):
        """etcd's UpdateTTL: 0 makes the node permanent, anything else (re)schedules it."""
        if n.heap_pos >= 0:
            if expire_ns == 0:
                self._heap_remove(n)
                n.expire_ns = 0
            else:
                n.expire_ns = expire_ns
                self._heap_fix(n)
        elif expire_ns != 0:
            n.expire_ns = expire_ns
            self._heap_push(n)

    # --- TTL heap -----------------------------------------------------------------------------

    cdef bint _heap_less(self, Node a, Node b):
        if a.expire_ns != b.expire_ns:
            return a.expire_ns < b.expire_ns
        return a.path < b.path

    cdef void _heap_swap(self, Py_ssize_t i, Py_ssize_t j):
        cdef Node a = <Node>self._heap[i]
        cdef Node b = <Node>self._heap[j]
        self._heap[i] = b
        self._heap[j] = a
        b.heap_pos = i
        a.heap_pos = j

    cdef void _heap_up(self, Py_ssize_t i):
        cdef Py_ssize_t parent
        while i > 0:
            parent = (i - 1) // 2
            if not self._heap_less(<Node>self._heap[i], <Node>self._heap[parent]):
                break
            self._heap_swap(i, parent)
            i = parent

    cdef void _heap_down(self, Py_ssize_t i):
        cdef Py_ssize_t n = len(self._heap)
        cdef Py_ssize_t left, right, best
        while True:
            left = 2 * i + 1
            if left >= n:
                break
            best = left
            right = left + 1
            if right < n and self._heap_less(<Node>self._heap[right], <Node>self._heap[left]):
                best = right
            if not self._heap_less(<Node>self._heap[best], <Node>self._heap[i]):
                break
            self._heap_swap(i, best)
            i = best

    cdef void _heap_push(self, Node n):
        n.heap_pos = len(self._heap)
        self._heap.append(n)
        self._heap_up(n.heap_pos)

    cdef void _heap_remove(self, Node n):
        cdef Py_ssize_t i = n.heap_pos
        cdef Py_ssize_t last = len(self._heap) - 1
        if i < 0:
            return
        if i != last:
            self._heap_swap(i, last)
        self._heap.pop()
        n.heap_pos = -1
        if i != last:
            self._heap_fix(<Node>self._heap[i])

    cdef void _heap_fix(self, Node n):
        self._heap_up(n.heap_pos)
        self._heap_down(n.heap_pos)

    # --- encoding ---------------------------------------------------------------------------

    cdef int _w_fields(self, str path, str value, bint is_dir, int64_t expire_ns, int64_t now_ns,
                       uint64_t modified, uint64_t created, Node listing, bint recursive,
                       bint by_key) except -1:
        """One node object in Go's field order, ``omitempty`` honoured.

        ``listing`` (a directory) adds its visible children as ``nodes``, each expanded
        further only when ``recursive``.
        """
        cdef _Buf b = self._buf
        cdef bint comma = False
        cdef bint opened = False
        cdef Node child
        cdef int64_t ttl
        b.put(b"{", 1)
        if path != "/1":
            b.put(b'"key":', 6)
            b.put_jstr(path, 2 if path.startswith("/1/") else 0)
            comma = True
        if value is not None:
            if comma:
                b.put(b',"value":', 9)
            else:
                b.put(b'"value":', 8)
            b.put_jstr(value, 0)
            comma = True
        if is_dir:
            if comma:
                b.put(b',"dir":true', 11)
            else:
                b.put(b'"dir":true', 10)
            comma = True
        if expire_ns != 0:
            if comma:
                b.put(b',"expiration":"', 15)
            else:
                b.put(b'"expiration":"', 14)
            b.put_time(expire_ns)
            b.put(b'"', 1)
            comma = True
            ttl = _ttl(expire_ns, now_ns)
            if ttl != 0:
                b.put(b',"ttl":', 7)
                b.put_i64(ttl)
        if listing is not None and listing.children:
            children = listing.children
            for name in (sorted(children) if by_key else children):
                if (<str>name).startswith("_"):
                    continue
                child = <Node>children[name]
                if opened:
                    b.put(b",", 1)
                elif comma:
                    b.put(b',"nodes":[', 10)
                else:
                    b.put(b'"nodes":[', 9)
                opened = True
                comma = True
                self._w_tree(child, recursive, recursive, by_key, now_ns)
            if opened:
                b.put(b"]", 1)
        if modified != 0:
            if comma:
                b.put(b',"modifiedIndex":', 17)
            else:
                b.put(b'"modifiedIndex":', 16)
            b.put_u64(modified)
            comma = True
        if created != 0:
            if comma:
                b.put(b',"createdIndex":', 16)
            else:
                b.put(b'"createdIndex":', 15)
            b.put_u64(created)
        b.put(b"}", 1)
        return 0

    cdef int _w_tree(self, Node n, bint listing, bint recursive, bint by_key, int64_t now_ns) except -1:
        """A node as stored (etcd's Repr); directories list children when ``listing``."""
        return self._w_fields(n.path, n.value, n.children is not None, n.expire_ns, now_ns,
                              n.modified_index, n.created_index,
                              n if listing and n.children is not None else None, recursive, by_key)

    cdef int _w_head(self, str action) except -1:
        self._buf.length = 0
        return self._buf.put_bytes(<bytes>_HEADS[action])

    cdef Event _finish(self, str action, str key, uint64_t index, bint is_dir, bint refresh,
                       bint created, tuple removed, object value):
        """Close the body in the buffer and wrap it in an Event (etcd_index = store index)."""
        self._buf.put(b"}\n", 2)
        cdef Event e = Event.__new__(Event)
        e.action = action
        e.key = key
        e.index = index
        e.etcd_index = self.index
        e.is_dir = is_dir
        e.refresh = refresh
        e.created = created
        e.removed = removed
        e.body = self._buf.take()
        e.value = value
        return e

    cdef Event _record(self, Event e):
        self.history.add(e)
        return e

    # --- reads ------------------------------------------------------------------------------

    cdef Node _read(self, str path, bint recursive, bint sorted, int64_t now_ns):
        """Look up a clean ``path`` (counted as a get) and write its ``get`` body, still open,
        into the buffer."""
        cdef Node n
        try:
            n = self._lookup(path)
        except V2Error:
            self._stats[GETS_FAIL] += 1
            raise
        self._stats[GETS_SUCCESS] += 1
        self._w_head("get")
        self._w_tree(n, True, recursive, sorted, now_ns)
        return n

    cpdef Event get(self, str path, bint recursive, bint sorted, int64_t now_ns):
        """Read a node (action ``get``); directories list their visible children."""
        path = _clean(path)
        cdef Node n = self._read(path, recursive, sorted, now_ns)
        return self._finish("get", path, n.modified_index, n.children is not None, False, False,
                            (), n.value)

    def get_response(self, str path, bint recursive, bint sorted, int64_t now_ns, bytes head,
                     uint64_t raft_index, uint64_t raft_term, bytes date):
        """``get(path, recursive, sorted, now_ns)`` as a complete HTTP response: ``head`` (status line
        and the fixed headers, each ending in CRLF), ``X-Etcd-Index`` (the store index),
        ``X-Raft-Index``, ``X-Raft-Term``, ``Date: <date>``, ``Content-Length``, a blank line and
        the event's body. Counted and failing (V2Error) exactly as ``get``."""
        self._read(_clean(path), recursive, sorted, now_ns)
        cdef _Buf body = self._buf
        body.put(b"}\n", 2)
        answer = _answer(self._out, head, self.index, raft_index, raft_term, date, body.data, body.length)
        body.length = 0
        return answer

    # --- writes -----------------------------------------------------------------------------

    cdef Event _create(self, str path, bint is_dir, str value, bint unique, bint replace,
                       int64_t expire_ns, str action, int64_t now_ns):
        cdef uint64_t nxt = self.index + 1
        cdef list missing = []
        cdef Node parent, prev = None
        cdef Py_ssize_t cut
        if unique:
            path = _join(path, "%020d" % nxt)
        if path in _READ_ONLY:
            raise V2Error(107, "/", self.index)
        if expire_ns != 0 and expire_ns < MIN_EXPIRE_NS:
            expire_ns = 0
        cut = path.rfind("/")
        name = path[cut + 1:]
        try:
            parent = self._prepare_parent(path[:cut], missing)
        except V2Error:
            self._stats[SETS_FAIL] += 1  # etcd counts a failed walk as a failed set too
            raise
        if not missing:
            prev = parent.children.get(name)
            if prev is not None:
                if not replace:
                    raise V2Error(105, _cause(path), self.index)
                if prev.children is not None:
                    raise V2Error(102, _cause(path), self.index)
        self._w_head(action)
        self._w_fields(path, None if is_dir else value, is_dir, expire_ns, now_ns, nxt, nxt,
                       None, False, False)
        if prev is not None:
            self._buf.put(b',"prevNode":', 12)
            self._w_tree(prev, False, False, False, now_ns)
            self._detach(prev, None)
        parent = self._make_dirs(parent, missing, nxt)
        self._attach(parent, name, value, is_dir, nxt, expire_ns)
        self.index = nxt
        return self._finish(action, path, nxt, is_dir, False, action == "create" or prev is None,
                            (), None if is_dir else value)

    cdef Event _update(self, str path, str value, int64_t expire_ns, bint refresh, int64_t now_ns):
        cdef Node n
        cdef uint64_t nxt = self.index + 1
        cdef bint is_dir
        if path in _READ_ONLY:
            raise V2Error(107, "/", self.index)
        n = self._lookup(path)
        is_dir = n.children is not None
        if is_dir and value:
            raise V2Error(102, _cause(path), self.index)
        if refresh:
            value = n.value if not is_dir else ""
        self._w_head("update")
        self._w_fields(path, None if is_dir else value, is_dir, expire_ns, now_ns, nxt,
                       n.created_index, None, False, False)
        self._buf.put(b',"prevNode":', 12)
        self._w_tree(n, False, False, False, now_ns)
        if not is_dir:  # etcd never writes a directory: its modifiedIndex stays (spec 7.13)
            n.value = value
            n.modified_index = nxt
        self._set_expiry(n, expire_ns)
        self.index = nxt
        return self._finish("update", path, nxt, is_dir, refresh, False, (),
                            None if is_dir else value)

    cdef Event _cas(self, str path, object prev_value, uint64_t prev_index, str value,
                    int64_t expire_ns, bint refresh, int64_t now_ns):
        cdef Node n
        cdef uint64_t nxt = self.index + 1
        if path in _READ_ONLY:
            raise V2Error(107, "/", self.index)
        n = self._lookup(path)
        if n.children is not None:
            raise V2Error(102, _cause(path), self.index)
        self._compare(n, prev_value, prev_index)
        if refresh:
            value = n.value
        self._w_head("compareAndSwap")
        self._w_fields(path, value, False, expire_ns, now_ns, nxt, n.created_index, None, False, False)
        self._buf.put(b',"prevNode":', 12)
        self._w_tree(n, False, False, False, now_ns)
        n.value = value
        n.modified_index = nxt
        self._set_expiry(n, expire_ns)
        self.index = nxt
        return self._finish("compareAndSwap", path, nxt, False, refresh, False, (), value)

    cdef int _compare(self, Node n, object prev_value, uint64_t prev_index) except -1:
        """etcd's node.Compare: raise 101 with ``[pv != v]``, ``[pi != mi]`` or both."""
        cdef bint value_ok = not prev_value or n.value == prev_value
        cdef bint index_ok = prev_index == 0 or n.modified_index == prev_index
        if value_ok and index_ok:
            return 0
        if index_ok:
            cause = "[%s != %s]" % (prev_value, n.value)
        elif value_ok:
            cause = "[%d != %d]" % (prev_index, n.modified_index)
        else:
            cause = "[%s != %s] [%d != %d]" % (prev_value, n.value, prev_index, n.modified_index)
        raise V2Error(101, cause, self.index)

    cdef Event _delete(self, str path, bint dir, bint recursive, int64_t now_ns):
        cdef Node n
        cdef uint64_t nxt = self.index + 1
        cdef bint is_dir
        if path in _READ_ONLY:
            raise V2Error(107, "/", self.index)
        if recursive:
            dir = True
        n = self._lookup(path)
        is_dir = n.children is not None
        if is_dir:
            if not dir:
                raise V2Error(102, _cause(path), self.index)
            if n.children and not recursive:
                raise V2Error(108, _cause(path), self.index)
        return self._remove("delete", n, nxt, now_ns)

    cdef Event _cad(self, str path, object prev_value, uint64_t prev_index, int64_t now_ns):
        cdef Node n = self._lookup(path)
        if n.children is not None:
            raise V2Error(102, _cause(path), self.index)
        self._compare(n, prev_value, prev_index)
        return self._remove("compareAndDelete", n, self.index + 1, now_ns)

    cdef Event _expire_one(self, Node n, int64_t now_ns):
        self._stats[EXPIRE_COUNT] += 1
        return self._remove("expire", n, self.index + 1, now_ns)

    cdef Event _remove(self, str action, Node n, uint64_t nxt, int64_t now_ns):
        """Unlink ``n`` with its subtree and make the delete-shaped event (no value)."""
        cdef list removed = []
        cdef bint is_dir = n.children is not None
        self._w_head(action)
        self._w_fields(n.path, None, is_dir, 0, now_ns, nxt, n.created_index, None, False, False)
        self._buf.put(b',"prevNode":', 12)
        self._w_tree(n, False, False, False, now_ns)
        self._detach(n, removed)
        self.index = nxt
        return self._finish(action, n.path, nxt, is_dir, False, False, tuple(removed), None)

    # --- public writes (stats + history) -------------------------------------------------------

    cpdef Event set(self, str path, bint dir, str value, int64_t expire_ns, bint refresh, int64_t now_ns):
        """Create or replace ``path`` (action ``set``); ``created`` when it was absent.

        With ``refresh`` the node must exist; its value is kept and only the TTL changes.
        """
        cdef Node n = None
        cdef Event e
        path = _clean(path)
        try:
            try:
                n = self._lookup(path)
            except V2Error as err:
                if err.code != 100 or refresh:
                    raise
            if refresh:
                value = n.value if n.value is not None else ""
            e = self._create(path, dir, value, False, True, expire_ns, "set", now_ns)
        except V2Error:
            self._stats[SETS_FAIL] += 1
            raise
        self._stats[SETS_SUCCESS] += 1
        e.refresh = refresh
        return self._record(e)

    cpdef Event create(self, str path, bint dir, str value, bint unique, int64_t expire_ns, int64_t now_ns):
        """Create ``path`` (105 if it exists); ``unique`` creates the child ``%020d`` of the new index."""
        cdef Event e
        try:
            e = self._create(_clean(path), dir, value, unique, False, expire_ns, "create", now_ns)
        except V2Error:
            self._stats[CREATE_FAIL] += 1
            raise
        self._stats[CREATE_SUCCESS] += 1
        return self._record(e)

    cpdef Event update(self, str path, str value, int64_t expire_ns, bint refresh, int64_t now_ns):
        """Change an existing node's value and TTL (a directory: TTL only)."""
        cdef Event e
        try:
            e = self._update(_clean(path), value, expire_ns, refresh, now_ns)
        except V2Error:
            self._stats[UPDATE_FAIL] += 1
            raise
        self._stats[UPDATE_SUCCESS] += 1
        return self._record(e)

    cpdef Event compare_and_swap(self, str path, object prev_value, uint64_t prev_index, str value,
                                 int64_t expire_ns, bint refresh, int64_t now_ns):
        """Swap a file's value if ``prev_value`` (None/"" = any) and ``prev_index`` (0 = any) match."""
        cdef Event e
        try:
            e = self._cas(_clean(path), prev_value, prev_index, value, expire_ns, refresh, now_ns)
        except V2Error:
            self._stats[CAS_FAIL] += 1
            raise
        self._stats[CAS_SUCCESS] += 1
        return self._record(e)

    cpdef Event delete(self, str path, bint dir, bint recursive, int64_t now_ns):
        """Delete a file, an empty directory (``dir``) or a subtree (``recursive``)."""
        cdef Event e
        try:
            e = self._delete(_clean(path), dir, recursive, now_ns)
        except V2Error:
            self._stats[DELETE_FAIL] += 1
            raise
        self._stats[DELETE_SUCCESS] += 1
        return self._record(e)

    cpdef Event compare_and_delete(self, str path, object prev_value, uint64_t prev_index, int64_t now_ns):
        """Delete a file if ``prev_value`` and ``prev_index`` match (directories: 102)."""
        cdef Event e
        try:
            e = self._cad(_clean(path), prev_value, prev_index, now_ns)
        except V2Error:
            self._stats[CAD_FAIL] += 1
            raise
        self._stats[CAD_SUCCESS] += 1
        return self._record(e)

    cpdef list delete_expired(self, int64_t now_ns):
        """Expire every node whose expiration is <= ``now_ns``, earliest first; one event each."""
        cdef list events = []
        cdef Node top
        while self._heap:
            top = <Node>self._heap[0]
            if top.expire_ns > now_ns:
                break
            events.append(self._record(self._expire_one(top, now_ns)))
        return events

    cpdef int64_t next_expiry_ns(self):
        """The earliest expiration in the tree, 0 when nothing expires."""
        if self._heap:
            return (<Node>self._heap[0]).expire_ns
        return 0

    cpdef Event apply(self, bytes request, int64_t now_ns):
        """Decode a request made by ``encode_request`` and run it (a plain set without the
        unpacker)."""
        cdef const unsigned char *p = <const unsigned char *> PyBytes_AS_STRING(request)
        cdef Py_ssize_t n = PyBytes_GET_SIZE(request), path_at, path_size, value_at, value_size
        if n > 2 and p[0] == 0x9a and p[1] == _OP_SET:
            path_at = _str_at(p, n, 2, &path_size)
            value_at = _str_at(p, n, path_at + path_size, &value_size) if path_at >= 0 else -1
            if (value_at >= 0 and n - value_at - value_size == _SET_TAIL_SIZE
                    and memcmp(p + value_at + value_size, _SET_TAIL, _SET_TAIL_SIZE) == 0):
                return self.set(PyUnicode_DecodeUTF8(<const char *> p + path_at, path_size, "surrogatepass"), False,
                                PyUnicode_DecodeUTF8(<const char *> p + value_at, value_size, "surrogatepass"), 0,
                                False, now_ns)
        cdef tuple r = tuple(msgpack.unpackb(request, unicode_errors="surrogatepass"))
        op, path, value, dir, expire_ns, prev_value, prev_index, refresh, recursive, sorted = r
        if op == OP_SET:
            return self.set(path, dir, value, expire_ns, refresh, now_ns)
        if op == OP_CREATE or op == OP_UNIQUE:
            return self.create(path, dir, value, op == OP_UNIQUE, expire_ns, now_ns)
        if op == OP_UPDATE:
            return self.update(path, value, expire_ns, refresh, now_ns)
        if op == OP_CAS:
            return self.compare_and_swap(path, prev_value, prev_index, value, expire_ns, refresh, now_ns)
        if op == OP_DELETE:
            return self.delete(path, dir, recursive, now_ns)
        if op == OP_CAD:
            return self.compare_and_delete(path, prev_value, prev_index, now_ns)
        if op == OP_QGET:
            return self.get(path, recursive, sorted, now_ns)
        raise ValueError(f"unknown store operation {op!r}")

    cpdef bint auth_enabled(self):
        """etcd's v2 auth detection: a plain read of ``/2/enabled``, counted like any get (a
        failed get while auth was never enabled); True when it holds ``true``."""
        cdef Node n = self._nodes.get(AUTH_ENABLED_PATH)
        if n is None:
            self._stats[GETS_FAIL] += 1
            return False
        self._stats[GETS_SUCCESS] += 1
        return n.value == "true"

    # --- introspection, stats, snapshots ------------------------------------------------------

    def node(self, str path):
        """The Node at an internal path, or None (for tests and tools)."""
        return self._nodes.get(_clean(path))

    def stats(self):
        """The store counters by etcd's JSON names (without ``watchers``)."""
        cdef int i
        return {_STAT_NAMES[i]: self._stats[i] for i in range(15)}

    def stats_body(self, uint64_t watchers):
        """``/v2/stats/store`` JSON in etcd's field order, no trailing newline."""
        cdef _Buf b = _Buf()
        cdef int i
        for i in range(15):
            b.put(b"{" if i == 0 else b",", 1)
            b.put_jstr(_STAT_NAMES[i], 0)
            b.put(b":", 1)
            b.put_u64(self._stats[i])
        b.put(b',"watchers":', 12)
        b.put_u64(watchers)
        b.put(b"}", 1)
        return b.take()

    def snapshot(self):
        """Tree (pre-order, children in insertion order), index, TTLs, history and stats as msgpack."""
        with _collector_paused():
            return self._snapshot()

    cdef bytes _snapshot(self):
        cdef list tree = []
        cdef list stack = [self._root]
        cdef Node n
        cdef int i
        while stack:
            n = <Node>stack.pop()
            if n is not self._root:
                tree.append((n.path, n.value, n.children is not None, n.created_index,
                             n.modified_index, n.expire_ns))
            if n.children:
                stack.extend(reversed(list(n.children.values())))
        return _packer.pack({
            "version": 1,
            "index": self.index,
            "tree": tree,
            "capacity": self.history.capacity,
            "history": [(<Event>e)._state() for e in self.history._events()],
            "stats": [self._stats[i] for i in range(15)],
        })

    @staticmethod
    def restore(bytes data):
        """The Store a ``snapshot()`` was taken of."""
        cdef dict state
        cdef Store s
        cdef Node n, parent
        cdef int i
        with _collector_paused():
            state = msgpack.unpackb(data, unicode_errors="surrogatepass")
            s = Store(state["capacity"])
            s._root.children.clear()
            s._nodes = {"/": s._root}
            for path, value, is_dir, created, modified, expire_ns in state["tree"]:
                cut = path.rfind("/")
                parent = <Node>s._nodes[path[:cut] or "/"]
                n = s._attach(parent, path[cut + 1:], value, is_dir, created, expire_ns)
                n.modified_index = modified
            s.index = state["index"]
            for ev in state["history"]:
                s.history.add(_event_from_state(ev))
            for i in range(15):
                s._stats[i] = state["stats"][i]
            return s
