# cython: language_level=3
"""Recognising the plain write in compiled code, before (and instead of) the HTTP parser.

``match_plain_put(data)`` returns ``(key, value)`` when ``data`` is exactly one whole request
that the general parser and ``dispatch`` would treat as a plain set, and ``None`` for anything
else (the general parser then takes it). The request must be, in this order:

* ``PUT /v2/keys`` followed by one or more segments ``/<name>``, each a non-empty run of
  ``[-A-Za-z0-9_.~]`` that does not start with ``.`` (no escapes, nothing Go's ServeMux would
  redirect, no trailing slash, no query), then `` HTTP/1.1`` and CRLF;
* one or more header lines ``Name: value`` (a name of ``[-A-Za-z]``, one space, a value of
  printable ASCII with no space at either end), then an empty line. The names, in any case, are
  ``Host``, ``Content-Type`` and ``Content-Length`` exactly once each and at most once each
  ``User-Agent``, ``Accept`` and ``Accept-Encoding``: nothing the answer depends on. The type is
  ``application/x-www-form-urlencoded`` and the length the body's, in its shortest form;
* the body ``value=<v>`` with ``v`` a run of ``[-A-Za-z0-9_.~]`` (nothing to unescape), ending
  the data.

``key`` is the path below ``/v2/keys`` (``/a/b``) and ``value`` is ``v``, both ``str``.

``PlainWrites`` is the plain write's lane from the bytes read to the bytes answered, with no
Python function in between: ``take(data, conn)`` recognises the request, counts it, does the
store's access check, encodes the set and proposes it with a ``PlainWrite`` waiter; once the
entry applies, the waiter builds the whole answer (the event's ``response`` with the node's
JSON head, raft index and term and the date) and hands it to ``conn.plain_written``. Answers and
the store change exactly as the general parser and ``dispatch`` would make them.
"""

cimport cython
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_GET_SIZE
from cpython.unicode cimport PyUnicode_DecodeASCII
from libc.string cimport memcmp
from libc.time cimport time, time_t

from fastkv._native.store cimport Event

import logging

from fastkv._native.store import V2Error, encode_set

log = logging.getLogger("fastkv.http")

cdef Py_ssize_t _MAX_BYTES = 4096  # longer data is never taken here (far below every limit of the parser)
MAX_BYTES = _MAX_BYTES

cdef enum Header:
    HOST = 1
    USER_AGENT = 2
    ACCEPT = 4
    ACCEPT_ENCODING = 8
    CONTENT_TYPE = 16
    CONTENT_LENGTH = 32

cdef int _REQUIRED = HOST | CONTENT_TYPE | CONTENT_LENGTH
cdef const char *_FORM = b"application/x-www-form-urlencoded"
cdef Py_ssize_t _FORM_SIZE = 33


cdef inline bint _name_char(unsigned char c) noexcept nogil:
    """``[-A-Za-z0-9_.~]``: a key segment or value character that needs no escaping."""
    return ((c >= c'a' and c <= c'z') or (c >= c'A' and c <= c'Z') or (c >= c'0' and c <= c'9')
            or c == c'-' or c == c'_' or c == c'.' or c == c'~')


cdef inline bint _header_name_char(unsigned char c) noexcept nogil:
    return (c >= c'a' and c <= c'z') or (c >= c'A' and c <= c'Z') or c == c'-'


cdef inline bint _is(const unsigned char *name, Py_ssize_t size, const char *lower) noexcept nogil:
    """Whether ``name`` (``size`` bytes of ``[-A-Za-z]``) is ``lower`` in any case."""
    cdef Py_ssize_t i = 0
    while i < size:
        if lower[i] == 0 or (name[i] | 0x20) != <unsigned char> lower[i]:
            return False
        i += 1
    return lower[size] == 0


