"""Form and query parsing with the rules of Go's ``net/url`` and ``net/http``.

etcd reads its parameters through ``r.ParseForm()``; clients depend on the exact outcome:

* pairs are separated by ``&``; a pair containing ``;`` is an error
  (``invalid semicolon separator in query``) that replaces any earlier error;
* ``+`` is a space, ``%XX`` a byte; a broken escape is the error
  ``invalid URL escape "%zz"`` (kept only if no error came before), and the pair is dropped;
* the first value of a repeated name wins, and body values come before query values;
* parsing goes on after an error, but the caller answers the (first) error.

Decoded bytes that are not valid UTF-8 are kept as lone surrogates (``surrogateescape``): the
store compares them byte for byte, as Go compares its raw strings, and its JSON encoder prints
each one as ``\\ufffd`` as Go's does.
"""

from __future__ import annotations

from fastkv.gostrings import go_quote

__all__ = [
    "FormError",
    "go_quote",
    "is_form_content_type",
    "parse_bool",
    "parse_form",
    "parse_uint",
    "path_unescape",
]

_HEX = {c: int(chr(c), 16) for c in b"0123456789abcdefABCDEF"}
_TRUE = frozenset(("1", "t", "T", "TRUE", "true", "True"))
_FALSE = frozenset(("0", "f", "F", "FALSE", "false", "False"))
_UINT64_MAX = (1 << 64) - 1


class FormError(ValueError):
    """A request whose form cannot be parsed; ``str(error)`` is Go's error text."""


def _unescape(raw: bytes, plus_is_space: bool) -> bytes:
    """Percent-decode ``raw``; raises ``FormError`` on a broken escape (Go's ``unescape``)."""
    if b"%" not in raw:
        return raw.replace(b"+", b" ") if plus_is_space else raw
    out = bytearray()
    i, n = 0, len(raw)
    while i < n:
        c = raw[i]
        if c == 0x25:  # '%'
            hi = _HEX.get(raw[i + 1]) if i + 1 < n else None
            lo = _HEX.get(raw[i + 2]) if i + 2 < n else None
            if hi is None or lo is None:
                raise FormError("invalid URL escape " + go_quote(raw[i:i + 3]))
            out.append(hi * 16 + lo)
            i += 3
            continue
        out.append(0x20 if c == 0x2B and plus_is_space else c)
        i += 1
    return bytes(out)


def path_unescape(raw: bytes) -> str:
    """Decode a URL path as Go's request parser does (``+`` stays); ``FormError`` if broken."""
    return _unescape(raw, False).decode("utf-8", "surrogateescape")


def _parse_into(form: dict[str, str], raw: bytes) -> FormError | None:
    """Add the pairs of ``raw`` to ``form`` (first value wins); return the error Go would keep."""
    error: FormError | None = None
    for pair in raw.split(b"&"):
        if b";" in pair:
            error = FormError("invalid semicolon separator in query")
            continue
        if not pair:
            continue
        name, _, value = pair.partition(b"=")
        try:
            key = _unescape(name, True).decode("utf-8", "surrogateescape")
            text = _unescape(value, True).decode("utf-8", "surrogateescape")
        except FormError as exc:
            error = error or exc
            continue
        form.setdefault(key, text)
    return error


def parse_form(query: bytes, body: bytes | None = None) -> dict[str, str]:
    """``r.ParseForm()``: body pairs (when given) first, then query pairs; first value wins.

    Raises ``FormError`` with the body's error in preference to the query's.
    """
    form: dict[str, str] = {}
    body_error = _parse_into(form, body) if body else None
    query_error = _parse_into(form, query) if query else None
    error = body_error or query_error
    if error is not None:
        raise error
    return form


def is_form_content_type(content_type: bytes | None) -> bool:
    """True for ``application/x-www-form-urlencoded`` (parameters and case ignored)."""
    if not content_type:
        return False
    media = content_type.split(b";", 1)[0].strip().lower()
    return media == b"application/x-www-form-urlencoded"


def parse_bool(text: str) -> bool:
    """``strconv.ParseBool``; ``ValueError`` for anything else, the empty string included."""
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise ValueError(text)


def parse_uint(text: str) -> int:
    """``strconv.ParseUint(text, 10, 64)``: ASCII digits only, at most 2**64-1."""
    if not text or not text.isascii() or not text.isdigit():
        raise ValueError(text)
    value = int(text)
    if value > _UINT64_MAX:
        raise ValueError(text)
    return value
