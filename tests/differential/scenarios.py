"""The request scripts of the differential suite, as data.

A ``Group`` is a list of steps run in order against both servers. Targets, bodies, headers
and raw requests may use templates that are filled in per server: ``<name>`` or
``<name+N>`` / ``<name-N>`` with ``name`` one of ``base`` (the server's index at start),
``index`` (the last X-Etcd-Index of a successful response), ``member_id``, ``peer_url``,
``client_url`` or a value captured earlier with ``capture``. ``<i>`` in a ``Bulk`` target or
body is the request's number.
"""

from __future__ import annotations

from dataclasses import dataclass

FORM = (("Content-Type", "application/x-www-form-urlencoded"),)
JSON = (("Content-Type", "application/json"),)


@dataclass(frozen=True)
class Req:
    """One request and its complete response, compared."""

    label: str
    method: str
    target: str
    body: str | None = None
    headers: tuple[tuple[str, str], ...] = ()
    raw: str | None = None
    """The whole request, sent verbatim (``<host>`` is the server's host:port)."""
    capture: tuple[tuple[str, str], ...] = ()
    """(variable, where): where is a dotted JSON path (``node.modifiedIndex``) or ``header:Name``."""
    unordered: bool = False
    new_member: bool = False
    """The body's ``id`` is a member id made at run time (it mixes in the time)."""


@dataclass(frozen=True)
class Watch:
    """Open a watch (a GET that stays open) on both servers and compare the response head.

    An error answer (not a stream) is compared whole.
    """

    label: str
    name: str
    target: str


@dataclass(frozen=True)
class Event:
    """Read the next event line of watch ``name`` on both servers and compare them.

    ``last``: the response must end after this event (a non-stream watch); the watch is closed.
    """

    label: str
    name: str
    timeout: float = 3.0
    last: bool = True


@dataclass(frozen=True)
class Quiet:
    """Nothing more arrives on watch ``name`` within ``wait`` seconds, on both servers.

    Used right after writes whose responses have come back: a server notifies its watchers
    before it answers the write, so a short wait suffices.
    """

    label: str
    name: str
    wait: float = 0.3


@dataclass(frozen=True)
class Close:
    """Close watch ``name`` on both servers (nothing is compared)."""

    name: str


@dataclass(frozen=True)
class Bulk:
    """``count`` requests over one keep-alive connection; the statuses and the index advance compared."""

    label: str
    count: int
    method: str
    target: str
    body: str | None = None


Step = Req | Watch | Event | Quiet | Close | Bulk


@dataclass(frozen=True)
class Group:
    """Steps that belong together; ``ttl``: keys with a TTL live during the group, so the
    reference etcd's periodic expiry entries make X-Raft-Index advance by itself."""

    name: str
    steps: tuple[Step, ...]
    ttl: bool = False


def compared_steps(groups: list[Group]) -> int:
    """How many compared exchanges the groups hold (bulk writes not counted)."""
    return sum(isinstance(s, Req | Watch | Event | Quiet) for g in groups for s in g.steps)


# ---- constructors that keep the scripts short ------------------------------------------------

def req(label: str, method: str, target: str, body: str | None = None, *, form: bool = True,
        headers: tuple[tuple[str, str], ...] = (), **kw: object) -> Req:
    """A request; a body is sent as a form unless ``form=False`` or headers name a type."""
    if body is not None and form and not any(k.lower() == "content-type" for k, _ in headers):
        headers = FORM + headers
    return Req(label, method, target, body, headers, **kw)  # type: ignore[arg-type]


def get(label: str, target: str, **kw: object) -> Req:
    return req(label, "GET", target, **kw)  # type: ignore[arg-type]


def head(label: str, target: str, **kw: object) -> Req:
    return req(label, "HEAD", target, **kw)  # type: ignore[arg-type]


def put(label: str, target: str, body: str | None = None, **kw: object) -> Req:
    return req(label, "PUT", target, body, **kw)  # type: ignore[arg-type]


def post(label: str, target: str, body: str | None = None, **kw: object) -> Req:
    return req(label, "POST", target, body, **kw)  # type: ignore[arg-type]


def delete(label: str, target: str, body: str | None = None, **kw: object) -> Req:
    return req(label, "DELETE", target, body, **kw)  # type: ignore[arg-type]


def raw(label: str, method: str, text: str) -> Req:
    """A verbatim request; ``method`` says how to read the answer (HEAD has no body)."""
    return Req(label, method, "", raw=text)


def keep(var: str, where: str = "node.modifiedIndex") -> tuple[tuple[str, str], ...]:
    return ((var, where),)


K = "/v2/keys"

# ---- /v2/keys: operations (§1.3, §1.5, checklist) ---------------------------------------------

