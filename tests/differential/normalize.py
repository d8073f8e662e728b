"""Normalise a response so that two servers' answers to the same request compare equal.

Only what legitimately differs between two correct servers is rewritten, and each rewrite
checks the value it hides:

* indices: every server has its own base (its X-Etcd-Index right after start); indices in
  ``X-Etcd-Index``, ``modifiedIndex``, ``createdIndex``, error ``index``, in-order key names,
  compare-failed causes and 401 causes become ``index - base``. Request-validation errors
  (codes 2xx) carry a literal 0 and are kept as they are.
* ``X-Raft-Index`` / ``X-Raft-Term`` must be non-negative integers; the runner compares how
  they move, not their values.
* ``Date`` must be well-formed (its presence is compared like any header); ``expiration``
  must be RFC3339Nano UTC near now + ttl; ``ttl`` values may differ by one second.
* cluster and member ids, client and peer URLs become placeholders; stats timing fields are
  checked for shape; ``/v2/stats/store`` counters count from the server's own baseline.
* framing (Content-Length vs chunked) is not compared, header order and name case neither.
* in a cluster (``ServerFacts.members``): the other members' ids and URLs become placeholders
  named after the members; what depends on which member leads (the ``state`` and leader of
  ``/v2/stats/self``, ``/v2/members/leader``, the followers' latencies and counts of
  ``/v2/stats/leader``, the append counters) is checked for shape and hidden; lists ordered by
  member id or URL (``/v2/members``, ``/v2/machines``) are checked to be in that order, then
  compared as sets.

Everything else (status, the set of headers and their values, body bytes) must match exactly.
"""

from __future__ import annotations

import calendar
import json
import re
import time
from dataclasses import dataclass, field
from email.utils import parsedate_tz
from typing import Any

from tests.differential.client import Response

FRAMING_HEADERS = frozenset({"content-length", "transfer-encoding"})
RAFT_HEADERS = frozenset({"x-raft-index", "x-raft-term"})
VALIDATION_CODES = range(200, 300)

RFC3339NANO = re.compile(r"^(\d{4})-(\d\d)-(\d\d)T(\d\d):(\d\d):(\d\d)(\.\d*[1-9])?Z$")
GO_DURATION = re.compile(r"^(\d+h)?(\d+m)?\d+(\.\d+)?(ns|µs|ms|s)$")
IMF_DATE = re.compile(r"^(Mon|Tue|Wed|Thu|Fri|Sat|Sun), \d\d "
                      r"(Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec) \d{4} \d\d:\d\d:\d\d GMT$")
RATE_FIELDS = re.compile(r',"(recvPkgRate|recvBandwidthRate|sendPkgRate|sendBandwidthRate)":[-+.\deE]+')
# Tolerances: a response's expiration against now + ttl, and the two servers' expirations.
EXPIRY_SLACK_S = 2.0
EXPIRY_PAIR_SLACK_S = 3.0


@dataclass
class ServerFacts:
    """What is legitimately particular to one server, learnt right after it started."""

    base: int
    client_url: str
    peer_url: str
    ids: dict[str, str] = field(default_factory=dict)
    """Hex member/cluster id -> placeholder; ids of members added later are added here."""
    store_stats: dict[str, int] = field(default_factory=dict)
    """``/v2/stats/store`` counters right after start."""
    members: dict[str, str] = field(default_factory=dict)
    """In a cluster: the other members' client and peer URLs -> placeholders (their ids are in ``ids``)."""

    @property
    def cluster(self) -> bool:
        return bool(self.members)

    def member_placeholders(self) -> set[str]:
        """The placeholders of every member id, this member's included."""
        return {p for p in self.ids.values() if p.startswith("#member")}

    def placeholder_for_new_id(self, hex_id: str) -> None:
        """Remember a member id made at run time (ids mix in the time, so they differ)."""
        if hex_id not in self.ids:
            self.ids[hex_id] = f"#new-member-{sum(p.startswith('#new') for p in self.ids.values()) + 1}"


@dataclass(frozen=True)
class RequestContext:
    """The request a response answers, as far as normalising it needs to know."""

    method: str
    target: str
    body: bytes | None = None
    event: bool = False
    """A watch event line: it may come from history, so its ttl is not relative to now."""
    unordered: bool = False
    """Lists of objects in the body are in no defined order (Go map order): compare them as sets."""

    @property
    def path(self) -> str:
        return self.target.split("?", 1)[0]

    def has_param(self, name: str) -> bool:
        text = self.target.partition("?")[2] + "&" + (self.body or b"").decode("latin-1")
        return any(p.split("=", 1)[0] == name and p.split("=", 1)[1:] not in ([], [""], ["0"])
                   for p in text.split("&"))


