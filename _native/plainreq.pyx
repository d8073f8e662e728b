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
"""

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_GET_SIZE
from libc.string cimport memcmp

MAX_BYTES = 4096  # longer data is never taken here (far below every limit of the parser)

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


def match_plain_put(bytes data):
    """``(key, value)`` of a plain write (see the module doc), else ``None``."""
    cdef const unsigned char *p = <const unsigned char *> PyBytes_AS_STRING(data)
    cdef Py_ssize_t n = PyBytes_GET_SIZE(data)
    cdef Py_ssize_t i = 12, key_end, name_start, name_end, value_start, body_start
    cdef Py_ssize_t content_length = -1
    cdef int seen = 0, kind
    if n >= MAX_BYTES or n < 12 or memcmp(p, b"PUT /v2/keys", 12) != 0:
        return None
    while i < n and p[i] == c'/':
        i += 1
        if i >= n or p[i] == c'.' or not _name_char(p[i]):
            return None
        while i < n and _name_char(p[i]):
            i += 1
    key_end = i
    if key_end == 12 or n - i < 11 or memcmp(p + i, b" HTTP/1.1\r\n", 11) != 0:
        return None
    i += 11
    while not (i + 1 < n and p[i] == c'\r' and p[i + 1] == c'\n'):
        name_start = i
        while i < n and _header_name_char(p[i]):
            i += 1
        name_end = i
        if name_end == name_start or i + 1 >= n or p[i] != c':' or p[i + 1] != c' ':
            return None
        i += 2
        value_start = i
        while i < n and 0x20 <= p[i] <= 0x7e:
            i += 1
        if i == value_start or p[value_start] == c' ' or p[i - 1] == c' ':
            return None
        if i + 1 >= n or p[i] != c'\r' or p[i + 1] != c'\n':
            return None
        kind = _header(p + name_start, name_end - name_start)
        if kind == 0 or seen & kind:
            return None
        seen |= kind
        if kind == CONTENT_TYPE:
            if i - value_start != _FORM_SIZE or memcmp(p + value_start, _FORM, _FORM_SIZE) != 0:
                return None
        elif kind == CONTENT_LENGTH:
            content_length = _shortest_decimal(p + value_start, i - value_start)
            if content_length < 0:
                return None
        i += 2
    i += 2
    body_start = i
    if (seen & _REQUIRED) != _REQUIRED or content_length != n - body_start:
        return None
    if n - i < 6 or memcmp(p + i, b"value=", 6) != 0:
        return None
    i += 6
    while i < n and _name_char(p[i]):
        i += 1
    if i != n:
        return None
    return data[12:key_end].decode("ascii"), data[body_start + 6:].decode("ascii")
