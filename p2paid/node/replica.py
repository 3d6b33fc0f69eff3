"""The node's side of replication: a :class:`~p2paid.core.replication.Replica` over a store.

Joined boards are offered to peers by tag and to relays by id. Envelopes from
peers go through :meth:`Board.receive` (verify, store, apply); the store is the
source for what peers lack. Callers learn what changed from ``changed_boards``.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import final

from p2paid.board.board import Board
from p2paid.board.store import Store
from p2paid.core.checkpoint import is_checkpoint
from p2paid.core.codes import RefusedCode, Role
from p2paid.core.feed import FeedHead
from p2paid.core.replication import BoardAccess, Received

__all__ = ["DEFER_APPLY_FROM", "StoreReplica"]

#: Batches of at least this many envelopes are applied when the link goes idle.
DEFER_APPLY_FROM = 100

@final
class StoreReplica:
    """Adapts a :class:`~p2paid.board.store.Store` to the replication protocol.

    Args:
        store: the node's store.
    """

    @property
    def role(self) -> Role:
        return Role.NODE

    def __init__(self, store: Store) -> None:
        self._store = store
        self._boards: dict[bytes, Board] = {}
        #: boards whose local vector grew through :meth:`receive` since last taken
        self.changed_boards: set[bytes] = set()
        #: boards with checked, stored changes not yet applied (see :meth:`flush`)
        self.deferred: set[bytes] = set()
        #: cumulative work, for ``p2paid bench`` and logs
        self.stats: dict[str, float] = {"received": 0, "receive_s": 0.0, "sent": 0,
                                        "read_s": 0.0, "applied": 0}

    def accepts(self, board_id: bytes) -> tuple[str, str] | None:
        return (RefusedCode.NOT_A_RELAY, "this is a node; it does not carry boards by id")

    def board(self, board_id: bytes) -> Board:
        board = self._boards.get(board_id)
        if board is None:
            board = self._boards[board_id] = self._store.board(board_id)
        return board

    def boards(self) -> Sequence[BoardAccess]:
        return [BoardAccess(b.id, b.keys.tag_key) for b in self._store.boards()]

    def flush(self, max_changes: int | None = None) -> set[bytes]:
        """Apply deferred changes: all, or at most ``max_changes`` in this call (call
        again while :attr:`has_deferred`, so that each step stays short). Returns the
        boards that had changes applied."""
        t0 = time.perf_counter()
        touched: set[bytes] = set()
        budget = max_changes
        for board_id in list(self.deferred):
            log = self.board(board_id).log
            applied = log.flush(budget)
            self.stats["applied"] += len(applied)
            if applied or not log.has_deferred:
                touched.add(board_id)
            if not log.has_deferred:
                self.deferred.discard(board_id)
            if budget is not None:
                budget -= max(len(applied), 1)
                if budget <= 0:
                    break
        self.stats["receive_s"] += time.perf_counter() - t0
        return touched

    @property
    def has_deferred(self) -> bool:
        """Some board has stored, checked changes not yet applied."""
        return bool(self.deferred)

    def vector(self, board_id: bytes) -> Mapping[bytes, int]:
        return self.board(board_id).version_vector()

    def heads(self, board_id: bytes) -> Mapping[bytes, FeedHead]:
        return self.board(board_id).heads()

    def hash_at(self, board_id: bytes, author: bytes, seq: int) -> bytes | None:
        return self.board(board_id).log.hash_at(author, seq)

    def forked(self, board_id: bytes) -> Mapping[bytes, int]:
        return self.board(board_id).forked

    def fork_evidence(self, board_id: bytes, author: bytes) -> tuple[bytes, bytes] | None:
        fork = self.board(board_id).log.forks().get(author)
        return None if fork is None else (fork.first, fork.second)

    def record_fork(self, board_id: bytes, first: bytes, second: bytes) -> bool:
        news = self.board(board_id).record_fork(first, second)
        if news:
            self.changed_boards.add(board_id)
        return news

    def read(self, board_id: bytes, author: bytes, after: int, max_bytes: int) -> list[bytes]:
        t0 = time.perf_counter()
        envelopes = self.board(board_id).log.read_feed(author, after, max_bytes)
        self.stats["read_s"] += time.perf_counter() - t0
        self.stats["sent"] += len(envelopes)
        return envelopes

    def checkpoint_for(self, board_id: bytes, author: bytes) -> bytes | None:
        """The author's checkpoint, to send a peer that holds nothing of the author."""
        return self.board(board_id).log.checkpoint(author)

    def precheck(self, board_id: bytes, envelopes: Sequence[bytes]) -> None:
        """Check the checkpoints among ``envelopes`` ahead of :meth:`receive` (safe in a
        worker thread: see :meth:`p2paid.board.log.BoardLog.precheck`). Only a board
        already open here is checked: opening one reads the store, which belongs to
        the owning thread."""
        board = self._boards.get(board_id)
        if board is not None:
            board.precheck(envelopes)

    def receive(self, board_id: bytes, envelopes: Sequence[bytes]) -> Received:
        t0 = time.perf_counter()
        # Large batches (an initial sync, a checkpoint) are applied together once the
        # link is idle; small ones (live posts) at once.
        defer = len(envelopes) >= DEFER_APPLY_FROM or any(
            is_checkpoint(raw) for raw in envelopes)
        report = self.board(board_id).receive(envelopes, defer_apply=defer)
        if defer:
            self.deferred.add(board_id)
        self.stats["receive_s"] += time.perf_counter() - t0
        self.stats["received"] += report.accepted
        if report.accepted or report.applied or report.forks:
            self.changed_boards.add(board_id)
        return Received(report.accepted, report.duplicates, [r.error for r in report.rejected])