@dataclass
class Normalized:
    """A response (or one watch event line) with the legitimate differences taken out."""

    status: int
    headers: list[tuple[str, str]]
    body: str
    problems: list[str] = field(default_factory=list)
    """What is wrong with this response on its own (a malformed Date, a bad expiration...)."""
    ttls: list[int] = field(default_factory=list)
    expirations: list[float] = field(default_factory=list)
    raft_index: int | None = None
    raft_term: int | None = None


def go_json(value: Any) -> str:
    """Encode as Go's encoding/json does (no spaces, HTML-safe escapes, raw UTF-8)."""
    text = json.dumps(value, ensure_ascii=False, separators=(",", ":"))
    for ch, esc in (("<", "\\u003c"), (">", "\\u003e"), ("&", "\\u0026"),
                    ("\u2028", "\\u2028"), ("\u2029", "\\u2029")):
        text = text.replace(ch, esc)
    return text


def parse_rfc3339(text: str) -> float | None:
    """Unix seconds of an RFC3339Nano UTC timestamp as Go prints it, or None if malformed."""
    m = RFC3339NANO.match(text)
    if not m:
        return None
    secs = calendar.timegm((*(int(g) for g in m.groups()[:6]), 0, 0, 0))
    return secs + float(m.group(7) or 0)


def _error_code(body: str) -> int | None:
    m = re.match(r'\{"errorCode":(\d+),', body)
    return int(m.group(1)) if m else None


def _replace_identities(text: str, facts: ServerFacts) -> str:
    for url, placeholder in ((facts.client_url, "#client-url"), (facts.peer_url, "#peer-url"),
                             *facts.members.items()):
        text = re.sub(re.escape(url) + r"(?!\d)", placeholder, text)
    for hex_id, placeholder in facts.ids.items():
        text = re.sub(rf"\b{hex_id}\b", placeholder, text)
    return text


def _shift_indices(body: str, facts: ServerFacts, ctx: RequestContext) -> str:
    def shift(n: str) -> str:
        return str(int(n) - facts.base)

    body = re.sub(r'"(modifiedIndex|createdIndex)":(\d+)', lambda m: f'"{m[1]}":{shift(m[2])}', body)
    code = _error_code(body)
    if code is not None and code not in VALIDATION_CODES:
        body = re.sub(r'"index":(\d+)', lambda m: f'"index":{shift(m[1])}', body)
    body = re.sub(r"(?<=/)(\d{20})(?=[\"/])", lambda m: f"#seq{shift(m[1])}", body)
    if code == 101 and ctx.has_param("prevIndex"):
        body = re.sub(r"\[(\d+) != (\d+)\](?=\")", lambda m: f"[{shift(m[1])} != {shift(m[2])}]", body)
    if code == 401:
        body = re.sub(r"cleared \[(\d+)/(\d+)\]", lambda m: f"cleared [{shift(m[1])}/{shift(m[2])}]", body)
    return body


def _times(body: str, ctx: RequestContext, now: float, out: Normalized) -> str:
    """Replace expiration/ttl by placeholders, checking each against now."""
    def one(m: re.Match[str]) -> str:
        exp = parse_rfc3339(m[1])
        ttl = int(m[2]) if m[2] is not None else 0
        if exp is None:
            out.problems.append(f"expiration {m[1]!r} is not RFC3339Nano UTC")
            exp = 0.0
        elif ctx.event:
            if exp > now + ttl + EXPIRY_SLACK_S:
                out.problems.append(f"expiration {m[1]} is after now + ttl {ttl}")
        elif abs(exp - (now + ttl)) > EXPIRY_SLACK_S:
            out.problems.append(f"expiration {m[1]} is not within {EXPIRY_SLACK_S}s of now + ttl {ttl}")
        out.expirations.append(exp)
        if m[2] is None:
            return '"expiration":"#exp"'
        out.ttls.append(ttl)
        return '"expiration":"#exp","ttl":"#ttl"'

    body = re.sub(r'"expiration":"([^"]*)"(?:,"ttl":(-?\d+))?', one, body)
    if re.search(r'"ttl":-?\d', body):
        out.problems.append("a ttl without an expiration")
    return body


