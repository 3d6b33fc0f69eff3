"""One subscriber of a board's events: a buffer the node fills and the subscriber
empties, a batch at a time.

A subscriber that falls more than its buffer behind is not waited for (the node
never blocks on a slow reader): the events that do not fit are counted, not kept,
until the subscriber has taken what came before them; then it learns how many it
lost (:class:`~p2paid.errors.EventsLostError`).
"""

from __future__ import annotations

from collections.abc import Sequence
from types import TracebackType
from typing import final

import trio

from p2paid.board.model import BoardEvent
from p2paid.errors import EventsLostError

__all__ = ["EventSubscription"]


@final
class EventSubscription:
    """The events of one board for one subscriber (from :meth:`AsyncBoard.subscribe`).

    Use it as a context manager (leaving it unsubscribes), and await
    :meth:`next_batch` for everything that happened since the previous call.

    Args:
        board_name: for the message of :class:`EventsLostError`.
        buffer: most events kept for it; None keeps every event until taken (for a
            subscriber that always keeps up, such as one that only counts).
    """

    def __init__(self, board_name: str, buffer: int | None) -> None:
        self.board_name = board_name
        self.buffer = buffer
        self.closed = False
        self._events: list[BoardEvent] = []
        self._lost = 0
        self._wake = trio.Event()

    def __enter__(self) -> EventSubscription:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def close(self) -> None:
        """Unsubscribe (as leaving the ``with`` block does)."""
        self.closed = True

    @property
    def lost(self) -> int:
        """Events not kept since the subscriber last took its batch."""
        return self._lost

    def put(self, events: Sequence[BoardEvent]) -> bool:
        """Keep ``events`` (the node calls this); False if some did not fit and were
        counted as lost (the first time a gap opens only, so it is reported once)."""
        if not events:
            return True
        opened = False
        if self._lost:
            self._lost += len(events)  # a gap stays open until the subscriber takes
        else:
            room = len(events) if self.buffer is None else max(
                0, self.buffer - len(self._events))
            self._events.extend(events[:room])
            self._lost = len(events) - min(room, len(events))
            opened = self._lost > 0
        self._wake.set()
        return not opened

    async def next_batch(self) -> list[BoardEvent]:
        """Every event since the previous batch, oldest first (waits for one).

        Raises:
            EventsLostError: events after the previous batch were lost; the
                subscription goes on with what happens from now on.
        """
        while not self._events and not self._lost:
            await self._wake.wait()
            self._wake = trio.Event()
        if self._events:
            batch, self._events = self._events, []
            return batch
        lost, self._lost = self._lost, 0
        raise EventsLostError(self.board_name, lost, self.buffer)
