"""fleet's page tokens: ``base64.URLEncoding`` of a little-endian ``uint16`` limit and ``uint16`` page.

The first page has no token; the token for page 2 with limit 100 is ``ZAACAA==``. Errors carry Go's
message text, which the API returns in a 400.
"""

from __future__ import annotations

import base64
import binascii
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TypeVar

T = TypeVar("T")
_B64_URL = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")


class PageTokenError(ValueError):
    """The token cannot be used; ``str()`` is fleet's (Go's) message."""


@dataclass(frozen=True, slots=True)
class PageToken:
    """Which page of ``limit`` items to return; ``page`` starts at 1."""

    limit: int
    page: int = 1

    def encode(self) -> str:
        """The wire form."""
        return base64.urlsafe_b64encode(struct.pack("<HH", self.limit, self.page)).decode()

    def next(self) -> PageToken:
        """The token of the following page."""
        return PageToken(self.limit, self.page + 1)


def _b64_error_offset(text: str) -> int | None:
    """Where Go's strict padded decoder reports ``illegal base64 data`` (about), None if it decodes."""
    data = text.replace("\r", "").replace("\n", "")
    for index, char in enumerate(data):
        if char == "=":
            padded = len(data) % 4 == 0 and index % 4 >= 2 and set(data[index:]) == {"="}
            return None if padded and len(data) - index <= 2 else index
        if ord(char) > 127 or ord(char) not in _B64_URL:
            return index
    remainder = len(data) % 4
    return None if remainder == 0 else len(data) - remainder


def decode_page_token(text: str, limit: int) -> PageToken:
    """Parse and check a token against the server's page size ``limit``; ``PageTokenError`` otherwise."""
    offset = _b64_error_offset(text)
    if offset is not None:
        raise PageTokenError(f"illegal base64 data at input byte {offset}")
    try:
        raw = base64.urlsafe_b64decode(text.replace("\r", "").replace("\n", ""))
    except (binascii.Error, ValueError):
        raise PageTokenError("illegal base64 data at input byte 0") from None
    if len(raw) < 4:
        raise PageTokenError("EOF" if len(raw) in (0, 2) else "unexpected EOF")
    if len(raw) > 4:
        raise PageTokenError("too many values for page token")
    token_limit, page = struct.unpack("<HH", raw)
    if token_limit != limit:
        raise PageTokenError(f"token limit must be {limit}")
    if page < 1:
        raise PageTokenError("token page must be greater than zero")
    return PageToken(token_limit, page)


def paginate(items: Sequence[T], token: PageToken) -> tuple[Sequence[T], PageToken | None]:
    """The items of ``token``'s page and the next page's token (None when nothing follows)."""
    start = (token.page - 1) * token.limit
    end = start + token.limit
    return items[start:end], (token.next() if len(items) > end else None)