def _stats(body: str, facts: ServerFacts, ctx: RequestContext, out: Normalized) -> str:
    if ctx.path.startswith("/v2/stats/self"):
        def time_field(m: re.Match[str]) -> str:
            if parse_rfc3339(m[2]) is None:
                out.problems.append(f"{m[1]} {m[2]!r} is not RFC3339Nano UTC")
            return f'"{m[1]}":"#time"'

        def duration(m: re.Match[str]) -> str:
            if not GO_DURATION.match(m[1]):
                out.problems.append(f"uptime {m[1]!r} is not a Go duration")
            return '"uptime":"#duration"'

        body = re.sub(r'"(startTime)":"([^"]*)"', time_field, body)
        body = re.sub(r'"uptime":"([^"]*)"', duration, body)
        body = RATE_FIELDS.sub("", body)
        if facts.cluster:
            body = _role_of_member(body, facts, out)
    elif ctx.path.startswith("/v2/stats/store"):
        def counter(m: re.Match[str]) -> str:
            base = facts.store_stats.get(m[1], 0) if m[1] != "watchers" else 0
            return f'"{m[1]}":{int(m[2]) - base}'

        body = re.sub(r'"(\w+)":(\d+)', counter, body)
    return body


MEMBER_LISTS = frozenset({"/v2/members", "/v2/members/", "/v2/machines"})
STATES = frozenset({"StateFollower", "StateCandidate", "StateLeader", "StatePreCandidate"})


def _role_of_member(body: str, facts: ServerFacts, out: Normalized) -> str:
    """``/v2/stats/self`` in a cluster: which member leads, this member's state and how many appends
    it sent or received depend on the election; check them and hide them."""
    def state(m: re.Match[str]) -> str:
        if m[1] not in STATES:
            out.problems.append(f"state {m[1]!r} is not a Raft state")
        return '"state":"#state"'

    def leader(m: re.Match[str]) -> str:
        if m[1] not in facts.member_placeholders():
            out.problems.append(f"leader {m[1]!r} is not a member")
        return '"leader":"#leader"'

    body = re.sub(r'"state":"([^"]*)"', state, body)
    body = re.sub(r'"leader":"([^"]*)"', leader, body)
    return re.sub(r'"(recvAppendRequestCnt|sendAppendRequestCnt)":\d+', r'"\1":"#count"', body)


def _leader_stats(body: str, facts: ServerFacts, out: Normalized) -> str:
    """``/v2/stats/leader`` on a cluster's leader: the followers (as a set), each with a latency
    and counts of the right shape."""
    try:
        value = json.loads(body)
        followers = value["followers"]
        for stats in followers.values():
            assert set(stats) == {"latency", "counts"}
            assert set(stats["latency"]) == {"current", "average", "standardDeviation", "minimum", "maximum"}
            assert all(isinstance(v, int | float) for v in stats["latency"].values())
            assert set(stats["counts"]) == {"fail", "success"}
            assert all(isinstance(v, int) for v in stats["counts"].values())
    except (ValueError, KeyError, TypeError, AssertionError, AttributeError):
        out.problems.append("leader stats are not shaped as etcd's")
        return body
    others = facts.member_placeholders() - {value["leader"]}
    # the leader's followers are the other members, whichever member leads
    shown = "#the-other-members" if set(followers) == others else sorted(followers)
    return go_json({"leader": value["leader"], "followers": shown})


def _in_member_order(body: str, facts: ServerFacts, ctx: RequestContext, out: Normalized) -> str:
    """Lists a cluster orders by member id (``/v2/members``) or by URL (``/v2/machines``): check
    the order on the raw answer; the ids and URLs differ between servers, so compare as sets."""
    if ctx.path == "/v2/machines":
        urls = body.split(", ")
        if urls != sorted(urls):
            out.problems.append("machines are not sorted")
        return ", ".join(sorted(_replace_identities(u, facts) for u in urls))
    try:
        ids = [int(m["id"], 16) for m in json.loads(body)["members"]]
    except (ValueError, KeyError, TypeError):
        return body
    if ids != sorted(ids):
        out.problems.append("members are not sorted by id")
    return body


def _leader_member(body: str, facts: ServerFacts, out: Normalized) -> str:
    """``/v2/members/leader`` in a cluster: some member, which one depends on the election."""
    try:
        member = json.loads(body)
        assert list(member) == ["id", "name", "peerURLs", "clientURLs"]
    except (ValueError, AssertionError, TypeError):
        return body
    if member["id"] not in facts.member_placeholders():
        out.problems.append(f"the leader {member['id']!r} is not a member")
    return "#leader-member\n"


def _sort_lists(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _sort_lists(v) for k, v in value.items()}
    if isinstance(value, list):
        items = [_sort_lists(v) for v in value]
        return sorted(items, key=go_json)
    return value


