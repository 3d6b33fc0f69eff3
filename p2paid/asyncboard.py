"""A board of a running node: async posts and claims, and a stream of events."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any, Final, final

import trio

from .board import Board
from .model import BoardEvent, Claim, Item

if TYPE_CHECKING:
    from .node import Node

__all__ = ["AsyncBoard"]

log = logging.getLogger("p2paid.node")

#: Events buffered per subscriber; a subscriber that falls further behind loses events.
EVENT_BUFFER: Final = 4096


@final
class AsyncBoard:
    """One joined board of a running node. Obtain it from :class:`~p2paid.Node`.

    Every write returns once the change is durable; connected peers get it at
    once. Reads are the same as :class:`~p2paid.Board`'s.
    """

    def __init__(self, node: Node, board: Board) -> None:
        self._node = node
        self.board = board
        self._subscribers: set[trio.MemorySendChannel[BoardEvent]] = set()

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

    def _written(self) -> None:
        self._node.board_changed(self.board.id)

    async def post_need(self, title: str, **fields: Any) -> Item:
        """Post a need (fields as :meth:`Board.post`)."""
        item = self.board.post_need(title, **fields)
        self._written()
        return item

    async def post_offer(self, title: str, **fields: Any) -> Item:
        item = self.board.post_offer(title, **fields)
        self._written()
        return item

    async def claim(self, item_id: str, *, quantity: int | None = None, note: str = "") -> Claim:
        claim = self.board.claim(item_id, quantity=quantity, note=note)
        self._written()
        return claim

    async def unclaim(self, item_id: str) -> list[Claim]:
        claims = self.board.unclaim(item_id)
        self._written()
        return claims

    async def edit(self, item_id: str, **fields: Any) -> Item:
        item = self.board.edit(item_id, **fields)
        self._written()
        return item

    async def fulfil(self, item_id: str) -> Item:
        item = self.board.fulfil(item_id)
        self._written()
        return item

    async def withdraw(self, item_id: str) -> Item:
        item = self.board.withdraw(item_id)
        self._written()
        return item

    async def set_display_name(self, name: str) -> None:
        self.board.set_display_name(name)
        self._written()

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