cdef int _header(const unsigned char *name, Py_ssize_t size) noexcept nogil:
    """Which allowed header ``name`` is (``'-' | 0x20`` is ``'-'``), or 0."""
    if size == 4 and _is(name, size, b"host"):
        return HOST
    if size == 6 and _is(name, size, b"accept"):
        return ACCEPT
    if size == 10 and _is(name, size, b"user-agent"):
        return USER_AGENT
    if size == 12 and _is(name, size, b"content-type"):
        return CONTENT_TYPE
    if size == 14 and _is(name, size, b"content-length"):
        return CONTENT_LENGTH
    if size == 15 and _is(name, size, b"accept-encoding"):
        return ACCEPT_ENCODING
    return 0


cdef Py_ssize_t _shortest_decimal(const unsigned char *digits, Py_ssize_t size) noexcept nogil:
    """The number ``digits`` spells in its shortest form (no sign, no leading zero), else -1."""
    cdef Py_ssize_t value = 0, i
    if size == 0 or size > 15 or (digits[0] == c'0' and size > 1):
        return -1
    for i in range(size):
        if digits[i] < c'0' or digits[i] > c'9':
            return -1
        value = value * 10 + (digits[i] - c'0')
    return value


cdef bint _match(bytes data, Py_ssize_t *key_end_at, Py_ssize_t *body_start_at):
    """Whether ``data`` is a plain write (see the module doc); then the key ends at
    ``key_end_at`` and the body starts at ``body_start_at``."""
    cdef const unsigned char *p = <const unsigned char *> PyBytes_AS_STRING(data)
    cdef Py_ssize_t n = PyBytes_GET_SIZE(data)
    cdef Py_ssize_t i = 12, key_end, name_start, name_end, value_start, body_start
    cdef Py_ssize_t content_length = -1
    cdef int seen = 0, kind
    if n >= _MAX_BYTES or n < 12 or memcmp(p, b"PUT /v2/keys", 12) != 0:
        return False
    while i < n and p[i] == c'/':
        i += 1
        if i >= n or p[i] == c'.' or not _name_char(p[i]):
            return False
        while i < n and _name_char(p[i]):
            i += 1
    key_end = i
    if key_end == 12 or n - i < 11 or memcmp(p + i, b" HTTP/1.1\r\n", 11) != 0:
        return False
    i += 11
    while not (i + 1 < n and p[i] == c'\r' and p[i + 1] == c'\n'):
        name_start = i
        while i < n and _header_name_char(p[i]):
            i += 1
        name_end = i
        if name_end == name_start or i + 1 >= n or p[i] != c':' or p[i + 1] != c' ':
            return False
        i += 2
        value_start = i
        while i < n and 0x20 <= p[i] <= 0x7e:
            i += 1
        if i == value_start or p[value_start] == c' ' or p[i - 1] == c' ':
            return False
        if i + 1 >= n or p[i] != c'\r' or p[i + 1] != c'\n':
            return False
        kind = _header(p + name_start, name_end - name_start)
        if kind == 0 or seen & kind:
            return False
        seen |= kind
        if kind == CONTENT_TYPE:
            if i - value_start != _FORM_SIZE or memcmp(p + value_start, _FORM, _FORM_SIZE) != 0:
                return False
        elif kind == CONTENT_LENGTH:
            content_length = _shortest_decimal(p + value_start, i - value_start)
            if content_length < 0:
                return False
        i += 2
    i += 2
    body_start = i
    if (seen & _REQUIRED) != _REQUIRED or content_length != n - body_start:
        return False
    if n - i < 6 or memcmp(p + i, b"value=", 6) != 0:
        return False
    i += 6
    while i < n and _name_char(p[i]):
        i += 1
    if i != n:
        return False
    key_end_at[0] = key_end
    body_start_at[0] = body_start
    return True


def match_plain_put(bytes data):
    """``(key, value)`` of a plain write (see the module doc), else ``None``."""
    cdef Py_ssize_t key_end, body_start
    if not _match(data, &key_end, &body_start):
        return None
    return data[12:key_end].decode("ascii"), data[body_start + 6:].decode("ascii")


