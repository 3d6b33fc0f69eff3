"""What the web interface keeps on the node: pairing invites and phone sessions.

One SQLite file beside the store (``web.sqlite3`` in the data dir), so that the
``p2paid web`` commands can make and revoke invites while the node runs. Tokens
are stored hashed (:mod:`p2paid.web.tokens`). An invite is counted (``uses``) and
expires; redeeming one is a single statement, so two phones racing for the last
use cannot both win. In a protected data dir an invite's label is sealed under the
data-dir key (:class:`~p2paid.storage.atrest.Sealer`); a label still plain (from
before the passphrase was set) is sealed when the file is opened.
"""

from __future__ import annotations

import os
import sqlite3
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Final, final

from p2paid.errors import P2paidError, StorageError
from p2paid.storage.atrest import Sealer
from p2paid.web.tokens import new_token, token_hash

__all__ = ["InviteRow", "PairingError", "SessionRow", "WebStore"]

FILE_NAME: Final = "web.sqlite3"
SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS invites (
    id          TEXT PRIMARY KEY,
    token_hash  BLOB NOT NULL UNIQUE,
    board_id    BLOB NOT NULL,
    uses_left   INTEGER NOT NULL,
    uses        INTEGER NOT NULL,
    created     INTEGER NOT NULL,
    expires     INTEGER NOT NULL,
    revoked     INTEGER NOT NULL DEFAULT 0,
    label       TEXT NOT NULL DEFAULT '',
    as_me       INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS sessions (
    token_hash  BLOB PRIMARY KEY,
    device_id   TEXT NOT NULL,
    board_id    BLOB NOT NULL,
    created     INTEGER NOT NULL,
    last_seen   INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS sessions_by_device ON sessions (device_id);
"""


class PairingError(P2paidError):
    """An invite that cannot be used (unknown, used up, expired or revoked)."""


@final
@dataclass(frozen=True, slots=True)
class InviteRow:
    id: str
    board_id: bytes
    uses_left: int
    uses: int
    created: int
    expires: int
    revoked: bool
    label: str
    #: pairs the phone to the node's own member key (the coordinator's phone)
    as_me: bool = False

    def usable(self, now: int) -> bool:
        return not self.revoked and self.uses_left > 0 and now < self.expires


@final
@dataclass(frozen=True, slots=True)
class SessionRow:
    device_id: str
    board_id: bytes
    created: int
    last_seen: int


@final
class WebStore:
    """Invites and sessions of one data dir's web interface.

    Args:
        data_dir: the node's data dir (the file is created there, mode 0600).
        clock: seconds since the epoch (tests pass their own).
    """

    def __init__(self, data_dir: str | os.PathLike[str], *,
                 clock: Callable[[], float] = time.time, sealer: Sealer | None = None) -> None:
        self.path = Path(data_dir) / FILE_NAME
        self._clock = clock
        self._sealer = sealer
        fresh = not self.path.exists()
        self._con = sqlite3.connect(self.path, isolation_level=None, timeout=10)
        if fresh:
            os.chmod(self.path, 0o600)
        self._con.execute("PRAGMA journal_mode = WAL")
        self._con.execute("PRAGMA synchronous = FULL")
        self._con.executescript(SCHEMA)
        if sealer is not None:
            self.reseal_labels(sealer)

    def reseal_labels(self, sealer: Sealer | None) -> None:
        """Store every invite's label under ``sealer`` (None: plain, for a data dir whose
        passphrase is removed); labels already stored so are left as they are."""
        with self._write() as con:
            rows = con.execute("SELECT id, label FROM invites").fetchall()
            wrong = bytes if sealer is None else str
            labels = [(i, self._open_label(i, stored)) for i, stored in rows
                      if isinstance(stored, wrong)]
            self._sealer = sealer
            for invite_id, label in labels:
                con.execute("UPDATE invites SET label = ? WHERE id = ?",
                            (self._seal_label(invite_id, label), invite_id))

    def _seal_label(self, invite_id: str, label: str) -> str | bytes:
        if self._sealer is None:
            return label
        return self._sealer.seal("invites.label", invite_id.encode(), label.encode())

    def _open_label(self, invite_id: str, stored: object) -> str:
        if isinstance(stored, str):
            return stored
        if not isinstance(stored, bytes) or self._sealer is None:
            raise StorageError(f"{self.path} holds a sealed invite label but no key was "
                               "given; is it from a protected data dir?")
        return self._sealer.open("invites.label", invite_id.encode(), stored).decode(
            "utf-8", "replace")

    def close(self) -> None:
        self._con.close()

    def __enter__(self) -> WebStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _now(self) -> int:
        return int(self._clock())

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        self._con.execute("BEGIN IMMEDIATE")
        try:
            yield self._con
        except BaseException:
            self._con.execute("ROLLBACK")
            raise
        self._con.execute("COMMIT")

    # ------------------------------------------------------------------ invites

    def create_invite(self, board_id: bytes, *, uses: int = 1, expires_in: int = 7 * 86400,
                      label: str = "", as_me: bool = False) -> tuple[str, InviteRow]:
        """A new invite for ``uses`` phones, valid for ``expires_in`` seconds; returns
        its token (shown once, in the poster's URL) and its row. ``as_me``: the phone
        posts as the node's own member (one use, for the coordinator's phone)."""
        if as_me and uses != 1:
            raise ValueError("an invite to post as the node's member pairs one phone")
        if uses < 1 or expires_in < 1:
            raise ValueError("an invite needs at least one use and a time to live")
        token = new_token()
        now = self._now()
        invite_id = token_hash(token).hex()[:8]
        with self._write() as con:
            con.execute("INSERT INTO invites (id, token_hash, board_id, uses_left, uses, created,"
                        " expires, label, as_me) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                        (invite_id, token_hash(token), board_id, uses, uses, now,
                         now + expires_in, self._seal_label(invite_id, label), int(as_me)))
        return token, InviteRow(invite_id, board_id, uses, uses, now, now + expires_in, False,
                                label, as_me)

    def invite(self, token: str) -> InviteRow | None:
        """The invite a token names (None for an unknown token)."""
        row = self._con.execute("SELECT id, board_id, uses_left, uses, created, expires, "
                                "revoked, label, as_me FROM invites WHERE token_hash = ?",
                                (token_hash(token),)).fetchone()
        return None if row is None else self._invite(row)

    def redeem(self, token: str) -> InviteRow:
        """Use one of the invite's uses.

        Raises:
            PairingError: the token is unknown, used up, expired or revoked.
        """
        now = self._now()
        with self._write() as con:
            done = con.execute("UPDATE invites SET uses_left = uses_left - 1 WHERE token_hash = ?"
                               " AND uses_left > 0 AND revoked = 0 AND expires > ?",
                               (token_hash(token), now)).rowcount
        invite = self.invite(token)
        if done != 1 or invite is None:
            raise PairingError(_why_not(invite, now))
        return invite

    def invites(self) -> list[InviteRow]:
        rows = self._con.execute("SELECT id, board_id, uses_left, uses, created, expires, "
                                 "revoked, label, as_me FROM invites ORDER BY created").fetchall()
        return [self._invite(r) for r in rows]

    def revoke_invite(self, invite_id: str) -> bool:
        """Revoke the invite with this id (its first 8 hex digits); True if it existed."""
        with self._write() as con:
            return con.execute("UPDATE invites SET revoked = 1 WHERE id = ?",
                               (invite_id,)).rowcount == 1

    def _invite(self, row: tuple[object, ...]) -> InviteRow:
        invite_id, board_id, uses_left, uses, created, expires, revoked, stored, as_me = row
        assert isinstance(board_id, bytes) and isinstance(invite_id, str)
        assert isinstance(uses_left, int) and isinstance(uses, int)
        assert isinstance(created, int) and isinstance(expires, int)
        return InviteRow(invite_id, board_id, uses_left, uses, created, expires, bool(revoked),
                         self._open_label(invite_id, stored), bool(as_me))

    # ------------------------------------------------------------------ sessions

    def create_session(self, device_id: str, board_id: bytes) -> str:
        """A new session for a paired phone; returns the token for its cookie."""
        token = new_token()
        now = self._now()
        with self._write() as con:
            con.execute("INSERT INTO sessions VALUES (?, ?, ?, ?, ?)",
                        (token_hash(token), device_id, board_id, now, now))
        return token

    def session(self, token: str | None) -> SessionRow | None:
        """The live session of a cookie's token (None: none, or ended)."""
        if not token or len(token) > 64:
            return None
        row = self._con.execute("SELECT device_id, board_id, created, last_seen FROM sessions "
                                "WHERE token_hash = ?", (token_hash(token),)).fetchone()
        return None if row is None else SessionRow(row[0], bytes(row[1]), row[2], row[3])

    def touch(self, token: str) -> None:
        """Note that the session was used now (at most once a minute is written)."""
        now = self._now()
        with self._write() as con:
            con.execute("UPDATE sessions SET last_seen = ? WHERE token_hash = ? AND "
                        "last_seen < ?", (now, token_hash(token), now - 60))

    def end_session(self, token: str) -> None:
        with self._write() as con:
            con.execute("DELETE FROM sessions WHERE token_hash = ?", (token_hash(token),))

    def end_device(self, device_id: str) -> int:
        """End every session of a device (revoked); returns how many ended."""
        with self._write() as con:
            return con.execute("DELETE FROM sessions WHERE device_id = ?",
                               (device_id,)).rowcount


def _why_not(invite: InviteRow | None, now: int) -> str:
    if invite is None:
        return "this invite is not known here (mistyped, or from another node)"
    if invite.revoked:
        return "this invite was revoked; ask the coordinator for a new one"
    if now >= invite.expires:
        return "this invite has expired; ask the coordinator for a new one"
    return "this invite has been used up; ask the coordinator for a new one"