BASICS = Group("basics", (
    get("root GET on a fresh store", f"{K}/"),
    get("root GET without the trailing slash", K),
    head("root HEAD", f"{K}/"),
    put("set a new key: 201", f"{K}/foo", "value=bar"),
    put("set an existing key: 200, prevNode, new createdIndex", f"{K}/foo", "value=baz"),
    get("get a key", f"{K}/foo"),
    head("HEAD a key: headers, no body", f"{K}/foo"),
    get("get a missing key: 404/100", f"{K}/missing"),
    head("HEAD a missing key", f"{K}/missing"),
    get("cause is the first missing component", f"{K}/nodir/a/b"),
    put("value from the query", f"{K}/q1?value=fromquery"),
    put("no value at all: empty string", f"{K}/empty"),
    get("a key with an empty value", f"{K}/empty"),
    put("create: 201 create", f"{K}/c1?prevExist=false", "value=v1"),
    put("create again: 412/105", f"{K}/c1?prevExist=false", "value=v1"),
    put("update a missing key: 404/100", f"{K}/u1", "value=v1&prevExist=true"),
    put("update: 200 update", f"{K}/c1", "value=v2&prevExist=true", capture=keep("c1")),
    put("CAS by value", f"{K}/c1", "value=v3&prevValue=v2", capture=keep("c1")),
    put("CAS with a wrong value: 412/101", f"{K}/c1", "value=v4&prevValue=zzz"),
    put("CAS with a wrong index: 412/101", f"{K}/c1?prevIndex=<base+1>", "value=v4"),
    put("CAS with value and index wrong", f"{K}/c1?prevIndex=<base+1>", "value=v4&prevValue=q"),
    put("CAS with the right value, wrong index", f"{K}/c1?prevIndex=<base+1>", "value=v4&prevValue=v3"),
    put("CAS with the right index", f"{K}/c1?prevIndex=<c1>", "value=v5"),
    put("CAS with the right value and index", f"{K}/c1?prevIndex=<index>", "value=v6&prevValue=v5"),
    put("prevExist=true with prevValue is a CAS", f"{K}/c1", "value=v7&prevExist=true&prevValue=v6"),
    put("prevExist=true with a wrong prevValue", f"{K}/c1", "value=v8&prevExist=true&prevValue=nope"),
    put("prevExist=false ignores prevValue", f"{K}/c2?prevExist=false&prevValue=nope", "value=x"),
    put("prevIndex=0 is a plain set", f"{K}/c2?prevIndex=0", "value=y"),
    put("CAS by value on a missing key: 404", f"{K}/nokey?prevValue=a", "value=b"),
    put("CAS by index on a missing key: 404", f"{K}/nokey?prevIndex=<base+5>", "value=b"),
    delete("delete a missing key: 404", f"{K}/nokey"),
    put("a key to compare-and-delete", f"{K}/cad1", "value=x"),
    delete("CAD with a wrong value: 412", f"{K}/cad1?prevValue=y"),
    delete("CAD with a wrong index: 412", f"{K}/cad1?prevIndex=<base+1>"),
    delete("CAD with wrong value and index", f"{K}/cad1?prevIndex=<base+1>&prevValue=y"),
    delete("CAD by value", f"{K}/cad1?prevValue=x"),
    put("another key to compare-and-delete", f"{K}/cad2", "value=x", capture=keep("cad2")),
    delete("CAD by index", f"{K}/cad2?prevIndex=<cad2>"),
    delete("CAD on a missing key: 404", f"{K}/cad2?prevValue=x"),
    put("a key to delete with a body", f"{K}/cad3", "value=x"),
    delete("DELETE ignores its form body: a plain delete", f"{K}/cad3", "prevValue=wrong"),
    delete("delete a file", f"{K}/foo"),
    get("the deleted key is gone", f"{K}/foo"),
    put("noValueOnSuccess on set", f"{K}/nv?noValueOnSuccess=true", "value=a"),
    put("noValueOnSuccess on create", f"{K}/nv2?noValueOnSuccess=true&prevExist=false", "value=a"),
    put("noValueOnSuccess on update", f"{K}/nv?noValueOnSuccess=true&prevExist=true", "value=b"),
    put("noValueOnSuccess on CAS", f"{K}/nv?noValueOnSuccess=true&prevValue=b", "value=c"),
    post("noValueOnSuccess on POST", f"{K}/nvq?noValueOnSuccess=true", "value=c"),
    put("noValueOnSuccess on a failure", f"{K}/nv2?noValueOnSuccess=true&prevExist=false", "value=a"),
    delete("noValueOnSuccess is ignored on delete", f"{K}/nv?noValueOnSuccess=true"),
    get("quorum GET", f"{K}/c1?quorum=true"),
    get("quorum GET of a missing key", f"{K}/nope?quorum=true"),
    get("quorum=true with wait=true is a plain quorum GET", f"{K}/c1?quorum=true&wait=true"),
    get("wait=false is a plain GET", f"{K}/c1?wait=false"),
    head("HEAD with quorum", f"{K}/c1?quorum=true"),
))

DIRS = Group("directories and in-order keys", (
    put("mkdir: 201 set dir", f"{K}/d1", "dir=true"),
    put("mkdir again: 403/102", f"{K}/d1", "dir=true"),
    put("set a value on a dir: 403/102", f"{K}/d1", "value=x"),
    put("update a dir with a value: 403/102", f"{K}/d1", "value=x&prevExist=true"),
    put("create an existing dir: 412/105", f"{K}/d1?prevExist=false", "dir=true"),
    put("dir=true ignores the value", f"{K}/d2", "dir=true&value=x"),
    put("a file in a dir", f"{K}/d1/k1", "value=a"),
    put("a key below a file: 400/104", f"{K}/d1/k1/sub", "value=x"),
    get("get below a file: 400/104", f"{K}/d1/k1/sub"),
    post("POST below a file: 400/104", f"{K}/d1/k1/sub", "value=x"),
    get("get a dir", f"{K}/d1"),
    put("intermediate dirs are created", f"{K}/d3/a/b/c", "value=deep"),
    get("recursive sorted listing", f"{K}/d3?recursive=true&sorted=true"),
    get("non-recursive listing of nested dirs", f"{K}/d3"),
    get("get an intermediate dir", f"{K}/d3/a/b"),
    put("children: z", f"{K}/d4/z", "value=1"),
    put("children: a", f"{K}/d4/a", "value=2"),
    put("children: m", f"{K}/d4/m", "value=3"),
    put("children: sub/x", f"{K}/d4/sub/x", "value=4"),
    put("children: B (upper case sorts first)", f"{K}/d4/B", "value=5"),
    get("sorted listing", f"{K}/d4?sorted=true"),
    get("sorted recursive listing", f"{K}/d4?sorted=true&recursive=true"),
    get("unsorted listing (compared as a set)", f"{K}/d4", unordered=True),
    get("unsorted recursive listing (compared as a set)", f"{K}/d4?recursive=true", unordered=True),
    head("HEAD of a dir", f"{K}/d4?recursive=true&sorted=true"),
    delete("delete a dir without dir=true: 403/102", f"{K}/d1"),
    delete("delete a non-empty dir with dir=true: 403/108", f"{K}/d1?dir=true"),
    delete("dir=true on a file: a plain delete", f"{K}/d1/k1?dir=true"),
    delete("delete an empty dir", f"{K}/d1?dir=true"),
    delete("CAD by index on a dir: 403/102", f"{K}/d2?prevIndex=<base+5>"),
    delete("CAD by value on a dir: 403/102", f"{K}/d2?prevValue=x"),
    put("CAS by index on a dir: 403/102", f"{K}/d2?prevIndex=<base+1>", "value=x"),
    put("CAS by value on a dir: 403/102", f"{K}/d2?prevValue=x", "value=y"),
    delete("recursive delete of a dir", f"{K}/d4?recursive=true"),
    delete("recursive delete with dir=false", f"{K}/d3?recursive=true&dir=false"),
    delete("delete a missing dir: 404", f"{K}/d3?dir=true"),
    put("a file", f"{K}/prec", "value=f"),
    put("dir=true over a file replaces it", f"{K}/prec", "dir=true"),
    put("another file", f"{K}/fileq", "value=x"),
    put("dir=true&prevExist=true on a file empties it", f"{K}/fileq", "dir=true&prevExist=true"),
    get("the file's value is now empty", f"{K}/fileq"),
    post("POST makes an in-order key", f"{K}/queue", "value=job1", capture=keep("qkey", "node.key")),
    post("a second in-order key", f"{K}/queue", "value=job2"),
    post("POST ignores prevExist", f"{K}/queue?prevExist=true", "value=job3"),
    post("POST ignores prevValue", f"{K}/queue?prevValue=nope", "value=job4"),
    post("an in-order dir", f"{K}/queue", "dir=true"),
    get("the queue, sorted", f"{K}/queue?sorted=true"),
    get("an in-order key read directly", K + "<qkey>"),
    post("POST onto a file: 400/104", f"{K}/fileq", "value=x"),
    post("POST to the root", f"{K}/", "value=inroot"),
    post("POST to the root without a slash", K, "value=inroot2"),
    post("POST a new queue (intermediate dirs)", f"{K}/q2/sub", "value=x"),
    get("the queue's dirs", f"{K}/q2?recursive=true&sorted=true"),
))

