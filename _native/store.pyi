"""The etcd v2 state machine (etcd 3.4's v2store): tree, TTL heap, event history, JSON.

Paths are internal (``/1/foo`` is the user key ``/foo``; ``/1`` is the user root, ``/0`` holds
cluster data). JSON output and error causes strip the ``/1`` namespace. No clock is read:
``now_ns`` is the operation's time in Unix nanoseconds and ``expire_ns`` an absolute Unix
nanosecond expiration (0 = permanent).
"""

OP_SET: int
OP_CREATE: int
OP_UNIQUE: int
OP_UPDATE: int
OP_CAS: int
OP_DELETE: int
OP_CAD: int
OP_QGET: int

def encode_request(
    op: int,
    path: str,
    value: str = "",
    dir: bool = False,
    expire_ns: int = 0,
    prev_value: str | None = None,
    prev_index: int = 0,
    refresh: bool = False,
    recursive: bool = False,
    sorted: bool = False,
) -> bytes:
    """Pack a store request (msgpack) for the log; ``Store.apply`` runs it."""

def encode_set(path: str, value: str) -> bytes:
    """``encode_request(OP_SET, path, value)``, the same bytes, written without the packer."""

class V2Error(Exception):
    """An etcd v2 error. ``message`` comes from etcd's table for ``code``."""

    code: int
    cause: str
    index: int
    message: str
    def __init__(self, code: int, cause: str = "", index: int = 0) -> None: ...
    @property
    def status(self) -> int:
        """HTTP status: 100->404, 101/105->412, 102/108->403, 110->401, 300/301->500, else 400."""
    @property
    def body(self) -> bytes:
        """``{"errorCode":N,"message":M,"cause":C,"index":I}`` + ``\\n``; cause omitted when empty."""

class Node:
    """A tree node, read-only (introspection and tests)."""

    path: str
    name: str
    value: str | None
    created_index: int
    modified_index: int
    expire_ns: int

class Event:
    """One store event. ``body`` is the complete response JSON plus ``\\n``, encoded once.

    ``index`` is the node's modifiedIndex in the event (the new store index for mutations),
    ``etcd_index`` the store index right after the operation (for a history hit a watch
    answers with the *current* index instead). ``created`` means HTTP 201. ``removed`` lists
    every internal path a delete/expire/compareAndDelete removed, children before their
    directory, the node itself last; empty for other actions.
    """

    action: str
    key: str
    index: int
    etcd_index: int
    is_dir: bool
    refresh: bool
    created: bool
    removed: tuple[str, ...]
    body: bytes
    value: str | None
    def __init__(
        self,
        action: str,
        key: str,
        index: int,
        etcd_index: int = 0,
        is_dir: bool = False,
        refresh: bool = False,
        created: bool = False,
        removed: tuple[str, ...] = (),
        body: bytes = b"",
        value: str | None = None,
    ) -> None: ...
    def response(self, head: bytes, raft_index: int, raft_term: int, date: bytes) -> bytes:
        """The complete HTTP answer: ``head``, ``X-Etcd-Index`` (``etcd_index``), ``X-Raft-Index``,
        ``X-Raft-Term``, ``Date``, ``Content-Length`` and ``body``."""

class EventHistory:
    """The last ``capacity`` events (contiguous indices), for ``waitIndex`` watches."""

    capacity: int
    start_index: int
    last_index: int
    def __init__(self, capacity: int = 1000) -> None: ...
    def __len__(self) -> int: ...
    def add(self, event: Event) -> None:
        """Append the newest event; a full window drops its oldest."""
    def scan(self, key: str, recursive: bool, since_index: int) -> Event | None:
        """First non-refresh event with index >= ``since_index`` matching ``key``.

        Matches the exact key, keys below it when ``recursive``, and a delete/expire of a
        directory whose key is a string prefix of ``key``; hidden keys are not filtered.
        Raises V2Error 401 ``the requested history has been cleared [oldest/since]`` when
        ``since_index`` is older than the window.
        """
    def events(self) -> list[Event]:
        """The window, oldest first."""

