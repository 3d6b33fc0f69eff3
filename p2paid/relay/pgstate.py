"""A relay cluster's own records in PostgreSQL: access tokens, board introductions (for
the new-board quotas) and known clients, as :mod:`p2paid.relay.state` keeps them in
SQLite for one process, but read from the shared tables every time they decide
something, so that they hold for the cluster as a whole.

Quotas are exact across processes: :meth:`ClusterLedger.check` runs inside the upload's
write transaction, after its board is locked, and takes a transaction-scoped advisory
lock on the introducing key and address before summing what they use. Lock order is
always board, key, address, then the total (at commit), so writers never deadlock.
"""

from __future__ import annotations

import hashlib
import os
import time
from typing import Final, final

from p2paid.errors import AmbiguousIdError, NotFoundError, UsageError
from p2paid.relay.state import (
    MIN_BOARD_CHARGE,
    TOKEN_BYTES,
    ClientInfo,
    Quotas,
    TokenInfo,
    token_hash,
    token_note,
)
from p2paid.storage.pg.store import PgStore

__all__ = ["ClusterLedger", "ClusterTokens", "advisory_key"]



def advisory_key(kind: bytes, value: bytes) -> int:
    """A signed 64-bit advisory-lock key for ``(kind, value)``."""
    return int.from_bytes(hashlib.sha256(kind + b"\x00" + value).digest()[:8], "big",
                          signed=True)


@final
class ClusterTokens:
    """The operator's access tokens, shared by every process (a revocation counts at once).

    Raises:
        StorageError: from every method when the database fails.
    """

    def __init__(self, store: PgStore) -> None:
        self._store = store

    def create(self, note: str = "") -> tuple[bytes, TokenInfo]:
        """A new random token (returned once; only its hash is kept).

        Raises:
            UsageError: the note is too long or has control characters.
        """
        note = token_note(note)
        token = os.urandom(TOKEN_BYTES)
        now = int(time.time())
        with self._store.write():
            self._store.execute("INSERT INTO relay_tokens VALUES (%s, %s, %s, NULL)",
                                (token_hash(token), note, now))
        return token, TokenInfo(token_hash(token)[:4].hex(), note, now, None)

    def list(self) -> list[TokenInfo]:
        rows = self._store.execute("SELECT token_hash, note, created, revoked FROM "
                                   "relay_tokens ORDER BY created, token_hash")
        return [TokenInfo(bytes(d)[:4].hex(), str(n), int(c), None if r is None else int(r))
                for d, n, c, r in rows]

    def revoke(self, token_id: str) -> TokenInfo:
        """Revoke the token whose id starts with ``token_id`` (at least 4 hex digits).

        Raises:
            NotFoundError: no such token.
            AmbiguousIdError: the prefix matches several tokens.
        """
        wanted = token_id.strip().lower()
        if len(wanted) < 4 or any(c not in "0123456789abcdef" for c in wanted):
            raise UsageError("give a token id as 'relay token list' shows it (hex)")
        found = [t for t in self.list() if t.id.startswith(wanted[:8])]
        if not found:
            raise NotFoundError(f"no token with id {wanted!r}")
        if len(found) > 1:
            raise AmbiguousIdError(f"{wanted!r} matches several tokens; give more of the id")
        with self._store.write():
            self._store.execute(
                "UPDATE relay_tokens SET revoked = %s WHERE substr(token_hash, 1, 4) = %s "
                "AND revoked IS NULL", (int(time.time()), bytes.fromhex(found[0].id)))
        return next(t for t in self.list() if t.id == found[0].id)

    def valid(self, digest: bytes) -> bool:
        rows = self._store.execute("SELECT 1 FROM relay_tokens WHERE token_hash = %s AND "
                                   "revoked IS NULL", (digest,))
        return bool(rows)

    def check(self, token: bytes) -> bytes | None:
        """The hash of ``token`` if it is valid, else None."""
        digest = token_hash(token)
        return digest if self.valid(digest) else None


_USAGE: Final = (
    "SELECT COALESCE(SUM(GREATEST(b.bytes, {charge})), 0) FROM relay_boards r "
    "JOIN board_bytes b ON b.board_id = r.board_id WHERE r.{column} = %s AND b.bytes > 0 "
    "AND NOT EXISTS (SELECT 1 FROM relay_tokens t WHERE t.token_hash = r.token_hash "
    "AND t.revoked IS NULL)"
)


def _cost(size: int) -> int:
    return max(size, MIN_BOARD_CHARGE) if size else 0


@final
class ClusterLedger:
    """Introductions, quota usage and known clients, in the shared tables."""

    def __init__(self, store: PgStore) -> None:
        self._store = store
        self._known: dict[bytes, int] = {}

    def client_since(self, node_id: bytes) -> int | None:
        """When the cluster first stored an upload of this client, ms since the epoch."""
        since = self._known.get(node_id)
        if since is None:
            rows = self._store.execute("SELECT first_stored FROM relay_clients WHERE "
                                       "node_id = %s", (node_id,))
            if not rows:
                return None
            since = self._known[node_id] = int(rows[0][0])
        return since

    def check(self, board_id: bytes, size: int, incoming: int, client: ClientInfo,
              quotas: Quotas) -> str | None:
        """None if ``incoming`` more bytes of the board (holding ``size``, locked by the
        caller's transaction) fit the quotas of whoever introduced it; else why not.
        Must run inside the upload's write transaction."""
        rows = self._store.execute("SELECT client, address, token_hash FROM relay_boards "
                                   "WHERE board_id = %s", (board_id,))
        if not rows:
            if size or client.token_hash is not None:
                return None  # held before records were kept, or introduced with a token
            key, address = client.node_id, client.address
        else:
            key, address = bytes(rows[0][0]), str(rows[0][1])
            digest = None if rows[0][2] is None else bytes(rows[0][2])
            if digest is not None and self._valid(digest):
                return None
            if client.token_hash is not None:  # adopted by the uploader's valid token
                self._store.execute("UPDATE relay_boards SET token_hash = %s WHERE "
                                    "board_id = %s", (client.token_hash, board_id))
                return None
        extra = _cost(size + incoming) - _cost(size)
        for column, value, cap, who in (("client", key, quotas.per_key, "client"),
                                        ("address", address, quotas.per_address, "address")):
            raw = value if isinstance(value, bytes) else value.encode()
            self._store.lock_key(advisory_key(column.encode(), raw))
            used = int(self._store.execute(
                _USAGE.format(charge=MIN_BOARD_CHARGE, column=column), (value,))[0][0])
            if used + extra > cap:
                return (f"the {who} that brought this board here may store at most "
                        f"{cap // (1024 * 1024)} MiB of new boards")
        return None

    def _valid(self, digest: bytes) -> bool:
        return bool(self._store.execute("SELECT 1 FROM relay_tokens WHERE token_hash = %s "
                                        "AND revoked IS NULL", (digest,)))

    def stored(self, board_id: bytes, size_before: int, client: ClientInfo | None) -> None:
        """Record an upload that grew the board; inside its write transaction."""
        if client is None:
            return
        if not size_before:
            self._store.execute(
                "INSERT INTO relay_boards VALUES (%s, %s, %s, %s, %s) ON CONFLICT DO NOTHING",
                (board_id, client.node_id, client.address, client.token_hash,
                 int(time.time())))
        if client.node_id not in self._known:
            now = int(time.time() * 1000)
            self._store.execute("INSERT INTO relay_clients VALUES (%s, %s) "
                                "ON CONFLICT DO NOTHING", (client.node_id, now))