# ---- parameters and their validation (§1.4) -----------------------------------------------------

PARSE_BOOL_TRUE = ("1", "t", "T", "TRUE", "true", "True")
PARSE_BOOL_FALSE = ("0", "f", "F", "FALSE", "false", "False")
NOT_BOOLS = ("yes", "on", "tRUE", "%20true", "2", "")

VALIDATION = Group("parameter validation", (
    put("a dir to read", f"{K}/val/a", "value=1"),
    put("a nested child", f"{K}/val/s/b", "value=2"),
    *(get(f"recursive={v} is true", f"{K}/val?recursive={v}&sorted=true") for v in PARSE_BOOL_TRUE),
    *(get(f"recursive={v} is false", f"{K}/val?recursive={v}&sorted=true") for v in PARSE_BOOL_FALSE),
    *(get(f"recursive={v or 'empty'}: 400/209", f"{K}/val?recursive={v}") for v in NOT_BOOLS),
    get("sorted=x: 209", f"{K}/val?sorted=x"),
    get("wait=2: 209", f"{K}/val?wait=2"),
    get("dir=y on GET: 209", f"{K}/val?dir=y"),
    put("dir=yes on PUT: 209", f"{K}/val/b", "dir=yes"),
    get("quorum=no: 209", f"{K}/val?quorum=no"),
    get("stream=on: 209", f"{K}/val?wait=true&stream=on"),
    put("prevExist=yes: 209", f"{K}/val/b", "value=x&prevExist=yes"),
    put("refresh=yes: 209", f"{K}/val/b", "ttl=5&refresh=yes"),
    put("noValueOnSuccess=yes: 209", f"{K}/val/b", "value=x&noValueOnSuccess=yes"),
    delete("recursive=maybe on DELETE: 209", f"{K}/val?recursive=maybe"),
    head("recursive=maybe on HEAD: 400, no body", f"{K}/val?recursive=maybe"),
    put("ttl=abc: 202", f"{K}/val/b", "value=x&ttl=abc"),
    put("ttl=-1: 202", f"{K}/val/b", "value=x&ttl=-1"),
    put("ttl=1.5: 202", f"{K}/val/b", "value=x&ttl=1.5"),
    put("ttl=+5: 202", f"{K}/val/b", "value=x&ttl=%2B5"),
    put("ttl overflowing uint64: 202", f"{K}/val/b", "value=x&ttl=18446744073709551616"),
    put("ttl= (empty) means no TTL", f"{K}/val/b", "value=x&ttl="),
    put("prevIndex=-1: 203", f"{K}/val/b?prevIndex=-1", "value=x"),
    put("prevIndex=abc: 203", f"{K}/val/b?prevIndex=abc", "value=x"),
    put("prevIndex=1.0: 203", f"{K}/val/b?prevIndex=1.0", "value=x"),
    delete("prevIndex=abc on DELETE: 203", f"{K}/val/b?prevIndex=abc"),
    get("waitIndex=abc: 203", f"{K}/val?wait=true&waitIndex=abc"),
    get("waitIndex=-1: 203", f"{K}/val?wait=true&waitIndex=-1"),
    get("waitIndex=abc without wait: 203", f"{K}/val?waitIndex=abc"),
    put("prevValue= (empty): 400/201", f"{K}/val/b", "value=x&prevValue="),
    delete("prevValue= on DELETE: 400/201", f"{K}/val/b?prevValue="),
    put("wait=true on PUT: 209", f"{K}/val/b?wait=true", "value=x"),
    post("wait=true on POST: 209", f"{K}/val?wait=true", "value=x"),
    delete("wait=true on DELETE: 209", f"{K}/val/b?wait=true"),
    head("wait=true on HEAD: 400", f"{K}/val?wait=true"),
    put("refresh with a value: 400/211", f"{K}/val/b", "value=x&ttl=5&refresh=true"),
    put("refresh without a ttl: 400/212", f"{K}/val/b", "refresh=true"),
    put("refresh with an empty ttl: 400/212", f"{K}/val/b", "refresh=true&ttl="),
    # Two bad parameters: the error names the one the parser checks first.
    put("order: prevIndex before waitIndex", f"{K}/val/o?prevIndex=x&waitIndex=y", "value=1"),
    put("order: prevIndex before waitIndex (reversed)", f"{K}/val/o?waitIndex=y&prevIndex=x", "value=1"),
    get("order: waitIndex before recursive", f"{K}/val?recursive=bad&waitIndex=y"),
    get("order: recursive before sorted", f"{K}/val?sorted=bad&recursive=bad"),
    get("order: sorted before wait", f"{K}/val?wait=bad&sorted=bad"),
    get("order: wait before dir", f"{K}/val?dir=bad&wait=bad"),
    get("order: dir before quorum", f"{K}/val?quorum=bad&dir=bad"),
    get("order: quorum before stream", f"{K}/val?stream=bad&quorum=bad"),
    put("order: stream before wait-on-PUT", f"{K}/val/o?wait=true&stream=bad", "value=1"),
    put("order: wait-on-PUT before empty prevValue", f"{K}/val/o?wait=true&prevValue=", "value=1"),
    put("order: empty prevValue before noValueOnSuccess", f"{K}/val/o?noValueOnSuccess=bad&prevValue=",
        "value=1"),
    put("order: noValueOnSuccess before ttl", f"{K}/val/o?ttl=bad&noValueOnSuccess=bad", "value=1"),
    put("order: ttl before prevExist", f"{K}/val/o?prevExist=bad&ttl=bad", "value=1"),
    put("order: prevExist before refresh", f"{K}/val/o?refresh=bad&prevExist=bad", "value=1"),
    put("order: prevIndex before refresh", f"{K}/val/o?refresh=bad&prevIndex=bad", "value=1"),
    put("order: refresh with value and no ttl", f"{K}/val/o?refresh=true", "value=1"),
    put("order: bad ttl before refresh rules", f"{K}/val/o?refresh=true&ttl=bad", "value=1"),
    put("order: empty prevValue before bad ttl", f"{K}/val/o?ttl=bad&prevValue=", "value=1"),
    put("order: waitIndex on PUT before wait-on-PUT", f"{K}/val/o?wait=true&waitIndex=bad", "value=1"),
    put("order: bad bool before a missing key", f"{K}/val/none/x?prevExist=true&dir=bad", "value=1"),
    put("order: validation before root read-only", f"{K}/?ttl=bad", "value=1"),
    put("unknown parameters are ignored", f"{K}/val/o?foo=bar&Value=ignored", "value=1&bogus=x"),
    get("parameter names are case-sensitive", f"{K}/val?Recursive=bad&SORTED=bad&sorted=true"),
    get("the dir after all that", f"{K}/val?recursive=true&sorted=true"),
))

