"""A relay's own records (``protocol/SPEC.md`` 14.3): access tokens, who introduced each
board (for the new-board quotas), and the clients whose uploads it stored.

Three tables in the relay's SQLite file, owned by this module:

* ``relay_tokens``: SHA-256 hashes of the access tokens its operator created (a
  token is shown once, when created, and never stored in clear), with a note, and
  when it was revoked;
* ``relay_boards``: for every board the relay first stored after this table
  existed, the client key and address (an IPv4 address or an IPv6 /64) whose
  upload introduced it, and the token it presented;
* ``relay_clients``: node ids of clients whose uploads the relay stored. They
  count as known: exempt from the per-address cap, and they evict strangers when
  the relay is full.

**Quotas.** The bytes held in boards a client key introduced without a token, and
likewise per address, are capped (:class:`Quotas`); a board counts at least
:data:`MIN_BOARD_CHARGE`, so a quota also bounds how many boards one client can
make the relay track. A board introduced with a valid token, or adopted later by
an upload with a valid token, is exempt while that token is valid. Boards the
relay held before it kept these records are exempt too.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections import Counter
from dataclasses import dataclass
from typing import Final, final

from p2paid.errors import AmbiguousIdError, NotFoundError, UsageError
from p2paid.storage.sqlite import Database

__all__ = [
    "MIN_BOARD_CHARGE",
    "TOKEN_BYTES",
    "ClientInfo",
    "Quotas",
    "RelayLedger",
    "RelayTokens",
    "TokenInfo",
    "token_hash",
    "token_note",
]

#: Random bytes in a new access token (160 bits; 32 base32 characters).
TOKEN_BYTES: Final = 20
#: The least a board counts against a quota, however small it is.
MIN_BOARD_CHARGE: Final = 64 * 1024
_TOKEN_DOMAIN: Final = b"p2paid relay token\x00"
_MAX_NOTE: Final = 200


def token_note(note: str) -> str:
    """A token's note, stripped and checked: one line of at most 200 characters.

    Raises:
        UsageError: it is too long or has control characters.
    """
    note = note.strip()
    if len(note) > _MAX_NOTE or any(ord(c) < 32 or ord(c) == 127 for c in note):
        raise UsageError(f"a token note is at most {_MAX_NOTE} characters, one line")
    return note

_SCHEMA: Final = (
    """CREATE TABLE IF NOT EXISTS relay_tokens (
        token_hash BLOB PRIMARY KEY,
        note       TEXT NOT NULL,
        created    INTEGER NOT NULL,
        revoked    INTEGER
    )""",
    """CREATE TABLE IF NOT EXISTS relay_boards (
        board_id   BLOB PRIMARY KEY,
        client     BLOB NOT NULL,
        address    TEXT NOT NULL,
        token_hash BLOB,
        at         INTEGER NOT NULL
    )""",
    """CREATE TABLE IF NOT EXISTS relay_clients (
        node_id      BLOB PRIMARY KEY,
        first_stored INTEGER NOT NULL
    )""",
)


def _create_tables(db: Database) -> None:
    with db.write():
        for statement in _SCHEMA:
            db.execute(statement)


def token_hash(token: bytes) -> bytes:
    """What the relay stores of a token: ``SHA-256("p2paid relay token" || 0 || token)``."""
    return hashlib.sha256(_TOKEN_DOMAIN + token).digest()


@final
@dataclass(frozen=True, slots=True)
class TokenInfo:
    """A token as ``relay token list`` shows it (never the token itself)."""

    id: str  #: the first 8 hex digits of its hash
    note: str
    created: int  #: seconds since the epoch
    revoked: int | None


def _token_info(row: tuple[object, ...]) -> TokenInfo:
    digest, note, created, revoked = row
    assert isinstance(digest, bytes) and isinstance(created, int)
    return TokenInfo(digest[:4].hex(), str(note), created,
                     revoked if isinstance(revoked, int) else None)


@final
class RelayTokens:
    """The operator's access tokens.

    Raises:
        StorageError: from every method when the store fails.
    """

    def __init__(self, db: Database) -> None:
        self._db = db
        _create_tables(db)

    def create(self, note: str = "") -> tuple[bytes, TokenInfo]:
        """A new random token (returned once; only its hash is kept).

        Raises:
            UsageError: the note is too long or has control characters.
        """
        note = token_note(note)
        token = os.urandom(TOKEN_BYTES)
        now = int(time.time())
        with self._db.write():
            self._db.execute("INSERT INTO relay_tokens VALUES (?, ?, ?, NULL)",
                             (token_hash(token), note, now))
        return token, TokenInfo(token_hash(token)[:4].hex(), note, now, None)

    def list(self) -> list[TokenInfo]:
        rows = self._db.execute("SELECT token_hash, note, created, revoked FROM relay_tokens "
                                "ORDER BY created, token_hash")
        return [_token_info(r) for r in rows]

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
        with self._db.write():
            self._db.execute("UPDATE relay_tokens SET revoked = ? WHERE substr(hex(token_hash),"
                             " 1, 8) = ? AND revoked IS NULL", (int(time.time()),
                                                                 found[0].id.upper()))
        return next(t for t in self.list() if t.id == found[0].id)

    def valid(self, digest: bytes) -> bool:
        """Whether the token with this hash exists and is not revoked (read from the
        store each time, so a revocation by another process counts at once)."""
        rows = self._db.execute(
            "SELECT 1 FROM relay_tokens WHERE token_hash = ? AND revoked IS NULL", (digest,))
        return bool(rows)

    def check(self, token: bytes) -> bytes | None:
        """The hash of ``token`` if it is valid, else None."""
        digest = token_hash(token)
        return digest if self.valid(digest) else None


@final
@dataclass(frozen=True, slots=True)
class Quotas:
    """Storage for boards a client introduced (SPEC 14.3)."""

    #: bytes in boards introduced by one client key (without a token)
    per_key: int
    #: bytes in boards introduced from one address (IPv4, or IPv6 /64)
    per_address: int


@final
@dataclass(slots=True)
class ClientInfo:
    """Who is uploading on one connection."""

    node_id: bytes
    address: str  #: address key (IPv4, or IPv6 /64), "" if unknown
    token_hash: bytes | None = None  #: a valid token it presented


@dataclass(slots=True)
class _Intro:
    client: bytes
    address: str
    token_hash: bytes | None


@final
class RelayLedger:
    """Introductions, quota usage and known clients, cached in memory.

    Args:
        db: the relay's store.
        tokens: to tell valid tokens from revoked ones.
        sizes: bytes held per board (kept up to date by the caller through
            :meth:`stored`).
    """

    def __init__(self, db: Database, tokens: RelayTokens, sizes: dict[bytes, int]) -> None:
        self._db = db
        self._tokens = tokens
        self._sizes = sizes
        _create_tables(db)
        self._intros: dict[bytes, _Intro] = {}
        for board, client, address, digest in db.execute(
                "SELECT board_id, client, address, token_hash FROM relay_boards"):
            assert isinstance(board, bytes) and isinstance(client, bytes)
            self._intros[board] = _Intro(client, str(address),
                                         digest if isinstance(digest, bytes) else None)
        self._clients: dict[bytes, int] = {
            node_id: since for node_id, since in db.execute(
                "SELECT node_id, first_stored FROM relay_clients")
            if isinstance(node_id, bytes) and isinstance(since, int)}
        self._by_key: Counter[bytes] = Counter()
        self._by_address: Counter[str] = Counter()
        for board, intro in self._intros.items():
            if intro.token_hash is not None and not tokens.valid(intro.token_hash):
                intro.token_hash = None
            if intro.token_hash is None:
                self._charge(intro, self._cost(sizes.get(board, 0)))

    # ------------------------------------------------------------------ clients

    def client_since(self, node_id: bytes) -> int | None:
        """When the relay first stored an upload of this client, in ms since the epoch
        (None: never)."""
        return self._clients.get(node_id)

    # ------------------------------------------------------------------ quotas

    @staticmethod
    def _cost(size: int) -> int:
        return max(size, MIN_BOARD_CHARGE) if size else 0

    def _charge(self, intro: _Intro, amount: int) -> None:
        self._by_key[intro.client] += amount
        self._by_address[intro.address] += amount

    def usage(self, node_id: bytes, address: str) -> tuple[int, int]:
        """Quota bytes used by boards a key, and an address, introduced."""
        return self._by_key[node_id], self._by_address[address]

    def check(self, board_id: bytes, incoming: int, client: ClientInfo,
              quotas: Quotas) -> str | None:
        """None if ``incoming`` more bytes of ``board_id`` from ``client`` fit the quotas;
        else why not. May adopt the board for the client's token, or end the exemption
        of a board whose token was revoked."""
        intro = self._intros.get(board_id)
        size = self._sizes.get(board_id, 0)
        if intro is None:
            if size or client.token_hash is not None:
                return None  # held before records were kept, or introduced with a token
            intro = _Intro(client.node_id, client.address, None)
        else:
            self._refresh_token(board_id, intro)
            if intro.token_hash is None and client.token_hash is not None:
                self._adopt(board_id, intro, client.token_hash)
            if intro.token_hash is not None:
                return None
        extra = self._cost(size + incoming) - self._cost(size)
        if self._by_key[intro.client] + extra > quotas.per_key:
            return (f"the client that brought this board here may store at most "
                    f"{quotas.per_key // (1024 * 1024)} MiB of new boards")
        if self._by_address[intro.address] + extra > quotas.per_address:
            return (f"the address that brought this board here may store at most "
                    f"{quotas.per_address // (1024 * 1024)} MiB of new boards")
        return None

    def _refresh_token(self, board_id: bytes, intro: _Intro) -> None:
        if intro.token_hash is not None and not self._tokens.valid(intro.token_hash):
            intro.token_hash = None  # revoked: the board counts against its introducer
            self._charge(intro, self._cost(self._sizes.get(board_id, 0)))
            with self._db.write():
                self._db.execute("UPDATE relay_boards SET token_hash = NULL "
                                 "WHERE board_id = ?", (board_id,))

    def _adopt(self, board_id: bytes, intro: _Intro, digest: bytes) -> None:
        self._charge(intro, -self._cost(self._sizes.get(board_id, 0)))
        intro.token_hash = digest
        with self._db.write():
            self._db.execute("UPDATE relay_boards SET token_hash = ? WHERE board_id = ?",
                             (digest, board_id))

    def stored(self, board_id: bytes, size_before: int, size_after: int,
               client: ClientInfo | None) -> None:
        """Record that an upload grew ``board_id``; call inside the write transaction
        that stored it (the caller updates the sizes it shares with the ledger)."""
        intro = self._intros.get(board_id)
        if intro is None and not size_before and client is not None:
            intro = self._intros[board_id] = _Intro(client.node_id, client.address,
                                                    client.token_hash)
            self._db.execute("INSERT OR IGNORE INTO relay_boards VALUES (?, ?, ?, ?, ?)",
                             (board_id, client.node_id, client.address, client.token_hash,
                              int(time.time())))
        if intro is not None and intro.token_hash is None:
            self._charge(intro, self._cost(size_after) - self._cost(size_before))
        if client is not None:
            self.remember_client(client.node_id)

    def remember_client(self, node_id: bytes) -> None:
        """Count ``node_id`` as a client holding data here (from now on, and after a
        restart)."""
        if node_id not in self._clients:
            now = int(time.time() * 1000)
            with self._db.write():
                self._db.execute("INSERT OR IGNORE INTO relay_clients VALUES (?, ?)",
                                 (node_id, now))
            self._clients[node_id] = now
