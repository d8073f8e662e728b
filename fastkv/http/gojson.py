"""Go ``encoding/json`` output for the small bodies built in Python (members, stats, leader).

Keys events are encoded by the store; this module serves the rest, byte for byte as Go
writes them: no spaces, keys in the given order, ``<``, ``>``, ``&``, U+2028 and U+2029
escaped, control characters as ``\\u00XX`` except ``\\n``, ``\\r``, ``\\t``, other
non-ASCII as raw UTF-8.
"""

from __future__ import annotations

import re
from typing import Any

__all__ = ["dumps", "message_body"]

_ESCAPES = {chr(c): f"\\u{c:04x}" for c in range(0x20)}
_ESCAPES.update({"\n": "\\n", "\r": "\\r", "\t": "\\t", '"': '\\"', "\\": "\\\\",
                 "<": "\\u003c", ">": "\\u003e", "&": "\\u0026",
                 "\u2028": "\\u2028", "\u2029": "\\u2029"})
_NEEDS_ESCAPE = re.compile('[\x00-\x1f"\\\\<>&\u2028\u2029\ud800-\udfff]')


def _escape(match: re.Match[str]) -> str:
    return _ESCAPES.get(match.group(), "\\ufffd")


def _encode(value: Any, out: list[str]) -> None:
    if isinstance(value, str):
        out.append('"' + _NEEDS_ESCAPE.sub(_escape, value) + '"')
    elif value is True:
        out.append("true")
    elif value is False:
        out.append("false")
    elif value is None:
        out.append("null")
    elif isinstance(value, int):
        out.append(str(value))
    elif isinstance(value, dict):
        out.append("{")
        for i, (key, item) in enumerate(value.items()):
            if i:
                out.append(",")
            _encode(str(key), out)
            out.append(":")
            _encode(item, out)
        out.append("}")
    elif isinstance(value, list | tuple):
        out.append("[")
        for i, item in enumerate(value):
            if i:
                out.append(",")
            _encode(item, out)
        out.append("]")
    elif isinstance(value, float):
        out.append(repr(value) if value != int(value) or abs(value) >= 1e21 else str(int(value)))
    else:
        raise TypeError(f"cannot encode {type(value).__name__} as JSON")


def dumps(value: Any, newline: bool = False) -> bytes:
    """Encode like ``json.Marshal`` (or ``json.Encoder.Encode`` with ``newline=True``)."""
    out: list[str] = []
    _encode(value, out)
    if newline:
        out.append("\n")
    return "".join(out).encode()


def message_body(message: str) -> bytes:
    """The ``{"message":...}`` body of etcd's HTTP errors (members, stats): no newline."""
    return dumps({"message": message})