# ---- form bodies and encodings (§0) --------------------------------------------------------------

FORMS = Group("form bodies and encodings", (
    put("body value over query value", f"{K}/f/a?value=fromquery", "value=frombody"),
    put("query value when the body has none", f"{K}/f/b?value=fromquery", "ttl="),
    put("repeated query names: the first wins", f"{K}/f/c?value=one&value=two"),
    put("repeated body names: the first wins", f"{K}/f/d", "value=one&value=two"),
    put("+ in the query is a space", f"{K}/f/e?value=a+b"),
    put("+ in the body is a space, %2B a plus", f"{K}/f/f", "value=a+b%2Bc"),
    put("HTML characters, U+2028 and invalid UTF-8", f"{K}/f/g", "value=%3Ca%3E%26%E2%82%AC%E2%80%A8%FF"),
    put("control characters, quotes and backslashes", f"{K}/f/h", "value=%01%09%0A%0D%22%5C%7F%1F"),
    put("a JSON body is ignored: value empty", f"{K}/f/i", '{"value":"x"}', headers=JSON),
    put("a body without Content-Type is ignored", f"{K}/f/j", "value=x", form=False),
    put("form Content-Type with a charset", f"{K}/f/k", "value=x",
        headers=(("Content-Type", "application/x-www-form-urlencoded; charset=utf-8"),)),
    put("a text/plain body is ignored", f"{K}/f/l", "value=x", headers=(("Content-Type", "text/plain"),)),
    put("a multipart body is ignored", f"{K}/f/m",
        '--XX\r\nContent-Disposition: form-data; name="value"\r\n\r\nx\r\n--XX--\r\n',
        headers=(("Content-Type", "multipart/form-data; boundary=XX"),)),
    post("POST with a form body", f"{K}/f/q", "value=posted"),
    put("an empty body ttl overrides a bad query ttl", f"{K}/f/n?ttl=abc", "ttl=&value=x"),
    put("a bad ttl in the body", f"{K}/f/o", "value=x&ttl=abc"),
    put("wait=true in a PUT body: 209", f"{K}/f/o", "value=x&wait=true"),
    req("GET ignores a form body", "GET", f"{K}/f/a", "recursive=bad"),
    delete("DELETE ignores a form body with a bad bool", f"{K}/f/b", "recursive=bad"),
    put("a malformed escape in the body", f"{K}/f/p", "value=%zz"),
    put("a malformed escape in the query", f"{K}/f/p?value=%zz"),
    get("a malformed escape in a GET query", f"{K}/f/a?recursive=%zz"),
    put("a semicolon in the query", f"{K}/f/p?value=a;b"),
    put("a key with %20", f"{K}/f/sp%20ace", "value=x"),
    put("a key with %2F", f"{K}/f/enc%2Fslash", "value=x"),
    get("the %2F key read as a path", f"{K}/f/enc/slash"),
    put("a key with UTF-8", f"{K}/f/%E2%82%AC", "value=euro"),
    put("a key with < and &", f"{K}/f/%3Ca%26b%3E", "value=html"),
    put("a key with + (not a space in a path)", f"{K}/f/a+b", "value=plus"),
    put("a 3000-byte value", f"{K}/f/big", "value=" + "x" * 3000),
    get("a 3000-byte value is read back", f"{K}/f/big"),
    head("HEAD of a large value", f"{K}/f/big"),
    put("a chunked request body", f"{K}/f/chunked", "d\r\nvalue=chunked\r\n0\r\n\r\n",
        headers=(*FORM, ("Transfer-Encoding", "chunked")), capture=()),
    get("all of them, sorted", f"{K}/f?recursive=true&sorted=true"),
))

# ---- root, hidden keys, path normalisation (§1.6, §0) ------------------------------------------------