class Store:
    """The v2 tree, created with ``/0`` and ``/1`` at index 0.

    Every successful mutation bumps ``index`` by one and appends one event to ``history``
    (refresh events too; they are never delivered to watchers). A failure raises V2Error
    with the current index and changes nothing.
    """

    index: int
    history: EventHistory
    def __init__(self, history_capacity: int = 1000) -> None: ...
    def get(self, path: str, recursive: bool, sorted: bool, now_ns: int) -> Event:
        """Read (action ``get``). Directories list visible (non-``_``) children; ``recursive``
        expands subdirectories; ``sorted`` orders by key at every level, else insertion order."""
    def get_response(self, path: str, recursive: bool, sorted: bool, now_ns: int, head: bytes,
                     raft_index: int, raft_term: int, date: bytes) -> bytes:
        """``get(path, recursive, sorted, now_ns)`` as a complete HTTP response: ``head`` (status line
        and fixed headers), ``X-Etcd-Index`` (the store index), ``X-Raft-Index``, ``X-Raft-Term``,
        ``Date: <date>``, ``Content-Length``, a blank line, the body. Counted and failing
        (V2Error) exactly as ``get``."""
    def set(self, path: str, dir: bool, value: str, expire_ns: int, refresh: bool, now_ns: int) -> Event:
        """Create or replace (a new createdIndex). Existing dir -> 102; a dir may replace a file.
        ``refresh``: the node must exist (100), its value is kept."""
    def create(self, path: str, dir: bool, value: str, unique: bool, expire_ns: int, now_ns: int) -> Event:
        """Create; existing -> 105. ``unique`` creates ``path/<new index as %020d>`` (POST)."""
    def update(self, path: str, value: str, expire_ns: int, refresh: bool, now_ns: int) -> Event:
        """Change value and TTL (no ``expire_ns`` = permanent). A dir: only the TTL, value must be
        empty (102), and its stored modifiedIndex stays while the event shows the new index."""
    def compare_and_swap(
        self,
        path: str,
        prev_value: str | None,
        prev_index: int,
        value: str,
        expire_ns: int,
        refresh: bool,
        now_ns: int,
    ) -> Event:
        """Swap a file's value when ``prev_value`` (None or "" = any) and ``prev_index``
        (0 = any) match, else 101 ``[pv != v]`` / ``[pi != mi]``; a dir -> 102."""
    def delete(self, path: str, dir: bool, recursive: bool, now_ns: int) -> Event:
        """Delete a file; a dir needs ``dir`` (102) and, when not empty, ``recursive`` (108)."""
    def compare_and_delete(self, path: str, prev_value: str | None, prev_index: int, now_ns: int) -> Event:
        """Delete a file when the conditions match (101); a dir -> 102."""
    def delete_expired(self, now_ns: int) -> list[Event]:
        """Expire (action ``expire``) every node whose expiration <= ``now_ns``, earliest first
        (ties by path), subtrees included."""
    def next_expiry_ns(self) -> int:
        """The earliest pending expiration, 0 when none."""
    def apply(self, request: bytes, now_ns: int) -> Event:
        """Run a request made by ``encode_request`` (``OP_QGET`` is ``get``)."""
    def auth_enabled(self) -> bool:
        """etcd's v2 auth detection read of ``/2/enabled``: counted in ``getsSuccess`` /
        ``getsFail`` like a get; True when the node holds ``true``."""
    def node(self, path: str) -> Node | None:
        """The node at an internal path, if any."""
    def stats(self) -> dict[str, int]:
        """The counters of ``/v2/stats/store`` by name (without ``watchers``)."""
    def stats_body(self, watchers: int) -> bytes:
        """``/v2/stats/store`` JSON in etcd's field order, no trailing newline."""
    def snapshot(self) -> bytes:
        """Tree, index, TTLs, history (exact bodies) and stats, as msgpack."""
    @staticmethod
    def restore(data: bytes) -> Store:
        """The store a ``snapshot()`` was taken of."""
