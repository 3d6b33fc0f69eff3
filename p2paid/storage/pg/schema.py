"""The relay cluster's tables in PostgreSQL, and their versions.

``p2paid_schema`` holds one row: the version the tables are at. :func:`migrate` brings a
database (empty, or at an older version) to :data:`SCHEMA_VERSION` in one transaction,
under an advisory lock so that two operators running it at once do not collide;
:func:`check_version` is what a relay process does at start: it refuses a database
that is newer than itself, or older (run ``p2paid relay migrate``).
"""

from __future__ import annotations

from typing import Final

import psycopg

from p2paid.errors import StorageError


def pg_message(exc: psycopg.Error) -> str:
    """libpq's message on one line (it spans several, with hints on the next)."""
    return " ".join(line.strip() for line in str(exc).splitlines() if line.strip())

__all__ = ["SCHEMA_VERSION", "check_version", "migrate", "pg_message", "schema_version"]

#: 1: envelopes, rejections, forks, byte counters, tokens, introductions, clients, processes.
SCHEMA_VERSION: Final = 1
#: pg_advisory_xact_lock key of a migration (any constant the relay's other locks avoid).
_MIGRATION_LOCK: Final = 0x70327061_6964
#: What each version adds, applied in order from the database's version + 1.
_STEPS: Final[dict[int, tuple[str, ...]]] = {
    1: (
        """CREATE TABLE envelopes (
            id          BIGSERIAL PRIMARY KEY,
            board_id    BYTEA NOT NULL,
            author      BYTEA NOT NULL,
            seq         BIGINT NOT NULL,
            hash        BYTEA NOT NULL,
            data        BYTEA NOT NULL,
            change_hash BYTEA,
            UNIQUE (board_id, author, seq)
        )""",
        "CREATE INDEX envelopes_arrival ON envelopes (board_id, id)",
        """CREATE TABLE rejections (
            board_id BYTEA NOT NULL, author BYTEA NOT NULL, seq BIGINT NOT NULL,
            hash BYTEA NOT NULL, code TEXT NOT NULL, detail TEXT NOT NULL, data BYTEA,
            change_hash BYTEA, at BIGINT NOT NULL,
            PRIMARY KEY (board_id, author, seq, hash)
        )""",
        """CREATE TABLE forks (
            board_id BYTEA NOT NULL, author BYTEA NOT NULL, seq BIGINT NOT NULL,
            first BYTEA NOT NULL, second BYTEA NOT NULL, at BIGINT NOT NULL,
            PRIMARY KEY (board_id, author)
        )""",
        # Bytes held per board (envelopes and fork proofs), kept by the store in the
        # transaction that changes them; a writer locks its board's row first.
        """CREATE TABLE board_bytes (
            board_id  BYTEA PRIMARY KEY,
            bytes     BIGINT NOT NULL DEFAULT 0,
            envelopes BIGINT NOT NULL DEFAULT 0
        )""",
        # The cluster's total, updated last in a transaction (held only for its commit).
        "CREATE TABLE total_bytes (id INTEGER PRIMARY KEY CHECK (id = 1), bytes BIGINT NOT NULL)",
        "INSERT INTO total_bytes VALUES (1, 0)",
        """CREATE TABLE relay_tokens (
            token_hash BYTEA PRIMARY KEY, note TEXT NOT NULL, created BIGINT NOT NULL,
            revoked BIGINT
        )""",
        """CREATE TABLE relay_boards (
            board_id BYTEA PRIMARY KEY, client BYTEA NOT NULL, address TEXT NOT NULL,
            token_hash BYTEA, at BIGINT NOT NULL
        )""",
        "CREATE INDEX relay_boards_client ON relay_boards (client)",
        "CREATE INDEX relay_boards_address ON relay_boards (address)",
        """CREATE TABLE relay_clients (
            node_id BYTEA PRIMARY KEY, first_stored BIGINT NOT NULL
        )""",
        # One row per running relay process, refreshed every few seconds.
        """CREATE TABLE relay_processes (
            id TEXT PRIMARY KEY, host TEXT NOT NULL, pid INTEGER NOT NULL,
            address TEXT NOT NULL, started DOUBLE PRECISION NOT NULL,
            seen DOUBLE PRECISION NOT NULL, connections INTEGER NOT NULL,
            status TEXT NOT NULL
        )""",
    ),
}


def schema_version(con: psycopg.Connection[tuple[object, ...]]) -> int:
    """The database's schema version: 0 for a database without p2paid tables."""
    exists = con.execute("SELECT to_regclass('p2paid_schema') IS NOT NULL").fetchone()
    if not exists or not exists[0]:
        return 0
    row = con.execute("SELECT version FROM p2paid_schema").fetchone()
    return int(str(row[0])) if row else 0


def check_version(con: psycopg.Connection[tuple[object, ...]]) -> None:
    """Refuse a database this p2paid cannot use as it is.

    Raises:
        StorageError: the schema is newer than this p2paid, or older (or absent).
    """
    found = schema_version(con)
    if found > SCHEMA_VERSION:
        raise StorageError(f"the database has relay schema version {found}, newer than this "
                           f"p2paid ({SCHEMA_VERSION}); upgrade p2paid on this machine")
    if found < SCHEMA_VERSION:
        what = "has no relay tables yet" if found == 0 else f"is at schema version {found}"
        raise StorageError(f"the database {what}; run 'p2paid relay migrate --store URL' "
                           f"once (it brings it to version {SCHEMA_VERSION})")


def migrate(url: str) -> tuple[int, int]:
    """Bring the database at ``url`` to :data:`SCHEMA_VERSION`; ``(before, after)``.

    Raises:
        StorageError: the database is unreachable, newer than this p2paid, or a step failed.
    """
    try:
        with psycopg.connect(url) as con, con.transaction():
            con.execute("SELECT pg_advisory_xact_lock(%s)", (_MIGRATION_LOCK,))
            before = schema_version(con)
            if before > SCHEMA_VERSION:
                check_version(con)
            if before == 0:
                con.execute("CREATE TABLE p2paid_schema (version INTEGER NOT NULL)")
                con.execute("INSERT INTO p2paid_schema VALUES (0)")
            for version in range(before + 1, SCHEMA_VERSION + 1):
                for statement in _STEPS[version]:
                    con.execute(statement)
                con.execute("UPDATE p2paid_schema SET version = %s", (version,))
            return before, SCHEMA_VERSION
    except psycopg.Error as exc:
        raise StorageError(f"cannot migrate the relay database: {pg_message(exc)}") from exc