ROOT_HIDDEN = Group("root, hidden keys and paths", (
    put("PUT on the root: 400/107", f"{K}/", "value=x"),
    put("PUT on /v2/keys: 400/107", K, "value=x"),
    put("create on the root", f"{K}/?prevExist=false", "value=x"),
    put("update on the root", f"{K}/?prevExist=true", "value=x"),
    put("CAS on the root", f"{K}/?prevValue=a", "value=x"),
    put("mkdir on the root", f"{K}/", "dir=true"),
    delete("DELETE the root", f"{K}/"),
    delete("DELETE the root recursively", f"{K}/?recursive=true"),
    delete("DELETE the root with dir=true", f"{K}/?dir=true"),
    delete("CAD on the root: 403/102 without a cause", f"{K}/?prevValue=x"),
    delete("CAD by index on the root", f"{K}/?prevIndex=<base+1>"),
    put("a hidden child", f"{K}/h/_h", "value=secret"),
    put("a visible child", f"{K}/h/v", "value=seen"),
    put("a key below a hidden dir", f"{K}/h/sub/_x/y", "value=deep"),
    put("a hidden dir", f"{K}/h/_hd", "dir=true"),
    get("hidden children are not listed", f"{K}/h?sorted=true"),
    get("nor listed recursively", f"{K}/h?recursive=true&sorted=true"),
    get("a hidden key read directly", f"{K}/h/_h"),
    get("a hidden dir read directly", f"{K}/h/sub/_x?recursive=true"),
    delete("delete the visible child", f"{K}/h/v"),
    get("only hidden children left: none listed", f"{K}/h?sorted=true"),
    delete("a dir with only hidden children is not empty: 403/108", f"{K}/h/sub?dir=true"),
    put("a hidden key at the root", f"{K}/_hiddenroot", "value=x"),
    get("trailing slash: the same key", f"{K}/h/_h/"),
    put("PUT with a trailing slash", f"{K}/ts/", "value=x"),
    get("read without the slash", f"{K}/ts"),
    get("// is redirected: 301", f"{K}//ts"),
    get("/./ is redirected with the query", f"{K}/./ts?x=1&y=2"),
    get("/../ is redirected", f"{K}/a/../ts"),
    get("a trailing /.. is redirected", f"{K}/ts/.."),
    get("a leading // is redirected", "//v2/keys/ts"),
    put("PUT // is redirected, query kept, no body", f"{K}//ts?x=1", "value=y"),
    head("HEAD // is redirected", f"{K}//ts"),
    delete("DELETE /../ is redirected", f"{K}/x/../ts"),
    post("POST // is redirected", f"{K}//q", "value=y"),
    req("PATCH // is redirected", "PATCH", f"{K}//ts"),
    get("encoded dots %2E%2E", f"{K}/%2E%2E/ts"),
    get("encoded %2F%2F", f"{K}/a%2F%2Fb"),
    get("the value was not changed by redirected writes", f"{K}/ts"),
    get("the root listing skips hidden keys", f"{K}/?sorted=true"),
    get("the root listing, recursive", f"{K}/?sorted=true&recursive=true"),
))

# ---- TTLs, refresh, dir TTLs (§1.4, §1.6) ------------------------------------------------------------

TTL = Group("ttl and refresh", (
    put("set with ttl: expiration and ttl", f"{K}/t/t1", "value=a&ttl=5"),
    get("get a key with a ttl", f"{K}/t/t1"),
    put("update without ttl makes the key permanent", f"{K}/t/t1", "value=b&prevExist=true"),
    get("no expiration any more", f"{K}/t/t1"),
    put("a ttl key", f"{K}/t/t2", "value=a&ttl=100"),
    put("set with an empty ttl clears it", f"{K}/t/t2", "value=c&ttl="),
    get("permanent again", f"{K}/t/t2"),
    put("another ttl key", f"{K}/t/t3", "value=a&ttl=100"),
    put("CAS without ttl clears it", f"{K}/t/t3", "value=b&prevValue=a"),
    put("CAS with a ttl", f"{K}/t/t3", "value=c&prevValue=b&ttl=100"),
    put("update with a ttl", f"{K}/t/t3", "value=d&prevExist=true&ttl=200"),
    put("a key to refresh", f"{K}/t/t4", "value=a&ttl=5"),
    put("refresh with prevExist: update, value kept", f"{K}/t/t4", "ttl=50&refresh=true&prevExist=true"),
    get("the refreshed key", f"{K}/t/t4"),
    put("refresh without prevExist: set, recreated", f"{K}/t/t4", "ttl=60&refresh=true"),
    put("refresh with prevValue: CAS", f"{K}/t/t4", "ttl=70&refresh=true&prevValue=a"),
    put("refresh with a wrong prevValue: 412", f"{K}/t/t4", "ttl=70&refresh=true&prevValue=b"),
    put("refresh a missing key: 404", f"{K}/t/none", "ttl=5&refresh=true"),
    put("refresh a missing key with prevExist: 404", f"{K}/t/none", "ttl=5&refresh=true&prevExist=true"),
    put("create with a ttl", f"{K}/t/c?prevExist=false", "value=x&ttl=100"),
    post("an in-order key with a ttl", f"{K}/t/q", "value=x&ttl=100"),
    post("an in-order dir with a ttl", f"{K}/t/q", "dir=true&ttl=100"),
    put("a dir with a ttl", f"{K}/t/dttl", "dir=true&ttl=30"),
    put("a child of the ttl dir", f"{K}/t/dttl/c", "value=1"),
    put("change the dir's ttl: update", f"{K}/t/dttl", "dir=true&ttl=31&prevExist=true"),
    get("the dir keeps its old modifiedIndex", f"{K}/t/dttl"),
    put("remove the dir's ttl", f"{K}/t/dttl", "dir=true&prevExist=true"),
    get("the dir is permanent", f"{K}/t/dttl?recursive=true"),
    get("everything, sorted", f"{K}/t?recursive=true&sorted=true"),
    delete("clean up", f"{K}/t?recursive=true"),
), ttl=True)

KEYS_GROUPS = [BASICS, DIRS, VALIDATION, FORMS, ROOT_HIDDEN, TTL]

# ---- watches (§1.8) --------------------------------------------------------------------------------------

