"""Peers this node has synced a board with: they are never locked out by strangers.

A peer becomes *known* when one of its Hellos names a board this node holds (a
tag only members can compute, SPEC 12.1). Known peers are exempt from the
per-address connection cap and, when every slot is taken, evict a stranger
(SPEC 11.3). The book lives in the store's SQLite file, in the ``known_peers``
table this module owns; it keeps at most :data:`MAX_KNOWN_PEERS` node ids, the
least recently seen dropped first. It records node ids (public keys) and times
only, nothing of what was synced; in a protected data dir only a keyed digest of
each node id (:meth:`Database.blind`), so the book cannot be listed, only asked.
"""

from __future__ import annotations

import time
from typing import Final, final

from p2paid.storage.sqlite import Database

__all__ = ["MAX_KNOWN_PEERS", "PeerBook"]

MAX_KNOWN_PEERS: Final = 10_000
_WHERE: Final = "known_peers.node_id"
#: A known peer's last-seen time is rewritten at most this often (milliseconds).
_TOUCH_EVERY: Final = 3600 * 1000

_SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS known_peers (
    node_id    BLOB PRIMARY KEY,
    first_seen INTEGER NOT NULL,
    last_seen  INTEGER NOT NULL
)"""


@final
class PeerBook:
    """The set of known node ids, cached in memory and kept in ``db``.

    Raises:
        StorageError: from every method when the store fails.
    """

    def __init__(self, db: Database) -> None:
        self._db = db
        with db.write():
            db.execute(_SCHEMA)
        self._seen: dict[bytes, int] = {}
        self._first: dict[bytes, int] = {}
        for node_id, first, seen in db.execute(
                "SELECT node_id, first_seen, last_seen FROM known_peers"):
            if isinstance(node_id, bytes) and isinstance(first, int) and isinstance(seen, int):
                self._seen[node_id] = seen
                self._first[node_id] = first

    def __contains__(self, node_id: object) -> bool:
        return isinstance(node_id, bytes) and self._db.blind(_WHERE, node_id) in self._seen

    def __len__(self) -> int:
        return len(self._seen)

    def first_seen(self, node_id: bytes) -> int | None:
        """When ``node_id`` first became known, in ms since the epoch (None: it is not)."""
        return self._first.get(self._db.blind(_WHERE, node_id))

    def add(self, node_id: bytes) -> None:
        """Remember ``node_id`` (or note that it was seen again)."""
        node_id = self._db.blind(_WHERE, node_id)
        now = int(time.time() * 1000)
        if now - self._seen.get(node_id, -_TOUCH_EVERY) < _TOUCH_EVERY:
            return
        with self._db.write():
            self._db.execute(
                "INSERT INTO known_peers VALUES (?, ?, ?) ON CONFLICT (node_id) "
                "DO UPDATE SET last_seen = excluded.last_seen", (node_id, now, now))
            if node_id not in self._seen and len(self._seen) >= MAX_KNOWN_PEERS:
                oldest = min(self._seen, key=self._seen.__getitem__)
                self._db.execute("DELETE FROM known_peers WHERE node_id = ?", (oldest,))
                del self._seen[oldest]
                del self._first[oldest]
        self._seen[node_id] = now
        self._first.setdefault(node_id, now)
