"""One process of a relay cluster, and the cluster as ``relay status`` shows it.

:func:`open_cluster` connects a process to the cluster's database (refusing one at
another schema version) and gives it an id (host, pid and a random part).
:class:`ClusterProcess` builds the process's :class:`~p2paid.relay.server.Relay` and
starts its ``LISTEN`` task; every :data:`~p2paid.storage.runtime.STATUS_INTERVAL`
seconds the process writes a heartbeat row in ``relay_processes`` (connections,
stats) and deletes it when it stops. :func:`cluster_status` reads the cluster: the
processes whose heartbeat is fresh, and the boards, envelopes and bytes held.
"""

from __future__ import annotations

import json
import os
import socket
import time
from dataclasses import dataclass
from typing import Any, final

import trio

from p2paid.core.identity import NodeKey
from p2paid.relay.cluster import ClusterReplica
from p2paid.relay.listen import KEEPALIVES, listen_for_envelopes
from p2paid.relay.replica import RelayLimits
from p2paid.relay.server import Relay
from p2paid.storage.pg.store import PgStore
from p2paid.storage.runtime import STALE_AFTER

__all__ = ["ClusterProcess", "ClusterStatus", "cluster_status", "open_cluster"]


@final
class _Heartbeat:
    """The process's row in ``relay_processes`` (a :class:`~p2paid.relay.server.StatusSink`)."""

    def __init__(self, store: PgStore, process_id: str) -> None:
        self._store = store
        self._id = process_id

    def publish(self, status: dict[str, Any]) -> None:
        now = time.time()
        with self._store.write():
            self._store.execute(
                "INSERT INTO relay_processes VALUES (%s, %s, %s, %s, %s, %s, %s, %s) "
                "ON CONFLICT (id) DO UPDATE SET address = excluded.address, "
                "seen = excluded.seen, connections = excluded.connections, "
                "status = excluded.status",
                (self._id, socket.gethostname(), os.getpid(), str(status.get("address", "")),
                 float(status.get("started", now)), now, int(status.get("connections", 0)),
                 json.dumps(status)))

    def clear(self) -> None:
        with self._store.write():
            self._store.execute("DELETE FROM relay_processes WHERE id = %s", (self._id,))


@final
class ClusterProcess:
    """A relay process's share of the cluster: its store, replica and id."""

    def __init__(self, store: PgStore, limits: RelayLimits) -> None:
        self.store = store
        self.limits = limits
        self.id = f"{socket.gethostname()}:{os.getpid()}:{os.urandom(3).hex()}"
        self.replica = ClusterReplica(store, limits, self.id)

    def relay(self, key: NodeKey, nursery: trio.Nursery) -> Relay:
        return Relay(key, self.replica, _Heartbeat(self.store, self.id), self.limits, nursery,
                     in_thread=True, tokens_check=self.replica.tokens.check,
                     client_since=self.replica.ledger.client_since)

    async def start_tasks(self, relay: Relay, nursery: trio.Nursery) -> None:
        """Start listening for what the other processes store."""
        def on_board(board_id: bytes) -> None:
            self.replica.invalidate(board_id)
            relay.notify_board(board_id)

        def on_resync() -> None:
            self.replica.invalidate_all()
            relay.resync()

        await nursery.start(listen_for_envelopes, self.store.url, self.id, on_board, on_resync)

    def close(self) -> None:
        self.store.close()


def open_cluster(url: str, limits: RelayLimits, pool_size: int = 8) -> ClusterProcess:
    """Connect a relay process to its cluster's database (blocks).

    Raises:
        StorageError: the database is unreachable, or not at this p2paid's schema.
    """
    return ClusterProcess(PgStore(_with_keepalives(url), pool_size=pool_size), limits)


def _with_keepalives(url: str) -> str:
    if any(k in url for k in KEEPALIVES):
        return url
    extra = "&".join(f"{k}={v}" for k, v in KEEPALIVES.items())
    return url + ("&" if "?" in url else "?") + extra


@final
@dataclass(frozen=True, slots=True)
class ClusterStatus:
    """What ``relay status --store postgresql://...`` shows."""

    processes: list[dict[str, Any]]
    boards: dict[bytes, tuple[int, int]]  #: board -> (envelopes, bytes)


def cluster_status(url: str) -> ClusterStatus:
    """The cluster's live processes (fresh heartbeats) and what it holds.

    Raises:
        StorageError: the database is unreachable or at another schema version.
    """
    store = PgStore(url, pool_size=1)
    try:
        rows = store.execute("SELECT id, host, pid, address, started, seen, connections, "
                             "status FROM relay_processes WHERE seen > %s ORDER BY host, pid",
                             (time.time() - STALE_AFTER,))
        boards = store.envelope_counts()
    finally:
        store.close()
    processes = []
    for pid_, host, pid, address, started, seen, connections, status in rows:
        stats = json.loads(str(status)).get("stats")
        processes.append({"id": str(pid_), "host": str(host), "pid": int(pid),
                          "address": str(address), "started": float(started),
                          "seen": float(seen), "connections": int(connections),
                          "stats": stats})
    return ClusterStatus(processes, boards)