WATCH_LIVE = Group("live watches", (
    put("a key to watch", f"{K}/w/k", "value=0"),
    Watch("watch a key", "k", f"{K}/w/k?wait=true"),
    put("write it", f"{K}/w/k", "value=1"),
    Event("the set event, then the response ends", "k"),
    Watch("a recursive watch on a dir", "r", f"{K}/w?wait=true&recursive=true"),
    put("a hidden child (skipped)", f"{K}/w/_hidden", "value=h"),
    put("a key below a hidden dir (skipped)", f"{K}/w/sub/_x/y", "value=h"),
    put("a visible child", f"{K}/w/sub/v", "value=v"),
    Event("the recursive watcher sees only the visible child", "r"),
    Watch("a non-recursive watch on a dir", "nr", f"{K}/w/sub?wait=true"),
    put("a child is written (not seen)", f"{K}/w/sub/v", "value=v2"),
    put("the dir itself is updated", f"{K}/w/sub", "dir=true&prevExist=true"),
    Event("the watcher sees the dir's own update", "nr"),
    Watch("a watch on a hidden key itself", "hk", f"{K}/w/_hidden?wait=true"),
    put("write the hidden key", f"{K}/w/_hidden", "value=h2"),
    Event("the exact-key watcher sees it", "hk"),
    Watch("watch a key that does not exist yet", "new", f"{K}/w/new?wait=true"),
    put("create it", f"{K}/w/new?prevExist=false", "value=n"),
    Event("the create event", "new"),
    Watch("watch for a CAS", "cas", f"{K}/w/k?wait=true"),
    put("CAS", f"{K}/w/k?prevValue=1", "value=2"),
    Event("the compareAndSwap event", "cas"),
    Watch("watch for a CAD", "cad", f"{K}/w/k?wait=true&waitIndex=0"),
    delete("CAD", f"{K}/w/k?prevValue=2"),
    Event("the compareAndDelete event", "cad"),
    Watch("watch for an update", "upd", f"{K}/w/new?wait=true"),
    put("update", f"{K}/w/new?prevExist=true", "value=u"),
    Event("the update event", "upd"),
    Watch("a recursive watch on a queue", "q", f"{K}/w/q?wait=true&recursive=true"),
    post("POST into it", f"{K}/w/q", "value=job"),
    Event("the in-order create event", "q"),
    Watch("a recursive watch on the root", "root", f"{K}/?wait=true&recursive=true"),
    put("any write", f"{K}/w/any", "value=1"),
    Event("the root watcher sees it", "root"),
    Watch("a non-recursive watch on the root", "root2", f"{K}?wait=true"),
    put("a write at the root", f"{K}/rootkey", "value=1"),
    post("a POST at the root (a new child, not the root)", f"{K}/", "value=1"),
    delete("delete the root key", f"{K}/rootkey"),
    Quiet("the non-recursive root watcher saw none of them", "root2"),
    Close("root2"),
    Watch("a watch in the future: waitIndex = index+3", "fut", f"{K}/w/f?wait=true&waitIndex=<index+3>"),
    put("first write (skipped)", f"{K}/w/f", "value=1"),
    put("second write (skipped)", f"{K}/w/f", "value=2"),
    put("third write", f"{K}/w/f", "value=3"),
    Event("the event at the waited index", "fut"),
    Watch("watch a key below a dir", "child", f"{K}/w/d/a/b?wait=true"),
    Watch("watch the middle dir, not recursive", "mid", f"{K}/w/d/a?wait=true"),
    put("make the deep key", f"{K}/w/d/a/b", "value=1"),
    Event("the child watcher sees the set", "child"),
    Quiet("the middle dir watcher does not see a child's write", "mid"),
    delete("delete the top dir", f"{K}/w/d?recursive=true"),
    Event("the middle dir watcher gets the dir's delete", "mid"),
))

WATCH_DIR_DELETE = Group("dir delete notifies watchers below", (
    put("a deep key", f"{K}/wd/a/b", "value=1"),
    Watch("watch the deep key", "cw", f"{K}/wd/a/b?wait=true"),
    Watch("watch the middle dir", "pw", f"{K}/wd/a?wait=true"),
    Watch("a recursive watch above", "rw", f"{K}/wd?wait=true&recursive=true"),
    Watch("a watch on a sibling (not removed)", "sib", f"{K}/wdx?wait=true"),
    delete("delete the top dir recursively", f"{K}/wd?recursive=true"),
    Event("the deep key's watcher gets the dir's delete", "cw"),
    Event("the middle dir's watcher gets the dir's delete", "pw"),
    Event("the recursive watcher gets it too", "rw"),
    Quiet("the sibling's watcher is not told", "sib"),
    put("a file", f"{K}/wf", "value=1"),
    Watch("a watch on a key below the file", "bf", f"{K}/wf/x?wait=true"),
    delete("delete the file", f"{K}/wf"),
    Quiet("the watcher below the file is not told", "bf"),
    Close("bf"),
    Close("sib"),
))

WATCH_HISTORY = Group("watch history", (
    put("a", f"{K}/h/a", "value=1", capture=keep("ha")),
    put("b", f"{K}/h/b", "value=1"),
    put("a again", f"{K}/h/a", "value=2"),
    Watch("waitIndex at an old event: answered at once", "h1", f"{K}/h/a?wait=true&waitIndex=<ha>"),
    Event("the event at that index", "h1"),
    Watch("history skips events of other keys", "h2", f"{K}/h/a?wait=true&waitIndex=<ha+1>"),
    Event("the next event of the key", "h2"),
    Watch("recursive history", "h3", f"{K}/h?wait=true&recursive=true&waitIndex=<ha+1>"),
    Event("the first event below the dir", "h3"),
    put("a hidden key", f"{K}/h/_hid", "value=x", capture=keep("hid")),
    Watch("history scans do not skip hidden keys", "h4", f"{K}/h?wait=true&recursive=true&waitIndex=<hid>"),
    Event("the hidden key's event", "h4"),
    Watch("history on the root, recursive", "h5", f"{K}/?wait=true&recursive=true&waitIndex=<ha>"),
    Event("the first event at or after the index", "h5"),
    Watch("waitIndex = current index", "h6", f"{K}/h?wait=true&recursive=true&waitIndex=<index>"),
    Event("the last event", "h6"),
    put("a dir with a key", f"{K}/h/pb/x", "value=1"),
    put("a sibling whose name extends the dir's", f"{K}/h/pbx", "value=1"),
    delete("delete the dir", f"{K}/h/pb?recursive=true", capture=keep("pbdel")),
    Watch("history: a dir delete matches a watch on a longer name", "h7",
          f"{K}/h/pbx?wait=true&waitIndex=<pbdel>"),
    Event("the matched event", "h7"),
    Watch("history: the deleted dir's child", "h8", f"{K}/h/pb/x?wait=true&waitIndex=<pbdel>"),
    Event("the dir's delete event", "h8"),
    put("a key to refresh", f"{K}/h/rf", "value=a&ttl=100"),
    put("refresh it", f"{K}/h/rf", "ttl=100&refresh=true&prevExist=true", capture=keep("rfi")),
    put("update it (permanent again)", f"{K}/h/rf", "value=b&prevExist=true"),
    Watch("history skips refresh events", "h9", f"{K}/h/rf?wait=true&waitIndex=<rfi>"),
    Event("the update after the refresh", "h9"),
    Watch("stream with a history index: one event", "hs", f"{K}/h/a?wait=true&stream=true&waitIndex=<ha>"),
    Event("the one history event", "hs", last=False),
    Close("hs"),
    get("a watch on a key with a history event is answered at once", f"{K}/h/b?wait=true&waitIndex=<ha>"),
), ttl=True)

