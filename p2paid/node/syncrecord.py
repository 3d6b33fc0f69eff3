"""When each board last synced with a peer or relay, kept in the store
(:meth:`~p2paid.board.store.Store.record_sync`) so that ``p2paid status`` shows it
after the node has stopped.

A sync is noted on every batch received and every "in sync"; the store is written
at most once every :data:`RECORD_INTERVAL` seconds per board (each write is a
SQLite transaction), and what is pending is written on :meth:`SyncRecorder.flush`.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from typing import Final, final

from p2paid.board.model import now_ms
from p2paid.board.store import Store
from p2paid.errors import P2paidError

__all__ = ["RECORD_INTERVAL", "SyncRecorder"]

log = logging.getLogger("p2paid.node.node")

#: Seconds between two writes of one board's last sync.
RECORD_INTERVAL: Final = 5.0


@final
class SyncRecorder:
    """Notes syncs and writes them to ``store``, rate-limited per board.

    Args:
        store: where :meth:`Store.record_sync` keeps them.
        interval: least seconds between two writes for one board.
        clock: monotonic seconds.
    """

    def __init__(self, store: Store, interval: float = RECORD_INTERVAL,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._store = store
        self._interval = interval
        self._clock = clock
        self._written: dict[bytes, float] = {}
        self._pending: dict[bytes, tuple[int, str]] = {}

    def synced(self, board_id: bytes, via: str) -> None:
        """``board_id`` synced just now (``via``: ``peer`` or ``relay``)."""
        self._pending[board_id] = (now_ms(), via)
        if self._clock() - self._written.get(board_id, -math.inf) >= self._interval:
            self.flush()

    def flush(self, *, everything: bool = False) -> None:
        """Write what is pending and due (``everything``: all of it, as on stopping).
        A store that cannot be written is logged, and tried again next time."""
        now = self._clock()
        due = [b for b in self._pending
               if everything or now - self._written.get(b, -math.inf) >= self._interval]
        for board_id in due:
            at, via = self._pending[board_id]
            try:
                self._store.record_sync([board_id], via, at)
            except P2paidError as exc:
                log.warning("cannot record the last sync: %s", exc)
                return
            del self._pending[board_id]
            self._written[board_id] = now
