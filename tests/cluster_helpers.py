"""Helpers for the relay-cluster tests: ``p2paid relay --store postgresql://...`` processes
sharing one key file and one database (a real PostgreSQL server, ``tests/pg_helpers.py``),
and what the database holds."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import psycopg
from relay_helpers import RelayProcess

from p2paid.core.identity import NodeKey
from p2paid.relay.keyfile import encode_key

__all__ = ["ClusterProcesses", "db_envelopes", "db_forks", "db_positions", "write_key_file"]


def write_key_file(path: Path, key: NodeKey | None = None) -> Path:
    """A relay key file (mode 600) for every process of a cluster."""
    path.write_text(encode_key(key or NodeKey.generate()) + "\n")
    os.chmod(path, 0o600)
    return path


class ClusterProcesses:
    """``count`` relay processes on ``url``, each on its own port, one key."""

    def __init__(self, url: str, root: Path, count: int = 2,
                 extra: Sequence[str] = (), levels: bool = False) -> None:
        self.url = url
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        self.key_file = write_key_file(root / "relay.key")
        self.extra = list(extra)
        self.levels = levels
        self.procs = [self.spawn(i) for i in range(count)]

    def spawn(self, index: int, port: int = 0) -> RelayProcess:
        return RelayProcess(self.root / f"dir{index}", self.root / "logs", port=port,
                            levels=self.levels,
                            extra=["--store", self.url, "--key-file", str(self.key_file),
                                   "--pool-size", "4", *self.extra])

    async def wait(self) -> None:
        for proc in self.procs:
            await proc.wait_address()

    async def stop(self) -> None:
        for proc in self.procs:
            await proc.stop()


def _rows(url: str, sql: str, args: Sequence[object]) -> list[tuple[Any, ...]]:
    with psycopg.connect(url) as con:
        return con.execute(sql.encode(), args).fetchall()


def db_envelopes(url: str, board_id: bytes) -> set[bytes]:
    """Raw envelopes the cluster holds for ``board_id``."""
    return {bytes(r[0]) for r in _rows(url, "SELECT data FROM envelopes WHERE board_id = %s",
                                       (board_id,))}


def db_positions(url: str, board_id: bytes) -> list[tuple[bytes, int]]:
    """Every ``(author, seq)`` stored for the board (with repeats, if there were any)."""
    return [(bytes(a), int(s)) for a, s in _rows(
        url, "SELECT author, seq FROM envelopes WHERE board_id = %s", (board_id,))]


def db_forks(url: str, board_id: bytes) -> list[tuple[bytes, int]]:
    return [(bytes(a), int(s)) for a, s in _rows(
        url, "SELECT author, seq FROM forks WHERE board_id = %s", (board_id,))]