WATCH_EXPIRE = Group("expire and refresh watches", (
    # The watch is registered before the write: whether the expiry (every 500 ms) fell between
    # the write and a watch opened after it would decide that watch's X-Etcd-Index.
    put("a key beside it", f"{K}/e/a", "value=a"),
    Watch("watch for the expiry of the next write", "z", f"{K}/e/z?wait=true&waitIndex=<index+2>"),
    put("ttl=0: expires at once", f"{K}/e/z", "value=z&ttl=0"),
    Event("the expire event", "z", timeout=4.0),
    put("a key with ttl=1", f"{K}/e/one", "value=1&ttl=1"),
    Watch("watch it", "one", f"{K}/e/one?wait=true"),
    Event("the expire event with prevNode", "one", timeout=4.0),
    get("it is gone", f"{K}/e/one"),
    put("a dir with ttl=1", f"{K}/e/d", "dir=true&ttl=1"),
    put("a child in it", f"{K}/e/d/c", "value=c"),
    Watch("watch the child", "dc", f"{K}/e/d/c?wait=true"),
    Watch("watch recursively above", "de", f"{K}/e?wait=true&recursive=true"),
    Event("the child's watcher gets the dir's expire", "dc", timeout=4.0),
    Event("the recursive watcher gets the dir's expire", "de"),
    get("the child is gone", f"{K}/e/d/c"),
    put("a key with a long ttl", f"{K}/e/rf", "value=a&ttl=100"),
    Watch("watch it", "rf", f"{K}/e/rf?wait=true"),
    put("refresh it (not notified)", f"{K}/e/rf", "ttl=100&refresh=true&prevExist=true"),
    put("update it (permanent)", f"{K}/e/rf", "value=b&prevExist=true"),
    Event("the watcher sees the update, not the refresh", "rf"),
    delete("clean up", f"{K}/e?recursive=true"),
), ttl=True)

WATCH_STREAM = Group("stream watches", (
    put("a key", f"{K}/s/k", "value=0"),
    Watch("a stream watch on the key", "s", f"{K}/s/k?wait=true&stream=true"),
    put("write 1", f"{K}/s/k", "value=1"),
    Event("event 1", "s", last=False),
    put("write 2", f"{K}/s/k", "value=2"),
    Event("event 2", "s", last=False),
    delete("delete the key", f"{K}/s/k"),
    Event("the delete event", "s", last=False),
    Event("the delete event again (etcd quirk)", "s", last=False),
    put("recreate", f"{K}/s/k", "value=3"),
    Event("the event after the double delete", "s", last=False),
    Close("s"),
    Watch("a recursive stream watch", "rs", f"{K}/s?wait=true&recursive=true&stream=true"),
    put("a child", f"{K}/s/a", "value=1"),
    Event("its event", "rs", last=False),
    post("an in-order child", f"{K}/s/q", "value=1"),
    Event("its event", "rs", last=False),
    delete("delete a child", f"{K}/s/a"),
    Event("the delete event", "rs", last=False),
    Close("rs"),
))

WATCH_WINDOW = Group("the 1000-event window", (
    Bulk("1100 writes", 1100, "PUT", f"{K}/win/k", "value=<i>"),
    get("after the writes", f"{K}/win/k"),
    Watch("waitIndex older than the window: 401", "old", f"{K}/win/k?wait=true&waitIndex=<index-1000>"),
    Watch("the oldest index in the window", "edge", f"{K}/win/k?wait=true&waitIndex=<index-999>"),
    Event("its event", "edge"),
    Watch("waitIndex far in the past: 401", "older", f"{K}/win/k?wait=true&waitIndex=<base+1>"),
    Watch("recursive, too old: 401", "rold", f"{K}/?wait=true&recursive=true&waitIndex=<index-1000>"),
    Watch("stream, too old: 401", "sold", f"{K}/win/k?wait=true&stream=true&waitIndex=<index-1000>"),
    get("a too-old waitIndex with quorum: a plain GET",
        f"{K}/win/k?wait=true&quorum=true&waitIndex=<base+1>"),
))

WATCH_GROUPS = [WATCH_LIVE, WATCH_DIR_DELETE, WATCH_HISTORY, WATCH_EXPIRE, WATCH_STREAM, WATCH_WINDOW]

# ---- other endpoints and generic HTTP (§0, §2) ------------------------------------------------

CORS_REQUEST = (("Origin", "http://example.com"), ("Access-Control-Request-Method", "PUT"),
                ("Access-Control-Request-Headers", "content-type"))

