"""/v2/keys compared with the reference etcd: operations, validation, forms, paths, TTLs."""

from __future__ import annotations

import time

import pytest

from tests.differential import scenarios
from tests.differential.client import Response
from tests.differential.conftest import Pair, assert_group
from tests.differential.normalize import RequestContext, ServerFacts, differences, normalize


@pytest.mark.reference
@pytest.mark.parametrize("group", scenarios.KEYS_GROUPS, ids=lambda g: g.name)
def test_keys(pair: Pair, group: scenarios.Group) -> None:
    assert_group(pair, group)


def test_the_suite_compares_at_least_200_exchanges() -> None:
    assert scenarios.compared_steps(scenarios.ALL_GROUPS) >= 200


# ---- the comparison itself: it hides only legitimate differences ----------------------------------

FACTS_A = ServerFacts(base=3, client_url="http://127.0.0.1:1001", peer_url="http://127.0.0.1:1002",
                      ids={"aaaa": "#member-id"})
FACTS_B = ServerFacts(base=10, client_url="http://127.0.0.1:2001", peer_url="http://127.0.0.1:2002",
                      ids={"bbbb": "#member-id"})
CTX = RequestContext("GET", "/v2/keys/foo")
HEADERS = [("Content-Type", "application/json"), ("Date", "Sat, 28 Nov 2026 01:14:09 GMT")]


def keys_response(base: int, body: str, headers: list[tuple[str, str]] = HEADERS, chunked: bool = False,
                  index: int = 1) -> Response:
    """A keys answer whose indices are written relative to ``base``."""
    text = body.replace("@", str(base + index))
    return Response(200, "OK", [*headers, ("X-Etcd-Index", str(base + index))], text.encode(), chunked)


def diff(a: Response, b: Response) -> list[str]:
    return differences(normalize(a, FACTS_A, CTX), normalize(b, FACTS_B, CTX))


NODE = '{"action":"get","node":{"key":"/foo","value":"<","modifiedIndex":@,"createdIndex":@}}\n'


def test_indices_shifted_by_each_base_compare_equal() -> None:
    assert diff(keys_response(3, NODE), keys_response(10, NODE)) == []


def test_an_index_off_by_one_is_a_difference() -> None:
    assert diff(keys_response(3, NODE), keys_response(10, NODE, index=2))


def test_header_order_case_and_framing_do_not_matter_but_the_set_does() -> None:
    a = keys_response(3, NODE)
    b = keys_response(10, NODE, [(k.lower(), v) for k, v in reversed(HEADERS)], chunked=True)
    assert diff(a, b) == []
    extra = keys_response(10, NODE, [*HEADERS, ("X-Extra", "1")])
    assert diff(a, extra)
    missing_date = keys_response(10, NODE, HEADERS[:1])
    assert diff(a, missing_date)


def test_body_bytes_must_match_exactly() -> None:
    a = keys_response(3, NODE)
    assert diff(a, keys_response(10, NODE.replace('"<"', '"\\u003c"')))
    assert diff(a, keys_response(10, NODE.rstrip("\n")))
    assert diff(a, keys_response(10, NODE.replace('"value":"<",', "")))


def test_ttl_may_differ_by_one_second_only() -> None:
    def with_ttl(base: int, ttl: int) -> Response:
        expiration = time.strftime("%Y-%m-%dT%H:%M:%S.5Z", time.gmtime(time.time() + ttl))
        return keys_response(base, NODE.replace(',"modifiedIndex"',
                                                f',"expiration":"{expiration}","ttl":{ttl},"modifiedIndex"'))

    assert diff(with_ttl(3, 10), with_ttl(10, 11)) == []
    assert diff(with_ttl(3, 10), with_ttl(10, 13))


def test_identities_map_to_placeholders() -> None:
    a = Response(200, "OK", HEADERS, b'{"id":"aaaa","clientURLs":["http://127.0.0.1:1001"]}\n')
    b = Response(200, "OK", HEADERS, b'{"id":"bbbb","clientURLs":["http://127.0.0.1:2001"]}\n')
    assert diff(a, b) == []
    wrong = Response(200, "OK", HEADERS, b'{"id":"bbbb","clientURLs":["http://127.0.0.1:1001"]}\n')
    assert diff(a, wrong)
