"""The SQLite store: boards, keys, envelopes, snapshots and rejections.

One file, ``p2paid.sqlite3``, in the data dir; WAL journal, ``synchronous=FULL``,
so a transaction that has committed survives a crash or power cut. Several
processes may open one data dir at once: every write runs under SQLite's write
lock (``BEGIN IMMEDIATE``) and callers catch up with rows other processes added
(by the ``envelopes.id`` arrival counter) before they write, so an author's feed
never forks and nothing is overwritten. See ``protocol/SPEC.md`` "Storage".

This is a thin, typed layer over SQL; policy lives in :mod:`p2paid.board.board`.

In a protected data dir (meta ``atrest`` = ``sealed``) every value that is not
already ciphertext under a board key is sealed under the data-dir key
(:class:`~p2paid.storage.atrest.Sealer`): meta values (but for :data:`PLAIN_META`),
the boards' secrets, names, author keys and relays, snapshots and rejection details;
other modules seal their own columns through :meth:`Database.seal` and friends.
:class:`Database` implements the :class:`~p2paid.storage.base.EnvelopeStore` port.
"""

from __future__ import annotations

import contextlib
import errno
import os
import sqlite3
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, TypeVar, final

import msgpack

from p2paid.core.feed import FeedHead
from p2paid.errors import PassphraseError, StorageError
from p2paid.storage.atrest import Sealer
from p2paid.storage.base import ForkRow, NewEnvelope
from p2paid.storage.files import file_error, private_dir, writable_dir

__all__ = ["DB_FILENAME", "PLAIN_META", "BoardRow", "Database", "EnvelopeRow", "ForkRow",
           "SnapshotRow", "rejection_row"]

DB_FILENAME: Final = "p2paid.sqlite3"
#: 1: p2paid 0.1. 2: forks table; snapshots from 1 are dropped on upgrade, so that
#: every stored change is checked again under the own-feed rule (SPEC 5).
#: 3: devices table (:mod:`p2paid.storage.devices`); nothing else changes.
SCHEMA_VERSION: Final = 4
#: Stores older than this drop their snapshots on upgrade (see SCHEMA_VERSION).
_SNAPSHOTS_KEPT_FROM: Final = 2
BUSY_TIMEOUT_MS: Final = 30_000
#: The meta key that says whether the store is sealed (value :data:`_SEALED`).
ATREST_KEY: Final = "atrest"
_SEALED: Final = b"sealed"
#: Meta keys whose values are never sealed: a process must read them before unlocking.
PLAIN_META: Final = frozenset({"schema", "role", ATREST_KEY})

_SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS meta (
    key   TEXT PRIMARY KEY,
    value BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS boards (
    board_id   BLOB PRIMARY KEY,
    secret     BLOB NOT NULL,
    name       TEXT NOT NULL,
    author_key BLOB NOT NULL,
    relays     BLOB NOT NULL,
    joined_at  INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS envelopes (
    id          INTEGER PRIMARY KEY,
    board_id    BLOB NOT NULL,
    author      BLOB NOT NULL,
    seq         INTEGER NOT NULL,
    hash        BLOB NOT NULL,
    data        BLOB NOT NULL,
    change_hash BLOB,
    UNIQUE (board_id, author, seq)
);
CREATE TABLE IF NOT EXISTS snapshots (
    board_id BLOB PRIMARY KEY,
    doc      BLOB NOT NULL,
    vector   BLOB NOT NULL,
    sections BLOB NOT NULL,
    max_ops  BLOB NOT NULL,
    changes  INTEGER NOT NULL,
    saved_at INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS rejections (
    board_id BLOB NOT NULL,
    author   BLOB NOT NULL,
    seq      INTEGER NOT NULL,
    hash     BLOB NOT NULL,
    code     TEXT NOT NULL,
    detail   TEXT NOT NULL,
    data     BLOB,
    change_hash BLOB,
    at       INTEGER NOT NULL,
    PRIMARY KEY (board_id, author, seq, hash)
);
CREATE TABLE IF NOT EXISTS forks (
    board_id BLOB NOT NULL,
    author   BLOB NOT NULL,
    seq      INTEGER NOT NULL,
    first    BLOB NOT NULL,
    second   BLOB NOT NULL,
    at       INTEGER NOT NULL,
    PRIMARY KEY (board_id, author)
);
CREATE TABLE IF NOT EXISTS devices (
    id         TEXT PRIMARY KEY,
    board_id   BLOB NOT NULL,
    name       TEXT NOT NULL,
    author     BLOB NOT NULL,
    author_key BLOB NOT NULL,
    created    INTEGER NOT NULL,
    last_seen  INTEGER,
    revoked    INTEGER
);
CREATE INDEX IF NOT EXISTS devices_by_board ON devices (board_id);
CREATE TABLE IF NOT EXISTS checkpoints (
    board_id BLOB NOT NULL,
    author   BLOB NOT NULL,
    seq      INTEGER NOT NULL,
    hash     BLOB NOT NULL,
    data     BLOB NOT NULL,
    PRIMARY KEY (board_id, author)
);
"""


@final
@dataclass(frozen=True, slots=True)
class BoardRow:
    board_id: bytes
    secret: bytes
    name: str
    author_key: bytes
    relays: tuple[str, ...]
    joined_at: int


@final
@dataclass(frozen=True, slots=True)
class EnvelopeRow:
    id: int
    author: bytes
    seq: int
    hash: bytes
    data: bytes
    change_hash: bytes | None


@final
@dataclass(frozen=True, slots=True)
class SnapshotRow:
    doc: bytes
    vector: dict[bytes, int]
    sections: dict[bytes, int]
    max_ops: dict[bytes, int]
    changes: int


@final
class Database:
    """A connection to the store in one data dir. Not thread-safe: one per thread.

    Raises:
        StorageError: from every method when SQLite fails (corrupt file, disk full, locked).
        FileError: from the constructor when the data dir cannot be used (not ours,
            read-only).
    """

    def __init__(self, data_dir: str | os.PathLike[str], *,
                 unlock: Callable[[], Sealer] | None = None) -> None:
        """``unlock`` is called (once, after the store is open) if the store is sealed;
        it returns the data dir's :class:`Sealer` or raises.

        Raises:
            PassphraseError: the store is sealed and ``unlock`` is None.
        """
        self.data_dir = Path(data_dir)
        self.path = self.data_dir / DB_FILENAME
        self._depth = 0
        #: the data dir's sealer; None while the store is not protected
        self.sealer: Sealer | None = None
        self._opened = False
        private_dir(self.data_dir)
        writable_dir(self.data_dir, "use the data dir")
        if self.path.exists() and not os.access(self.path, os.R_OK | os.W_OK):
            raise file_error(self.path, PermissionError(errno.EACCES, "permission denied"),
                             "open the store")
        #: True if this open created the store (a new data dir, or an empty folder)
        self.created = False
        try:
            fresh = not self.path.exists()
            old_umask = os.umask(0o077)
            try:
                self._con = sqlite3.connect(
                    self.path, isolation_level=None, timeout=BUSY_TIMEOUT_MS / 1000,
                    check_same_thread=False,
                )
            finally:
                os.umask(old_umask)
            if fresh:
                os.chmod(self.path, 0o600)
            self.created = fresh
            try:
                self._configure()
            except BaseException:
                self._con.close()
                raise
        except sqlite3.DatabaseError as exc:
            raise StorageError(f"cannot open the store at {self.path}: {exc}") from exc
        except OSError as exc:
            raise file_error(self.data_dir, exc, "use the data dir") from exc
        try:
            if self.sealed_on_disk():
                if unlock is None:
                    raise PassphraseError(f"the data dir {self.data_dir} is protected by a "
                                          "passphrase; give it (--passphrase-file FILE, or "
                                          "P2PAID_PASSPHRASE_FILE, or on the terminal)")
                self.sealer = unlock()
        except BaseException:
            self._con.close()
            raise
        self._opened = True

    def sealed_on_disk(self) -> bool:
        """Whether the store's values are sealed (the data dir is protected)."""
        return self.get_meta(ATREST_KEY) == _SEALED

    def _enable_wal(self) -> None:
        """Switch to WAL, waiting out other processes that hold a lock meanwhile.

        SQLite does not apply the busy timeout to a journal-mode change, so a
        second process opening a new data dir at the same moment would fail at
        once; retry for up to the busy timeout instead.
        """
        deadline = time.monotonic() + BUSY_TIMEOUT_MS / 1000
        delay = 0.005
        while True:
            try:
                mode = self._con.execute("PRAGMA journal_mode = WAL").fetchone()[0]
                break
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) or time.monotonic() > deadline:
                    raise
                time.sleep(delay)
                delay = min(delay * 2, 0.1)
        if mode != "wal":
            raise StorageError(f"the store could not switch to WAL mode (got {mode})")

    def _configure(self) -> None:
        con = self._con
        con.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        self._enable_wal()
        con.execute("PRAGMA synchronous = FULL")
        con.execute("PRAGMA foreign_keys = ON")
        with self.write():
            for statement in _SCHEMA.split(";"):
                if statement.strip():
                    con.execute(statement)
            row = con.execute("SELECT value FROM meta WHERE key = 'schema'").fetchone()
            if row is None:
                con.execute("INSERT INTO meta VALUES ('schema', ?)", (SCHEMA_VERSION,))
            elif int(row[0]) > SCHEMA_VERSION:
                raise StorageError(
                    f"the store has schema version {row[0]}, newer than this p2paid "
                    f"({SCHEMA_VERSION}); upgrade p2paid"
                )
            elif int(row[0]) < SCHEMA_VERSION:
                # The CREATE statements above added the tables a newer schema has.
                if int(row[0]) < _SNAPSHOTS_KEPT_FROM:
                    # Snapshots are an optimisation; without them every stored change
                    # is applied (and checked) again on the next open.
                    con.execute("DELETE FROM snapshots")
                con.execute("UPDATE meta SET value = ? WHERE key = 'schema'", (SCHEMA_VERSION,))

    def close(self) -> None:
        self._con.close()

    # ------------------------------------------------------------------ transactions

    @contextlib.contextmanager
    def write(self) -> Iterator[None]:
        """A write transaction under the store-wide write lock; durable on exit.

        Nested use joins the outer transaction.
        """
        if self._depth:
            self._depth += 1
            try:
                yield
            finally:
                self._depth -= 1
            return
        try:
            self._con.execute("BEGIN IMMEDIATE")
        except sqlite3.DatabaseError as exc:
            raise StorageError(f"cannot lock the store for writing: {exc}") from exc
        self._depth = 1
        try:
            self._check_sealing()
            yield
        except BaseException:
            self._depth = 0
            with contextlib.suppress(sqlite3.DatabaseError):
                self._con.execute("ROLLBACK")
            raise
        self._depth = 0
        try:
            self._con.execute("COMMIT")
        except sqlite3.DatabaseError as exc:
            with contextlib.suppress(sqlite3.DatabaseError):
                self._con.execute("ROLLBACK")
            raise StorageError(f"cannot commit to the store: {exc}") from exc

    def _check_sealing(self) -> None:
        """Refuse to write plain values into a store another process has just sealed
        (or sealed ones into one it made plain): ``passphrase set`` and ``remove`` run
        while the CLI may have the store open."""
        if not self._opened:
            return  # (opening: the mark is read after the schema transaction)
        rows = self._query("SELECT value FROM meta WHERE key = ?", (ATREST_KEY,))
        sealed = bool(rows) and rows[0][0] == _SEALED
        if sealed != (self.sealer is not None):
            raise StorageError("another process set or removed the data dir's passphrase "
                               "meanwhile; nothing was written: run the command again")

    @contextlib.contextmanager
    def read(self) -> Iterator[None]:
        """A read transaction: every query inside sees one consistent state."""
        if self._depth:
            yield
            return
        try:
            self._con.execute("BEGIN")
        except sqlite3.DatabaseError as exc:
            raise StorageError(f"cannot read the store: {exc}") from exc
        self._depth = 1
        try:
            yield
        finally:
            self._depth = 0
            with contextlib.suppress(sqlite3.DatabaseError):
                self._con.execute("COMMIT")

    def _query(self, sql: str, args: Sequence[object] = ()) -> list[tuple[object, ...]]:
        try:
            return self._con.execute(sql, args).fetchall()
        except sqlite3.DatabaseError as exc:
            raise StorageError(f"store query failed: {exc}") from exc

    def _exec(self, sql: str, args: Sequence[object] = ()) -> int:
        try:
            cur = self._con.execute(sql, args)
        except sqlite3.DatabaseError as exc:
            raise StorageError(f"store write failed: {exc}") from exc
        return int(cur.lastrowid or 0)

    def execute(self, sql: str, args: Sequence[object] = ()) -> list[tuple[object, ...]]:
        """Run one statement for a module that keeps its own tables in this file
        (:mod:`p2paid.storage.peerbook`, :mod:`p2paid.relay.state`); wrap writes in :meth:`write`.

        Raises:
            StorageError: SQLite failed.
        """
        return self._query(sql, args)

    # ------------------------------------------------------------------ meta

    def get_meta(self, key: str) -> bytes | None:
        rows = self._query("SELECT value FROM meta WHERE key = ?", (key,))
        if not rows:
            return None
        value = rows[0][0]
        return _bytes(value) if key in PLAIN_META else self.open("meta.value", key.encode(),
                                                                 value)

    def set_meta(self, key: str, value: bytes) -> None:
        stored = value if key in PLAIN_META else self.seal("meta.value", key.encode(), value)
        with self.write():
            self._exec("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, stored))

    # ------------------------------------------------------------------ sealing

    def seal(self, where: str, row: bytes, value: bytes) -> bytes:
        """``value`` as it is stored: sealed if the store is protected, else as is."""
        return value if self.sealer is None else self.sealer.seal(where, row, value)

    def open(self, where: str, row: bytes, stored: object) -> bytes:
        """A value written with :meth:`seal`, as it was given.

        Raises:
            StorageError: it does not open (damaged, moved to another row) or is not bytes.
        """
        raw = _bytes(stored)
        return raw if self.sealer is None else self.sealer.open(where, row, raw)

    def seal_text(self, where: str, row: bytes, text: str) -> str | bytes:
        """Text as it is stored: as is (a TEXT value) if not protected, else sealed."""
        return text if self.sealer is None else self.sealer.seal(where, row, text.encode())

    def open_text(self, where: str, row: bytes, stored: object) -> str:
        if self.sealer is None:
            if not isinstance(stored, str):
                raise StorageError(f"the store holds {type(stored).__name__} where text "
                                   "belongs; is it corrupt?")
            return stored
        try:
            return self.sealer.open(where, row, _bytes(stored)).decode()
        except UnicodeDecodeError as exc:
            raise StorageError("the store holds undecodable text; is it corrupt?") from exc

    def blind(self, where: str, value: bytes) -> bytes:
        """``value`` as a lookup key: a keyed digest if protected, else as is."""
        return value if self.sealer is None else self.sealer.blind(where, value)

    def set_sealed(self, sealer: Sealer | None) -> None:
        """Record that the store is now sealed under ``sealer`` (or plain); must run
        inside :meth:`write`, after every value was rewritten
        (:mod:`p2paid.storage.protect`)."""
        self.sealer = sealer
        if sealer is None:
            self._exec("DELETE FROM meta WHERE key = ?", (ATREST_KEY,))
        else:
            self._exec("INSERT OR REPLACE INTO meta VALUES (?, ?)", (ATREST_KEY, _SEALED))

    def scrub(self) -> None:
        """Leave no old value in free pages or the WAL: VACUUM with ``secure_delete``
        on, then checkpoint and truncate the WAL."""
        try:
            self._con.execute("PRAGMA secure_delete = ON")
            self._con.execute("VACUUM")
            deadline = time.monotonic() + BUSY_TIMEOUT_MS / 1000
            # (busy while another connection reads: wait for it, then truncate)
            while self._con.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()[0] and \
                    time.monotonic() < deadline:
                time.sleep(0.05)
        except sqlite3.DatabaseError as exc:
            raise StorageError(f"cannot compact the store: {exc}") from exc

    # ------------------------------------------------------------------ boards

    def add_board(self, row: BoardRow) -> None:
        with self.write():
            self._exec("INSERT INTO boards VALUES (?, ?, ?, ?, ?, ?)", self.board_values(row))

    def board_values(self, row: BoardRow) -> tuple[object, ...]:
        """A board's row as stored (sealed if the store is protected)."""
        b = row.board_id
        return (b, self.seal("boards.secret", b, row.secret),
                self.seal_text("boards.name", b, row.name),
                self.seal("boards.author_key", b, row.author_key),
                self.seal("boards.relays", b, msgpack.packb(list(row.relays))), row.joined_at)

    def set_board_relays(self, board_id: bytes, relays: Iterable[str]) -> None:
        with self.write():
            self._exec("UPDATE boards SET relays = ? WHERE board_id = ?",
                       (self.seal("boards.relays", board_id, msgpack.packb(list(relays))),
                        board_id))

    def boards(self) -> list[BoardRow]:
        out = []
        for r in self._query("SELECT * FROM boards"):
            b = _bytes(r[0])
            relays = _unpack(self.open("boards.relays", b, r[4]), list)
            out.append(BoardRow(b, self.open("boards.secret", b, r[1]),
                                self.open_text("boards.name", b, r[2]),
                                self.open("boards.author_key", b, r[3]),
                                tuple(str(x) for x in relays), _int(r[5])))
        out.sort(key=lambda row: (row.joined_at, row.name))
        return out

    # ------------------------------------------------------------------ envelopes

    def heads(self, board_id: bytes) -> dict[bytes, FeedHead]:
        """The newest envelope held per author (SQLite returns the MAX row's ``hash``)."""
        rows = self._query(
            "SELECT author, MAX(seq), hash FROM envelopes WHERE board_id = ? GROUP BY author",
            (board_id,),
        )
        return {_bytes(a): FeedHead(_int(s), _bytes(h)) for a, s, h in rows}

    def held_hashes(self, board_id: bytes, author: bytes, lo: int, hi: int) -> dict[int, bytes]:
        rows = self._query(
            "SELECT seq, hash FROM envelopes WHERE board_id = ? AND author = ? "
            "AND seq BETWEEN ? AND ?",
            (board_id, author, lo, hi),
        )
        return {_int(s): _bytes(h) for s, h in rows}

    def insert_envelopes(self, board_id: bytes, rows: Iterable[NewEnvelope]) -> int:
        """Insert ``(author, seq, hash, data, change_hash)`` rows; returns the last row id.

        Must run inside :meth:`write`.
        """
        sql = ("INSERT INTO envelopes (board_id, author, seq, hash, data, change_hash) "
               "VALUES (?, ?, ?, ?, ?, ?)")
        rows = list(rows)
        try:
            if len(rows) == 1:
                return int(self._con.execute(sql, (board_id, *rows[0])).lastrowid or 0)
            self._con.executemany(sql, ((board_id, *row) for row in rows))
        except sqlite3.DatabaseError as exc:
            raise StorageError(f"store write failed: {exc}") from exc
        return self.last_id()

    def read_feed(self, board_id: bytes, author: bytes, after: int, max_bytes: int) -> list[bytes]:
        """Envelopes ``after+1, after+2, ...`` of one author: at least one (if held), then
        as many as fit in ``max_bytes``."""
        out: list[bytes] = []
        total = 0
        cur = self._con.execute(
            "SELECT data FROM envelopes WHERE board_id = ? AND author = ? AND seq > ? "
            "ORDER BY seq", (board_id, author, after),
        )
        try:
            for (data,) in cur:
                if out and total + len(data) > max_bytes:
                    break
                out.append(bytes(data))
                total += len(data)
        finally:
            cur.close()
        return out

    def last_id(self) -> int:
        rows = self._query("SELECT MAX(id) FROM envelopes")
        return _int(rows[0][0] or 0)

    def envelopes_since(self, board_id: bytes, after_id: int) -> list[EnvelopeRow]:
        """Envelopes of a board that arrived after row ``after_id``, in arrival order."""
        rows = self._query(
            # "+board_id": scan the rowid range after ``after_id`` (recent rows), not
            # the board's whole index; a separate arrival index would cost every insert.
            "SELECT id, author, seq, hash, data, change_hash FROM envelopes "
            "WHERE id > ? AND +board_id = ? ORDER BY id",
            (after_id, board_id),
        )
        return [_envelope_row(r) for r in rows]

    def change_index(self, board_id: bytes) -> list[tuple[int, bytes, int, bytes | None]]:
        """``(id, author, seq, change_hash)`` of every envelope of a board."""
        rows = self._query(
            "SELECT id, author, seq, change_hash FROM envelopes WHERE board_id = ?", (board_id,)
        )
        return [(_int(i), _bytes(a), _int(s), None if h is None else _bytes(h))
                for i, a, s, h in rows]

    def envelopes_by_id(self, ids: Sequence[int]) -> list[EnvelopeRow]:
        out: list[EnvelopeRow] = []
        for start in range(0, len(ids), 500):
            chunk = ids[start : start + 500]
            marks = ",".join("?" * len(chunk))
            out.extend(_envelope_row(r) for r in self._query(
                "SELECT id, author, seq, hash, data, change_hash FROM envelopes "
                f"WHERE id IN ({marks}) ORDER BY author, seq", chunk))
        out.sort(key=lambda r: (r.author, r.seq))
        return out

    def envelopes(self, board_id: bytes) -> Iterator[bytes]:
        """Every envelope of a board, per author in seq order."""
        cur = self._con.execute(
            "SELECT data FROM envelopes WHERE board_id = ? ORDER BY author, seq", (board_id,)
        )
        for (data,) in cur:
            yield bytes(data)

    def board_sizes(self) -> dict[bytes, int]:
        """Bytes held per board id: envelopes, checkpoints, and the two envelopes of each
        fork proof."""
        rows = self._query(
            "SELECT board_id, SUM(n) FROM (SELECT board_id, LENGTH(data) AS n FROM envelopes "
            "UNION ALL SELECT board_id, LENGTH(data) FROM checkpoints "
            "UNION ALL SELECT board_id, LENGTH(first) + LENGTH(second) FROM forks) "
            "GROUP BY board_id")
        return {_bytes(b): _int(n) for b, n in rows}

    def envelope_boards(self) -> dict[bytes, int]:
        """Every board id with envelopes held, and how many."""
        rows = self._query("SELECT board_id, COUNT(*) FROM envelopes GROUP BY board_id")
        return {_bytes(b): _int(n) for b, n in rows}

    def set_change_hashes(self, rows: Iterable[tuple[bytes, int]]) -> None:
        """Record ``(change_hash, id)`` for envelopes that were decrypted after arrival."""
        try:
            self._con.executemany("UPDATE envelopes SET change_hash = ? WHERE id = ?", rows)
        except sqlite3.DatabaseError as exc:
            raise StorageError(f"store write failed: {exc}") from exc

    def envelope_at(self, board_id: bytes, author: bytes, seq: int) -> bytes | None:
        rows = self._query("SELECT data FROM envelopes WHERE board_id = ? AND author = ? "
                           "AND seq = ?", (board_id, author, seq))
        return None if not rows else _bytes(rows[0][0])

    def delete_feed_from(self, board_id: bytes, author: bytes, seq: int) -> None:
        """Delete the author's envelopes from ``seq`` on, and a checkpoint that reaches it
        (a checkpoint cannot be cut: it goes whole)."""
        self._exec("DELETE FROM envelopes WHERE board_id = ? AND author = ? AND seq >= ?",
                   (board_id, author, seq))
        self._exec("DELETE FROM checkpoints WHERE board_id = ? AND author = ? AND seq >= ?",
                   (board_id, author, seq))

    # ------------------------------------------------------------------ checkpoints

    def put_checkpoint(self, board_id: bytes, author: bytes, seq: int, hash_: bytes,
                       data: bytes) -> None:
        """Keep a verified checkpoint: one per author, the one reaching furthest."""
        self._exec(
            "INSERT INTO checkpoints VALUES (?, ?, ?, ?, ?) ON CONFLICT (board_id, author) "
            "DO UPDATE SET seq = excluded.seq, hash = excluded.hash, data = excluded.data "
            "WHERE excluded.seq > checkpoints.seq", (board_id, author, seq, hash_, data))

    def checkpoint(self, board_id: bytes, author: bytes) -> tuple[int, bytes] | None:
        """``(seq, bytes)`` of the author's checkpoint, if one is held."""
        rows = self._query("SELECT seq, data FROM checkpoints WHERE board_id = ? AND author = ?",
                           (board_id, author))
        return None if not rows else (_int(rows[0][0]), _bytes(rows[0][1]))

    def checkpoint_seqs(self, board_id: bytes) -> dict[bytes, int]:
        """``author -> seq`` of every checkpoint held of a board."""
        return {_bytes(a): _int(s) for a, s in self._query(
            "SELECT author, seq FROM checkpoints WHERE board_id = ?", (board_id,))}

    # ------------------------------------------------------------------ snapshots

    def snapshot(self, board_id: bytes) -> SnapshotRow | None:
        rows = self._query(
            "SELECT doc, vector, sections, max_ops, changes FROM snapshots WHERE board_id = ?",
            (board_id,),
        )
        if not rows:
            return None
        doc, vector, sections, max_ops, changes = rows[0]
        b = board_id
        return SnapshotRow(self.open("snapshots.doc", b, doc),
                           _unpack(self.open("snapshots.vector", b, vector), dict),
                           _unpack(self.open("snapshots.sections", b, sections), dict),
                           _unpack(self.open("snapshots.max_ops", b, max_ops), dict),
                           _int(changes))

    def delete_snapshot(self, board_id: bytes) -> None:
        self._exec("DELETE FROM snapshots WHERE board_id = ?", (board_id,))

    def put_snapshot(self, board_id: bytes, snap: SnapshotRow, now: int) -> None:
        """Store a snapshot unless the stored one already covers more changes."""
        with self.write():
            self._exec(
                "INSERT INTO snapshots VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (board_id) DO "
                "UPDATE SET doc = excluded.doc, vector = excluded.vector, "
                "sections = excluded.sections, max_ops = excluded.max_ops, "
                "changes = excluded.changes, saved_at = excluded.saved_at "
                "WHERE excluded.changes > snapshots.changes",
                self.snapshot_values(board_id, snap, now),
            )

    def snapshot_values(self, board_id: bytes, snap: SnapshotRow, now: int) -> tuple[object, ...]:
        """A snapshot's row as stored (sealed if the store is protected)."""
        b = board_id
        return (b, self.seal("snapshots.doc", b, snap.doc),
                self.seal("snapshots.vector", b, msgpack.packb(snap.vector)),
                self.seal("snapshots.sections", b, msgpack.packb(snap.sections)),
                self.seal("snapshots.max_ops", b, msgpack.packb(snap.max_ops)),
                snap.changes, now)

    # ------------------------------------------------------------------ rejections

    def record_rejection(
        self, board_id: bytes, author: bytes, seq: int, hash_: bytes, code: str, detail: str,
        data: bytes | None, now: int, change_hash: bytes | None = None,
    ) -> None:
        self._exec(
            "INSERT OR IGNORE INTO rejections VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (board_id, author, seq, hash_, code,
             self.seal_text("rejections.detail", rejection_row(board_id, author, seq, hash_),
                            detail), data, change_hash, now),
        )

    def rejection_count(self, board_id: bytes, author: bytes) -> int:
        rows = self._query("SELECT COUNT(*) FROM rejections WHERE board_id = ? AND author = ?",
                           (board_id, author))
        return _int(rows[0][0])

    def rejected_hashes(self, board_id: bytes, codes: Iterable[str]) -> set[bytes]:
        """Hashes of envelopes refused on this board with one of ``codes``."""
        wanted = list(codes)
        marks = ",".join("?" * len(wanted))
        rows = self._query(f"SELECT hash FROM rejections WHERE board_id = ? AND code IN ({marks})",
                           (board_id, *wanted))
        return {_bytes(h) for (h,) in rows}

    # ------------------------------------------------------------------ forks

    def forks(self, board_id: bytes) -> dict[bytes, ForkRow]:
        """The proven fork of each forked author of a board."""
        rows = self._query("SELECT author, seq, first, second FROM forks WHERE board_id = ?",
                           (board_id,))
        return {_bytes(a): ForkRow(_bytes(a), _int(s), _bytes(f), _bytes(x))
                for a, s, f, x in rows}

    def record_fork(self, board_id: bytes, fork: ForkRow, now: int) -> bool:
        """Keep the proof if it is the author's first or lowest; must run inside
        :meth:`write`. Returns True if it was kept."""
        rows = self._query("SELECT seq FROM forks WHERE board_id = ? AND author = ?",
                           (board_id, fork.author))
        if rows and _int(rows[0][0]) <= fork.seq:
            return False
        self._exec("INSERT OR REPLACE INTO forks VALUES (?, ?, ?, ?, ?, ?)",
                   (board_id, fork.author, fork.seq, fork.first, fork.second, now))
        return True

    def rejections(self, board_id: bytes) -> list[tuple[bytes, int, str, str]]:
        rows = self._query(
            "SELECT author, seq, code, detail, hash FROM rejections WHERE board_id = ? "
            "ORDER BY at, author, seq", (board_id,),
        )
        return [(_bytes(a), _int(s), str(c),
                 self.open_text("rejections.detail",
                                rejection_row(board_id, _bytes(a), _int(s), _bytes(h)), d))
                for a, s, c, d, h in rows]

    # ------------------------------------------------------------------ maintenance

    def integrity_check(self) -> list[str]:
        """SQLite's full integrity check: ``[]`` when the file is sound."""
        rows = self._query("PRAGMA integrity_check")
        problems = [str(r[0]) for r in rows]
        return [] if problems == ["ok"] else problems

    def counts(self) -> Mapping[str, int]:
        rows = self._query(
            "SELECT (SELECT COUNT(*) FROM boards), (SELECT COUNT(*) FROM envelopes), "
            "(SELECT COUNT(*) FROM rejections)"
        )
        boards, envelopes, rejections = (_int(x) for x in rows[0])
        return {"boards": boards, "envelopes": envelopes, "rejections": rejections}


def rejection_row(board_id: bytes, author: bytes, seq: int, hash_: bytes) -> bytes:
    """The row a rejection's sealed detail is bound to."""
    return board_id + author + seq.to_bytes(8, "big", signed=True) + hash_


def _envelope_row(r: tuple[object, ...]) -> EnvelopeRow:
    i, a, s, e, d, h = r
    return EnvelopeRow(_int(i), _bytes(a), _int(s), _bytes(e), _bytes(d),
                       None if h is None else _bytes(h))


def _bytes(value: object) -> bytes:
    if isinstance(value, bytes):
        return value
    raise StorageError(f"the store holds {type(value).__name__} where bytes belong; is it corrupt?")


def _int(value: object) -> int:
    if isinstance(value, int):
        return value
    raise StorageError(f"the store holds {type(value).__name__} where a number belongs")


_T = TypeVar("_T", list[Any], dict[Any, Any])


def _unpack(value: object, kind: type[_T]) -> _T:
    try:
        out = msgpack.unpackb(_bytes(value), strict_map_key=False)
    except (ValueError, msgpack.UnpackException) as exc:
        raise StorageError("the store holds an undecodable record; is it corrupt?") from exc
    if not isinstance(out, kind):
        raise StorageError("the store holds a record of the wrong shape; is it corrupt?")
    return out
