"""What other processes write to a running node's store, picked up within a second.

The CLI (``p2paid post``, ``bundle import``, ``board join``) writes to the same
SQLite file while a node runs. The watcher polls two cheap values (the newest
arrival id and the set of joined boards), applies what is new, and tells the node;
once the node has been quiet for a while it saves board snapshots, one board per
poll, since each costs time in proportion to its board.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Final, final

import trio

from p2paid.board.store import Store

__all__ = ["SNAPSHOT_WHEN_QUIET", "STORE_POLL_INTERVAL", "StoreWatcher"]

log = logging.getLogger("p2paid.node.storewatch")

#: How often the store is polled for what other processes stored.
STORE_POLL_INTERVAL: Final = 0.25
#: Seconds without new envelopes after which board snapshots are saved.
SNAPSHOT_WHEN_QUIET: Final = 5.0


@final
class StoreWatcher:
    """Polls the store for envelopes and boards other processes added.

    Args:
        store: the node's store.
        board_changed: called with a board id that gained envelopes.
        boards_changed: called when the set of joined boards changed.
        before_poll: awaited before each poll (the node applies work left over).
    """

    def __init__(self, store: Store, *, board_changed: Callable[[bytes], None],
                 boards_changed: Callable[[], None],
                 before_poll: Callable[[], Awaitable[None]]) -> None:
        self._store = store
        self._board_changed = board_changed
        self._boards_changed = boards_changed
        self._before_poll = before_poll
        self._last_id = store.last_arrival()
        self._board_ids = {b.id for b in store.boards()}
        self._active = False

    def note_activity(self) -> None:
        """Envelopes came in or went out: snapshots wait until the node is quiet."""
        self._active = True

    def note_boards(self) -> None:
        """This process changed the set of boards (it needs no telling)."""
        self._board_ids = {b.id for b in self._store.boards()}

    def poll(self) -> bool:
        """Apply what other processes stored; True if anything was new."""
        boards = {b.id for b in self._store.boards()}
        if boards != self._board_ids:
            log.info("the set of joined boards changed; reconnecting to peers")
            self._board_ids = boards
            self._boards_changed()
        last = self._store.last_arrival()
        if last == self._last_id:
            return False
        self._last_id = last
        for board in self._store.boards():
            before = board.seen_id
            board.refresh()
            if board.seen_id != before:
                self._board_changed(board.id)
        return True

    async def run(self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                  ) -> None:
        """Poll every :data:`STORE_POLL_INTERVAL` until cancelled."""
        task_status.started()
        quiet_since = trio.current_time()
        while True:
            await trio.sleep(STORE_POLL_INTERVAL)
            await self._before_poll()
            if self.poll() or self._active:
                quiet_since = trio.current_time()
                self._active = False
            elif trio.current_time() - quiet_since > SNAPSHOT_WHEN_QUIET:
                for board in self._store.boards():  # one at a time: each costs O(board)
                    if board.maybe_snapshot() or board.log.maybe_checkpoint():
                        break
