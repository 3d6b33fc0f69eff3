"""A board of a running node: async posts and claims, and a stream of events."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING, Any, Final, TypeVar, final

import trio

from p2paid.board.board import Board
from p2paid.board.model import BoardEvent, Claim, Item
from p2paid.errors import UsageError

if TYPE_CHECKING:
    from p2paid.node.node import Node

__all__ = ["AsyncBoard"]

log = logging.getLogger("p2paid.node.node")

#: Events buffered per subscriber; a subscriber that falls further behind loses events.
EVENT_BUFFER: Final = 4096
#: Most writes committed together.
MAX_GROUP: Final = 256

_T = TypeVar("_T")


class _Pending:
    """One submitted write and, once done, its result or error."""

    __slots__ = ("done", "error", "op", "result")

    def __init__(self, op: Callable[[], Any]) -> None:
        self.op = op
        self.done = trio.Event()
        self.result: Any = None
        self.error: BaseException | None = None


@final
class AsyncBoard:
    """One joined board of a running node. Obtain it from :class:`~p2paid.Node`.

    Every write returns once the change is durable; connected peers get it at
    once. Concurrent writes share one commit. Reads are :class:`~p2paid.Board`'s.
    """

    def __init__(self, node: Node, board: Board) -> None:
        self._node = node
        self.board = board
        self._subscribers: set[trio.MemorySendChannel[BoardEvent]] = set()
        self._queue: list[_Pending] = []
        self._wake = trio.Event()

    def __repr__(self) -> str:
        return f"<AsyncBoard {self.board.name!r}>"

    @property
    def id(self) -> bytes:
        return self.board.id

    @property
    def name(self) -> str:
        return self.board.name

    def invite(self) -> str:
        return self.board.invite()

    # ------------------------------------------------------------------ reads

    def items(self, **filters: Any) -> list[Item]:
        """As :meth:`Board.items`."""
        return self.board.items(**filters)

    def get(self, item_id: str) -> Item:
        return self.board.get(item_id)

    # ------------------------------------------------------------------ writes

    async def _submit(self, op: Callable[[], _T]) -> _T:
        """Run a write in the board's next group commit and wait until it is durable.

        Writes submitted while a commit is in progress share the next one, so
        many concurrent writers cost one fsync per group, not one per write.
        """
        pending = _Pending(op)
        self._queue.append(pending)
        self._wake.set()
        await pending.done.wait()
        if pending.error is not None:
            raise pending.error
        return pending.result  # type: ignore[no-any-return]

    async def run_writer(self) -> None:
        """The board's writer task (started by the node)."""
        while True:
            await self._wake.wait()
            self._wake = trio.Event()
            batch, self._queue = self._queue[:MAX_GROUP], self._queue[MAX_GROUP:]
            if self._queue:
                self._wake.set()
            self._commit(batch)
            self._node.board_changed(self.board.id)

    def _commit(self, batch: list[_Pending]) -> None:
        try:
            with self.board.group():
                for pending in batch:
                    try:
                        pending.result = pending.op()
                    except UsageError as exc:  # refused before anything was written
                        pending.error = exc
        except Exception as exc:
            for pending in batch:
                if pending.error is None:
                    pending.error = exc
        finally:
            for pending in batch:
                pending.done.set()

    async def post_need(self, title: str, **fields: Any) -> Item:
        """Post a need (fields as :meth:`Board.post`); returns once it is durable."""
        return await self._submit(lambda: self.board.post_need(title, **fields))

    async def post_offer(self, title: str, **fields: Any) -> Item:
        return await self._submit(lambda: self.board.post_offer(title, **fields))

    async def claim(self, item_id: str, *, quantity: int | None = None, note: str = "") -> Claim:
        return await self._submit(
            lambda: self.board.claim(item_id, quantity=quantity, note=note))

    async def unclaim(self, item_id: str) -> list[Claim]:
        return await self._submit(lambda: self.board.unclaim(item_id))

    async def edit(self, item_id: str, **fields: Any) -> Item:
        return await self._submit(lambda: self.board.edit(item_id, **fields))

    async def fulfil(self, item_id: str) -> Item:
        return await self._submit(lambda: self.board.fulfil(item_id))

    async def withdraw(self, item_id: str) -> Item:
        return await self._submit(lambda: self.board.withdraw(item_id))

    async def set_display_name(self, name: str) -> None:
        await self._submit(lambda: self.board.set_display_name(name))

    # ------------------------------------------------------------------ events

    async def events(self) -> AsyncIterator[BoardEvent]:
        """Every change on this board from now on, local or remote, as it happens.

        ``async for event in board.events(): ...``; several subscribers may listen.
        """
        if not self._subscribers:
            self.board.track_events()
            self.board.take_events()  # drop what happened before anyone listened
        send, receive = trio.open_memory_channel[BoardEvent](EVENT_BUFFER)
        self._subscribers.add(send)
        try:
            async with receive:
                async for event in receive:
                    yield event
        finally:
            self._subscribers.discard(send)

    def publish_events(self) -> None:
        """Hand the board's new events to every subscriber (called by the node)."""
        events = self.board.take_events()
        for send in list(self._subscribers):
            for event in events:
                try:
                    send.send_nowait(event)
                except trio.WouldBlock:
                    log.warning("board %r: an events() subscriber is %d events behind; "
                                "dropping", self.board.name, EVENT_BUFFER)
                    break
                except trio.BrokenResourceError:
                    self._subscribers.discard(send)
                    break
