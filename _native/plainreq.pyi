"""Recognising the plain write (``PUT /v2/keys/<key>`` with a ``value=`` form and only the usual
headers) in compiled code; see the module's documentation for the exact rules."""

MAX_BYTES: int

def match_plain_put(data: bytes) -> tuple[str, str] | None: ...