def _unordered(body: str, out: Normalized) -> str:
    """Put every list in a canonical order, after checking the body is Go's encoding of itself."""
    text, newline = (body[:-1], "\n") if body.endswith("\n") else (body, "")
    try:
        value = json.loads(text)
    except ValueError:
        out.problems.append("body is not JSON")
        return body
    if go_json(value) != text:
        out.problems.append("body is not encoded as Go's encoding/json encodes it")
    return go_json(_sort_lists(value)) + newline


def normalize_body(raw: bytes, facts: ServerFacts, ctx: RequestContext, now: float, out: Normalized) -> str:
    """The body with identities, indices, times and (if asked) list order normalised."""
    body = raw.decode("utf-8", "surrogateescape")
    cluster_list = facts.cluster and ctx.method in ("GET", "HEAD") and ctx.path in MEMBER_LISTS
    if cluster_list and body:
        body = _in_member_order(body, facts, ctx, out)
    body = _replace_identities(body, facts)
    if facts.cluster and ctx.path == "/v2/members/leader" and body:
        body = _leader_member(body, facts, out)
    if facts.cluster and ctx.path == "/v2/stats/leader" and body.startswith('{"leader"'):
        body = _leader_stats(body, facts, out)
    body = _shift_indices(body, facts, ctx)
    body = _times(body, ctx, now, out)
    body = _stats(body, facts, ctx, out)
    if ctx.unordered or (cluster_list and ctx.path != "/v2/machines" and body):
        body = _unordered(body, out)
    return body


def _raft_value(name: str, value: str, out: Normalized) -> None:
    if not value.isdigit():
        out.problems.append(f"{name} {value!r} is not a non-negative integer")
        return
    if name == "x-raft-index":
        out.raft_index = int(value)
    else:
        out.raft_term = int(value)


def _header(name: str, value: str, facts: ServerFacts, validation_error: bool, out: Normalized) -> str:
    if name == "date":
        if not IMF_DATE.match(value) or parsedate_tz(value) is None:
            out.problems.append(f"Date {value!r} is not an HTTP date")
        return "#date"
    if name in RAFT_HEADERS:
        _raft_value(name, value, out)
        return "#raft"
    if name == "x-etcd-index" and value.isdigit() and not validation_error:
        return str(int(value) - facts.base)
    return _replace_identities(value, facts)


def normalize(resp: Response, facts: ServerFacts, ctx: RequestContext,
              now: float | None = None) -> Normalized:
    """Normalise a whole response."""
    now = time.time() if now is None else now
    out = Normalized(resp.status, [], "")
    out.body = normalize_body(resp.body, facts, ctx, now, out)
    code = _error_code(resp.body.decode("utf-8", "replace"))
    validation_error = code is not None and code in VALIDATION_CODES
    for name, value in resp.headers:
        lname = name.lower()
        if lname not in FRAMING_HEADERS:
            out.headers.append((lname, _header(lname, value, facts, validation_error, out)))
    out.headers.sort()
    return out


def normalize_event(line: bytes, facts: ServerFacts, ctx: RequestContext,
                    now: float | None = None) -> Normalized:
    """Normalise one line of a watch body (one event)."""
    now = time.time() if now is None else now
    out = Normalized(0, [], "")
    out.body = normalize_body(line, facts, ctx, now, out)
    return out


def differences(a: Normalized, b: Normalized) -> list[str]:
    """How ``b`` differs from the reference ``a`` (empty when they match)."""
    diffs = []
    if a.status != b.status:
        diffs.append(f"status {a.status} != {b.status}")
    if a.headers != b.headers:
        only_a = sorted(set(a.headers) - set(b.headers))
        only_b = sorted(set(b.headers) - set(a.headers))
        diffs.append(f"headers: reference only {only_a}, other only {only_b}")
    if a.body != b.body:
        diffs.append(f"body:\n    reference {a.body!r}\n    other     {b.body!r}")
    if len(a.ttls) != len(b.ttls) or any(abs(x - y) > 1 for x, y in zip(a.ttls, b.ttls, strict=False)):
        diffs.append(f"ttl {a.ttls} != {b.ttls} (±1)")
    if any(abs(x - y) > EXPIRY_PAIR_SLACK_S for x, y in zip(a.expirations, b.expirations, strict=False)):
        diffs.append(f"expiration {a.expirations} != {b.expirations} (±{EXPIRY_PAIR_SLACK_S}s)")
    diffs += [f"reference: {p}" for p in a.problems] + [f"other: {p}" for p in b.problems]
    return diffs
