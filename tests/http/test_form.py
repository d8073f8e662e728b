"""Go's form, query and ParseBool/ParseUint rules, as etcd applies them to v2 parameters."""

from __future__ import annotations

import pytest

from fastkv.http.form import (
    FormError,
    go_quote,
    is_form_content_type,
    parse_bool,
    parse_form,
    parse_uint,
    path_unescape,
)


def test_pairs_plus_and_percent() -> None:
    assert parse_form(b"value=a+b%20c&dir=true") == {"value": "a b c", "dir": "true"}


def test_first_value_wins_and_body_before_query() -> None:
    assert parse_form(b"value=q1&value=q2&ttl=5", b"value=b1&value=b2") == {"value": "b1", "ttl": "5"}


def test_empty_pairs_and_missing_equals() -> None:
    assert parse_form(b"&&recursive&value=") == {"recursive": "", "value": ""}


@pytest.mark.parametrize(("raw", "message"), [
    (b"value=%zz", 'invalid URL escape "%zz"'),
    (b"value=a%", 'invalid URL escape "%"'),
    (b"value=%4", 'invalid URL escape "%4"'),
    (b"value=%\xff1", 'invalid URL escape "%\\xff1"'),
    (b"a;b=1", "invalid semicolon separator in query"),
    (b"x=%zz&a;b=1", "invalid semicolon separator in query"),
    (b"a;b=1&x=%zz", "invalid semicolon separator in query"),
    (b"x=%zz&y=%qq", 'invalid URL escape "%zz"'),
])
def test_errors_as_go_reports_them(raw: bytes, message: str) -> None:
    with pytest.raises(FormError) as caught:
        parse_form(raw)
    assert str(caught.value) == message


def test_body_error_comes_before_query_error() -> None:
    with pytest.raises(FormError, match="%f"):
        parse_form(b"x=%zz", b"y=%f")


def test_invalid_utf8_kept_byte_for_byte() -> None:
    value = parse_form(b"value=%ff%e2%82%ac")["value"]
    assert value.encode("utf-8", "surrogateescape") == b"\xff\xe2\x82\xac"


def test_path_unescape_keeps_plus() -> None:
    assert path_unescape(b"/v2/keys/a+b%2Fc") == "/v2/keys/a+b/c"
    with pytest.raises(FormError):
        path_unescape(b"/v2/keys/%zz")


@pytest.mark.parametrize("text", ["1", "t", "T", "TRUE", "true", "True"])
def test_true_values(text: str) -> None:
    assert parse_bool(text) is True


@pytest.mark.parametrize("text", ["0", "f", "F", "FALSE", "false", "False"])
def test_false_values(text: str) -> None:
    assert parse_bool(text) is False


@pytest.mark.parametrize("text", ["", "yes", "tRUE", " true", "2"])
def test_not_bools(text: str) -> None:
    with pytest.raises(ValueError):
        parse_bool(text)


def test_uint() -> None:
    assert parse_uint("0") == 0
    assert parse_uint("18446744073709551615") == 2**64 - 1
    for bad in ("", "-1", "+1", "1e3", "abc", " 1", "18446744073709551616", "\u0661"):
        with pytest.raises(ValueError):
            parse_uint(bad)


def test_form_content_type() -> None:
    assert is_form_content_type(b"application/x-www-form-urlencoded")
    assert is_form_content_type(b"Application/X-WWW-Form-Urlencoded; charset=utf-8")
    assert not is_form_content_type(b"application/json")
    assert not is_form_content_type(None)


def test_go_quote() -> None:
    assert go_quote(b'%"\\') == '"%\\"\\\\"'
    assert go_quote(b"%\x01") == '"%\\x01"'
