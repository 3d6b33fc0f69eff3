""":class:`PgStore`: the envelope-store port on PostgreSQL, shared by a relay's processes.

A pool of connections (psycopg_pool) in autocommit mode; :meth:`PgStore.write` takes one
for the calling thread, so several threads (and processes) write at once, each in its own
transaction. ``(board_id, author, seq)`` is the table's unique key, so the database
refuses a second envelope at one position whatever the writers do. The store keeps
``board_bytes`` (per board) in the transaction that changes a board and adds the
transaction's change to ``total_bytes`` just before it commits, so that the row every
writer shares is held only for the commit; a writer that passes ``total_cap`` is refused
(:class:`TotalFullError`) when the commit would take the cluster past it.

Commits are synchronous (``synchronous_commit`` is set on for every connection): a
write that returned is on the server's disk.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Final, final

import psycopg
from psycopg import errors as pg_errors
from psycopg_pool import ConnectionPool, PoolTimeout

from p2paid.core.feed import FeedHead
from p2paid.errors import StorageError
from p2paid.storage.base import ForkRow, NewEnvelope
from p2paid.storage.pg.schema import check_version, pg_message

__all__ = ["ConflictError", "PgStore", "TotalFullError", "is_postgres_url"]

_READ_CHUNK: Final = 256
_COPY_FROM: Final = 8
_CONFLICTS: Final = (pg_errors.UniqueViolation, pg_errors.SerializationFailure,
                     pg_errors.DeadlockDetected)

Row = tuple[Any, ...]


def is_postgres_url(text: str | None) -> bool:
    """Whether ``--store`` names a PostgreSQL database (else: the data dir's SQLite)."""
    return bool(text) and str(text).startswith(("postgresql://", "postgres://"))


class ConflictError(StorageError):
    """A concurrent writer took the position, or the database chose this transaction as
    a deadlock's victim: the write rolled back and may be tried again."""


class TotalFullError(StorageError):
    """The commit would take the cluster's bytes past ``total_cap``; it rolled back."""


@dataclass(slots=True)
class _Tx:
    con: psycopg.Connection[Row]
    total_cap: int | None
    depth: int = 1
    delta: int = 0


def _error(exc: psycopg.Error, what: str) -> StorageError:
    if isinstance(exc, _CONFLICTS):
        return ConflictError(f"{what}: {pg_message(exc)}")
    return StorageError(f"{what}: {pg_message(exc)}")


def _configure(con: psycopg.Connection[Row]) -> None:
    con.execute("SET synchronous_commit = on")


@final
class PgStore:
    """The relay cluster's store in one PostgreSQL database. Thread-safe.

    Raises:
        StorageError: from every method when PostgreSQL fails or cannot be reached
            (:class:`ConflictError` when trying again may succeed).
    """

    def __init__(self, url: str, *, pool_size: int = 8, timeout: float = 30.0,
                 check_schema: bool = True) -> None:
        self.url = url
        self._local = threading.local()
        # One connection first: a wrong address, name or password is said at once, in
        # PostgreSQL's words (the pool would retry for ``timeout`` and log each try).
        try:
            psycopg.connect(url, connect_timeout=max(1, int(timeout))).close()
        except psycopg.Error as exc:
            raise StorageError(f"cannot connect to {safe_url(url)}: {pg_message(exc)}") from exc
        self._pool: ConnectionPool[psycopg.Connection[Row]] = ConnectionPool(
            url, min_size=1, max_size=pool_size, kwargs={"autocommit": True},
            configure=_configure, check=ConnectionPool.check_connection, open=False,
            timeout=timeout, reconnect_timeout=24 * 3600, name="p2paid-relay")
        try:
            self._pool.open(wait=True, timeout=timeout)
        except PoolTimeout as exc:
            self._pool.close()
            raise StorageError(f"cannot connect to {safe_url(url)}: {exc}") from exc
        if check_schema:
            try:
                with self._pool.connection() as con:
                    check_version(con)
            except BaseException:
                self._pool.close()
                raise

    def close(self) -> None:
        self._pool.close()

    # ------------------------------------------------------------------ transactions

    @contextlib.contextmanager
    def write(self, total_cap: int | None = None) -> Iterator[None]:
        """A write transaction on this thread's connection; committed (synchronously)
        on exit. Nested use joins the outer transaction.

        Raises:
            TotalFullError: ``total_cap`` would be exceeded (nothing was written).
        """
        tx: _Tx | None = getattr(self._local, "tx", None)
        if tx is not None:
            tx.depth += 1
            try:
                yield
            finally:
                tx.depth -= 1
            return
        try:
            con = self._pool.getconn()
        except (PoolTimeout, psycopg.Error) as exc:
            raise StorageError(f"the relay database is unavailable: {exc}") from exc
        tx = self._local.tx = _Tx(con, total_cap)
        try:
            con.execute("BEGIN")
            yield
            self._finish(tx)
        except BaseException as exc:
            with contextlib.suppress(psycopg.Error):
                if not con.closed:
                    con.execute("ROLLBACK")
            if isinstance(exc, psycopg.Error):
                raise _error(exc, "relay database write failed") from exc
            raise
        finally:
            self._local.tx = None
            self._pool.putconn(con)

    @staticmethod
    def _finish(tx: _Tx) -> None:
        if tx.delta:
            row = tx.con.execute("UPDATE total_bytes SET bytes = bytes + %s WHERE id = 1 "
                                 "RETURNING bytes", (tx.delta,)).fetchone()
            if (tx.total_cap is not None and tx.delta > 0 and row is not None
                    and int(row[0]) > tx.total_cap):
                raise TotalFullError("the relay holds as many bytes as it may")
        tx.con.execute("COMMIT")

    @contextlib.contextmanager
    def _con(self) -> Iterator[psycopg.Connection[Row]]:
        tx: _Tx | None = getattr(self._local, "tx", None)
        if tx is not None:
            yield tx.con
            return
        try:
            with self._pool.connection() as con:
                yield con
        except PoolTimeout as exc:
            raise StorageError(f"the relay database is unavailable: {exc}") from exc

    def _tx(self) -> _Tx:
        tx: _Tx | None = getattr(self._local, "tx", None)
        if tx is None:
            raise StorageError("a store write outside a write transaction")
        return tx

    def execute(self, sql: str, args: Sequence[object] = ()) -> list[Row]:
        """Run one statement (on this thread's transaction, if any); its rows.

        Raises:
            StorageError: PostgreSQL failed.
        """
        try:
            with self._con() as con:
                cur = con.execute(sql.encode(), args)
                return cur.fetchall() if cur.description is not None else []
        except psycopg.Error as exc:
            raise _error(exc, "relay database query failed") from exc

    # ------------------------------------------------------------------ envelopes

    def heads(self, board_id: bytes) -> dict[bytes, FeedHead]:
        rows = self.execute(
            "SELECT DISTINCT ON (author) author, seq, hash FROM envelopes "
            "WHERE board_id = %s ORDER BY author, seq DESC", (board_id,))
        return {bytes(a): FeedHead(int(s), bytes(h)) for a, s, h in rows}

    def heads_of(self, board_id: bytes, authors: Iterable[bytes]) -> dict[bytes, FeedHead]:
        """:meth:`heads` of these authors only (a batch's: the board's other feeds need
        not be read on every upload)."""
        rows = self.execute(
            "SELECT DISTINCT ON (author) author, seq, hash FROM envelopes "
            "WHERE board_id = %s AND author = ANY(%s) ORDER BY author, seq DESC",
            (board_id, list(set(authors))))
        return {bytes(a): FeedHead(int(s), bytes(h)) for a, s, h in rows}

    def held_hashes(self, board_id: bytes, author: bytes, lo: int, hi: int) -> dict[int, bytes]:
        rows = self.execute("SELECT seq, hash FROM envelopes WHERE board_id = %s AND "
                            "author = %s AND seq BETWEEN %s AND %s", (board_id, author, lo, hi))
        return {int(s): bytes(h) for s, h in rows}

    def envelope_at(self, board_id: bytes, author: bytes, seq: int) -> bytes | None:
        rows = self.execute("SELECT data FROM envelopes WHERE board_id = %s AND author = %s "
                            "AND seq = %s", (board_id, author, seq))
        return bytes(rows[0][0]) if rows else None

    def insert_envelopes(self, board_id: bytes, rows: Iterable[NewEnvelope]) -> int:
        """Store new envelopes (and count their bytes); the arrival id of the last one."""
        tx = self._tx()
        batch = list(rows)
        if not batch:
            return 0
        try:
            with tx.con.cursor() as cur:
                if len(batch) < _COPY_FROM:
                    cur.executemany(
                        "INSERT INTO envelopes (board_id, author, seq, hash, data, change_hash) "
                        "VALUES (%s, %s, %s, %s, %s, %s)", [(board_id, *r) for r in batch])
                else:
                    with cur.copy("COPY envelopes (board_id, author, seq, hash, data, "
                                  "change_hash) FROM STDIN (FORMAT BINARY)") as copy:
                        copy.set_types(["bytea", "bytea", "int8", "bytea", "bytea", "bytea"])
                        for r in batch:
                            copy.write_row((board_id, *r))
                last = cur.execute("SELECT currval(pg_get_serial_sequence('envelopes', 'id'))"
                                   ).fetchone()
        except psycopg.Error as exc:
            raise _error(exc, "relay database write failed") from exc
        size = sum(len(r[3]) for r in batch)
        self._add_bytes(board_id, size, len(batch))
        return int(last[0]) if last else 0

    def _add_bytes(self, board_id: bytes, size: int, count: int) -> None:
        self.execute("INSERT INTO board_bytes VALUES (%s, %s, %s) ON CONFLICT (board_id) DO "
                     "UPDATE SET bytes = board_bytes.bytes + excluded.bytes, "
                     "envelopes = board_bytes.envelopes + excluded.envelopes",
                     (board_id, size, count))
        self._tx().delta += size

    def read_feed(self, board_id: bytes, author: bytes, after: int, max_bytes: int) -> list[bytes]:
        out: list[bytes] = []
        total = 0
        while True:
            rows = self.execute(
                "SELECT seq, data FROM envelopes WHERE board_id = %s AND author = %s AND "
                "seq > %s ORDER BY seq LIMIT %s", (board_id, author, after, _READ_CHUNK))
            for seq, data in rows:
                if out and total + len(data) > max_bytes:
                    return out
                out.append(bytes(data))
                total += len(data)
                after = int(seq)
            if len(rows) < _READ_CHUNK:
                return out

    def delete_feed_from(self, board_id: bytes, author: bytes, seq: int) -> None:
        rows = self.execute(
            "WITH gone AS (DELETE FROM envelopes WHERE board_id = %s AND author = %s AND "
            "seq >= %s RETURNING length(data) AS n) SELECT COALESCE(SUM(n), 0), COUNT(*) "
            "FROM gone", (board_id, author, seq))
        size, count = int(rows[0][0]), int(rows[0][1])
        if count:
            self._add_bytes(board_id, -size, -count)

    # ------------------------------------------------------------------ refusals, forks

    def record_rejection(
        self, board_id: bytes, author: bytes, seq: int, hash_: bytes, code: str, detail: str,
        data: bytes | None, now: int, change_hash: bytes | None = None,
    ) -> None:
        self._tx()
        self.execute("INSERT INTO rejections VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s) "
                     "ON CONFLICT DO NOTHING",
                     (board_id, author, seq, hash_, code, detail, data, change_hash, now))

    def rejection_count(self, board_id: bytes, author: bytes) -> int:
        rows = self.execute("SELECT COUNT(*) FROM rejections WHERE board_id = %s AND "
                            "author = %s", (board_id, author))
        return int(rows[0][0])

    def forks(self, board_id: bytes) -> dict[bytes, ForkRow]:
        rows = self.execute("SELECT author, seq, first, second FROM forks WHERE board_id = %s",
                            (board_id,))
        return {bytes(a): ForkRow(bytes(a), int(s), bytes(f), bytes(x)) for a, s, f, x in rows}

    def record_fork(self, board_id: bytes, fork: ForkRow, now: int) -> bool:
        self._tx()
        rows = self.execute("SELECT seq, length(first) + length(second) FROM forks "
                            "WHERE board_id = %s AND author = %s FOR UPDATE",
                            (board_id, fork.author))
        if rows and int(rows[0][0]) <= fork.seq:
            return False
        self.execute("INSERT INTO forks VALUES (%s, %s, %s, %s, %s, %s) ON CONFLICT "
                     "(board_id, author) DO UPDATE SET seq = excluded.seq, "
                     "first = excluded.first, second = excluded.second, at = excluded.at",
                     (board_id, fork.author, fork.seq, fork.first, fork.second, now))
        old = int(rows[0][1]) if rows else 0
        self._add_bytes(board_id, len(fork.first) + len(fork.second) - old, 0)
        return True

    def board_sizes(self) -> dict[bytes, int]:
        rows = self.execute("SELECT board_id, bytes FROM board_bytes WHERE bytes > 0")
        return {bytes(b): int(n) for b, n in rows}

    # ------------------------------------------------------------------ the cluster's own

    def lock_board(self, board_id: bytes) -> int:
        """Lock the board for this transaction (writers of one board take turns: its
        feeds and its byte count stay exact); the bytes it holds."""
        self._tx()
        self.execute("INSERT INTO board_bytes VALUES (%s, 0, 0) ON CONFLICT DO NOTHING",
                     (board_id,))
        rows = self.execute("SELECT bytes FROM board_bytes WHERE board_id = %s FOR UPDATE",
                            (board_id,))
        return int(rows[0][0])

    def lock_key(self, key: int) -> None:
        """A transaction-scoped advisory lock on a 64-bit ``key``."""
        self._tx()
        self.execute("SELECT pg_advisory_xact_lock(%s)", (key,))

    def total_bytes(self) -> int:
        """Bytes the cluster holds (committed)."""
        rows = self.execute("SELECT bytes FROM total_bytes WHERE id = 1")
        return int(rows[0][0]) if rows else 0

    def envelope_counts(self) -> dict[bytes, tuple[int, int]]:
        """``board -> (envelopes, bytes)`` of every board holding something."""
        rows = self.execute("SELECT board_id, envelopes, bytes FROM board_bytes "
                            "WHERE bytes > 0 OR envelopes > 0")
        return {bytes(b): (int(n), int(s)) for b, n, s in rows}

    def notify(self, channel: str, payload: str) -> None:
        """``NOTIFY`` sent when this transaction commits (not at all if it rolls back)."""
        self._tx()
        self.execute("SELECT pg_notify(%s, %s)", (channel, payload))


def safe_url(url: str) -> str:
    """A database URL without its password, for messages and logs."""
    try:
        info = psycopg.conninfo.conninfo_to_dict(url)
    except psycopg.Error:
        return "the relay database"
    host = info.get("host", "localhost")
    return f"postgresql://{info.get('user', '')}@{host}:{info.get('port', 5432)}/" \
           f"{info.get('dbname', '')}"
