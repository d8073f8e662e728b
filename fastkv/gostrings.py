"""Strings as Go prints them."""

from __future__ import annotations


def go_quote(raw: str | bytes) -> str:
    """Go's ``strconv.Quote`` (``%q``): printable characters kept, the rest escaped; in a byte string
    (or a ``str`` carrying them as surrogate escapes) each invalid UTF-8 byte becomes ``\\xNN``."""
    text = raw.decode("utf-8", "surrogateescape") if isinstance(raw, bytes) else raw
    out = ['"']
    for ch in text:
        code = ord(ch)
        if ch in '"\\':
            out.append("\\" + ch)
        elif 0x20 <= code < 0x7F:
            out.append(ch)
        elif 0xDC80 <= code <= 0xDCFF:  # an invalid UTF-8 byte
            out.append(f"\\x{code - 0xDC00:02x}")
        elif ch == "\n":
            out.append("\\n")
        elif ch == "\t":
            out.append("\\t")
        elif ch == "\r":
            out.append("\\r")
        elif code < 0x80 or code == 0x7F:
            out.append(f"\\x{code:02x}")
        elif ch.isprintable():
            out.append(ch)
        elif code <= 0xFFFF:
            out.append(f"\\u{code:04x}")
        else:
            out.append(f"\\U{code:08x}")
    out.append('"')
    return "".join(out)