@cython.final
cdef class PlainWrites:
    """The plain write's lane of one server (see the module doc). ``node`` gives ``store``,
    ``cluster_id`` and ``raw``, its Raft core, whose ``committed`` and ``term`` are the answer's
    ``X-Raft-Index`` and ``X-Raft-Term`` (the node's ``raft_index`` and ``raft_term``);
    ``json_head(status)`` the start of a JSON answer; ``submit(request, waiter)`` proposes a
    store request (raising V2Error when it cannot); ``received`` is the series counting PUT
    requests (its ``value`` goes up by one per write taken); ``http_date(second)`` the ``Date``
    value of a second."""

    cdef object _node
    cdef object _json_head
    cdef object _submit
    cdef object _received
    cdef object _http_date
    cdef object _cluster_id  # the node's cluster id when ``_heads`` were made
    cdef tuple _heads  # the JSON heads of 200 and 201
    cdef time_t _second  # the second of ``_date``
    cdef bytes _date

    def __init__(self, object node, object json_head, object submit, object received, object http_date):
        self._node = node
        self._json_head = json_head
        self._submit = submit
        self._received = received
        self._http_date = http_date
        self._cluster_id = None
        self._second = -1

    def take(self, bytes data, object conn):
        """When ``data`` is exactly one plain write: propose it for ``conn``, which is ``busy``
        until its ``plain_written(answer, key, error)`` (the whole answer, else the error that
        kept the write from applying; ``key`` below ``/v2/keys``), and return True. Else False:
        nothing happened."""
        cdef Py_ssize_t key_end, body_start
        cdef const char *p = PyBytes_AS_STRING(data)
        if not _match(data, &key_end, &body_start):
            return False
        key = PyUnicode_DecodeASCII(p + 12, key_end - 12, NULL)
        value = PyUnicode_DecodeASCII(p + body_start + 6, PyBytes_GET_SIZE(data) - body_start - 6, NULL)
        self._received.value += 1
        conn.busy = True
        waiter = PlainWrite(self, conn, key)
        try:
            self._node.store.auth_enabled()  # etcd's access check reads the store first
            self._submit(encode_set("/1" + key, value), waiter)
        except Exception as error:
            if not isinstance(error, V2Error):
                log.exception("request PUT /v2/keys%s failed", key)
            waiter.set_exception(error)
        return True

    cdef bytes _answer(self, Event event):
        node = self._node
        cluster_id = node.cluster_id
        if cluster_id != self._cluster_id:
            self._heads = (self._json_head(200), self._json_head(201))
            self._cluster_id = cluster_id
        cdef time_t second = time(NULL)
        if second != self._second:
            self._date = self._http_date(second)
            self._second = second
        raw = node.raw  # the Raft core, replaced when the node rebuilds it
        return event.response(self._heads[event.created], raw.committed, raw.term, self._date)


@cython.final
cdef class PlainWrite:
    """The node's waiter for one plain write, settled once (later calls are ignored): it
    hands its connection the whole answer, or the error."""

    cdef PlainWrites _lane
    cdef object _conn
    cdef str _key
    cdef bint _done

    def __init__(self, PlainWrites lane, object conn, str key):
        self._lane = lane
        self._conn = conn
        self._key = key
        self._done = False

    def done(self):
        return self._done

    def set_result(self, object event):
        if self._done:
            return
        self._done = True
        try:
            answer = self._lane._answer(<Event?> event)
        except Exception as error:
            log.exception("answering PUT /v2/keys%s failed", self._key)
            self._conn.plain_written(None, self._key, error)
            return
        self._conn.plain_written(answer, self._key, None)

    def set_exception(self, object error):
        if self._done:
            return
        self._done = True
        self._conn.plain_written(None, self._key, error)