GENERIC = Group("generic HTTP", (
    get("/ is unknown: 404", "/"),
    get("/v2/nothing: 404", "/v2/nothing"),
    get("/v2/keysfoo: 404", "/v2/keysfoo"),
    get("/v2: 404", "/v2"),
    get("/v2/: 404", "/v2/"),
    put("PUT to an unknown path: 404", "/v2/nothing", "value=x"),
    head("HEAD of an unknown path", "/v2/nothing"),
    req("OPTIONS on a key", "OPTIONS", f"{K}/foo"),
    req("OPTIONS on /version", "OPTIONS", "/version"),
    req("OPTIONS on an unknown path", "OPTIONS", "/nothing"),
    req("OPTIONS on /v2/members", "OPTIONS", "/v2/members"),
    req("a CORS preflight", "OPTIONS", f"{K}/foo", headers=CORS_REQUEST),
    get("a request with an Origin", f"{K}/", headers=(("Origin", "http://example.com"),)),
    req("PATCH on keys: 405 with Allow", "PATCH", f"{K}/x"),
    req("an unknown method on keys: 405", "FOO", f"{K}/x"),
    req("PATCH on /version: 405", "PATCH", "/version"),
    post("POST on /version: 405", "/version", "x=1"),
    put("PUT on /health: 405", "/health", "x=1"),
    delete("DELETE on /v2/machines: 405", "/v2/machines"),
    post("POST on /v2/stats/self: 405", "/v2/stats/self", "x=1"),
    req("PUT on /v2/stats/store: 405", "PUT", "/v2/stats/store"),
    delete("DELETE on /v2/members: 405", "/v2/members"),
    req("PATCH on a member: 405", "PATCH", "/v2/members/1234"),
    head("HEAD /version", "/version"),
    head("HEAD /health", "/health"),
    head("HEAD /v2/machines", "/v2/machines"),
    head("HEAD /v2/members", "/v2/members"),
    head("HEAD /v2/stats/self", "/v2/stats/self"),
    raw("a bad escape in the path", "GET", "GET /v2/keys/%zz HTTP/1.1\r\nHost: <host>\r\n\r\n"),
    raw("no Host header", "GET", "GET /v2/keys/ HTTP/1.1\r\n\r\n"),
    raw("an HTTP/1.0 request", "GET", "GET /version HTTP/1.0\r\n\r\n"),
    raw("an absolute-form target", "GET", "GET http://<host>/v2/keys/ HTTP/1.1\r\nHost: <host>\r\n\r\n"),
    get("a cleaned path on another endpoint", "/v2//machines"),
    get("a cleaned path with dots", "/v2/stats/../machines?x=1"),
))

ENDPOINTS = Group("endpoints", (
    get("/version", "/version"),
    get("/version with a query", "/version?x=1"),
    get("/health", "/health"),
    get("/health?exclude=NOSPACE", "/health?exclude=NOSPACE"),
    get("/v2/machines", "/v2/machines"),
    get("/v2/members", "/v2/members"),
    get("/v2/members/", "/v2/members/"),
    get("/v2/members/leader", "/v2/members/leader"),
    get("a member by id: 404 Not found", "/v2/members/<member_id>"),
    get("an unknown member path: 404", "/v2/members/xyz"),
    get("/v2/stats/self", "/v2/stats/self"),
    get("/v2/stats/leader", "/v2/stats/leader"),
    get("/v2/stats/store", "/v2/stats/store"),
    get("/v2/stats/: 404", "/v2/stats/"),
    get("/v2/stats/nothing: 404", "/v2/stats/nothing"),
    post("add a member with a form body: 415", "/v2/members", "peerURLs=http://127.0.0.1:1"),
    post("add a member without Content-Type: 415", "/v2/members", '{"peerURLs":["http://127.0.0.1:1"]}',
         form=False),
    post("add a member with bad JSON: 400", "/v2/members", "{", headers=JSON),
    post("add a member with a bad URL: 400", "/v2/members", '{"peerURLs":["not a url"]}', headers=JSON),
    post("add a member with an ftp URL: 400", "/v2/members", '{"peerURLs":["ftp://127.0.0.1:1"]}',
         headers=JSON),
    post("add a member with no peerURLs: 400", "/v2/members", '{"peerURLs":[]}', headers=JSON),
    post("add a member with this member's peer URL: 409", "/v2/members", '{"peerURLs":["<peer_url>"]}',
         headers=JSON),
    put("update an unknown member: 404", "/v2/members/1234", '{"peerURLs":["http://127.0.0.1:1"]}',
        headers=JSON),
    put("update a non-hex member id: 404", "/v2/members/xyz", '{"peerURLs":["http://127.0.0.1:1"]}',
        headers=JSON),
    put("update with a form body: 415", "/v2/members/<member_id>", "peerURLs=http://127.0.0.1:1"),
    put("update with bad JSON: 400", "/v2/members/<member_id>", "[", headers=JSON),
    put("update a member to its own peer URL: 204", "/v2/members/<member_id>", '{"peerURLs":["<peer_url>"]}',
        headers=JSON),
    get("the members after the update", "/v2/members"),
    delete("remove an unknown member: 404", "/v2/members/1234"),
    delete("remove a non-hex member id: 404", "/v2/members/xyz"),
    get("the keys index after a member update", f"{K}/"),
    put("store stats: a set", f"{K}/s1", "value=1"),
    put("store stats: a failed create", f"{K}/s1?prevExist=false", "value=1"),
    get("store stats: a get", f"{K}/s1"),
    get("store stats: a failed get", f"{K}/none"),
    put("store stats: an update", f"{K}/s1?prevExist=true", "value=2"),
    put("store stats: a CAS", f"{K}/s1?prevValue=2", "value=3"),
    put("store stats: a failed CAS", f"{K}/s1?prevValue=2", "value=3"),
    delete("store stats: a CAD", f"{K}/s1?prevValue=3"),
    delete("store stats: a failed delete", f"{K}/s1"),
    get("/v2/stats/store after those", "/v2/stats/store"),
    get("/v2/stats/self again", "/v2/stats/self"),
    # Adding a member to a one-member cluster loses quorum: only local reads follow.
    post("add a member: 201", "/v2/members", '{"peerURLs":["http://127.0.0.1:1"]}', headers=JSON,
         new_member=True),
    get("the members, the new one unstarted", "/v2/members", unordered=True),
    get("/v2/machines lists started members only", "/v2/machines"),
    get("the keys index after a member add", f"{K}/"),
))

ENDPOINT_GROUPS = [GENERIC, ENDPOINTS]

ALL_GROUPS = KEYS_GROUPS + WATCH_GROUPS + ENDPOINT_GROUPS
