"""The node's connected peers: one connection per node id, and a pulse on change.

Two nodes that dial each other at once end up with two connections; both sides
keep the same one (:meth:`PeerTable.keeps_new`), so they agree without talking.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass
from typing import final

import trio

from p2paid.core.codes import CloseReason
from p2paid.core.identity import fingerprint
from p2paid.net.connection import Connection

__all__ = ["PeerInfo", "PeerTable"]

log = logging.getLogger("p2paid.node.peers")


@final
@dataclass(frozen=True, slots=True)
class PeerInfo:
    """A connected peer, as :meth:`Node.peers` and ``p2paid peers`` show it."""

    node_id: str
    fingerprint: str
    address: str
    direction: str  #: "out" (we dialled) or "in"
    connected_since: float
    shared_boards: int
    bytes_in: int
    bytes_out: int
    kind: str = "peer"  #: "relay" if it said so in its Hello, else "peer"


@final
class PeerTable:
    """Connections by the remote's node id, with waits on what changes."""

    def __init__(self, node_id: bytes) -> None:
        self._node_id = node_id
        self._conns: dict[bytes, Connection] = {}
        self._changed = trio.Event()

    def __len__(self) -> int:
        return len(self._conns)

    def __iter__(self) -> Iterator[Connection]:
        return iter(list(self._conns.values()))

    def get(self, node_id: bytes) -> Connection | None:
        return self._conns.get(node_id)

    def keeps_new(self, new: Connection) -> bool:
        """Whether ``new`` may take the place of a connection to the same peer: both
        sides keep the one opened by the smaller node id; from one opener, the older."""
        existing = self._conns.get(new.remote_id)
        if existing is None:
            return True

        def opener(c: Connection) -> bytes:
            return self._node_id if c.initiator else c.remote_id

        return opener(new) < opener(existing)

    def add(self, conn: Connection) -> None:
        """Make ``conn`` the peer's connection, closing one it replaces."""
        existing = self._conns.get(conn.remote_id)
        if existing is not None:
            existing.close(CloseReason.DUPLICATE)
        self._conns[conn.remote_id] = conn
        log.info("peer %s connected (%s, %s)", fingerprint(conn.remote_id), conn.address,
                 "outbound" if conn.initiator else "inbound")
        self.pulse()

    def discard(self, conn: Connection) -> None:
        """``conn`` ended; forget it unless another connection replaced it."""
        if self._conns.get(conn.remote_id) is conn:
            del self._conns[conn.remote_id]
            log.info("peer %s left (%s)", fingerprint(conn.remote_id),
                     conn.close_reason or "closed")
            self.pulse()

    def close(self, node_id: bytes, reason: CloseReason) -> None:
        """Close the connection to ``node_id``, if there is one."""
        conn = self._conns.get(node_id)
        if conn is not None:
            conn.close(reason)

    def info(self) -> list[PeerInfo]:
        return [
            PeerInfo(c.remote_id.hex(), fingerprint(c.remote_id), c.address,
                     "out" if c.initiator else "in", c.connected_at,
                     len(c.session.shared_boards) if c.session else 0, c.bytes_in, c.bytes_out,
                     "relay" if c.session and c.session.peer_role == "relay" else "peer")
            for c in self._conns.values()
        ]

    # ------------------------------------------------------------------ waits

    def pulse(self) -> None:
        """Wake everyone in :meth:`wait_changed`."""
        self._changed.set()
        self._changed = trio.Event()

    async def wait_changed(self) -> None:
        await self._changed.wait()

    async def wait_disconnected(self, node_id: bytes) -> None:
        while node_id in self._conns:
            await self.wait_changed()

    async def wait_for_peers(self, count: int) -> None:
        while len(self._conns) < count:
            await self.wait_changed()

    async def wait_in_sync(self, board_id: bytes | None) -> None:
        while True:
            pending = [
                c for c in self._conns.values()
                if c.session is None or not c.session.greeted or any(
                    not c.session.is_in_sync(b)
                    for b in c.session.shared_boards if board_id in (None, b))
            ]
            if not pending:
                return
            await self.wait_changed()
