"""A board of a running node: :class:`~p2paid.Board`'s API with async writes that share
commits, and a stream of events."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable, Iterable
from typing import Any, Final, TypeVar, final

import trio

from p2paid.board.board import Board
from p2paid.board.model import BoardEvent
from p2paid.board.relayplan import RelaySuggestion
from p2paid.errors import UsageError
from p2paid.node.asyncmember import AsyncDeviceBoard, AsyncMemberBoard, like
from p2paid.node.subscription import EventSubscription
from p2paid.storage.devices import Device

__all__ = ["AsyncBoard", "AsyncDeviceBoard"]

log = logging.getLogger("p2paid.node.node")

#: Events buffered per subscriber; a subscriber that falls further behind loses events
#: (and is told: :class:`~p2paid.errors.EventsLostError`).
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
class AsyncBoard(AsyncMemberBoard):
    """One joined board of a running node. Obtain it from :class:`~p2paid.Node`.

    The same methods as :class:`~p2paid.Board`, with the same arguments (the domain
    ones from :class:`~p2paid.node.asyncmember.AsyncMemberBoard`; :meth:`as_device`
    gives them as a paired device). Every write
    is a coroutine that returns once the change is durable; connected peers get it
    at once. Concurrent writes share one commit. Reads are the board's own (quick,
    from memory).

    Args:
        board: the board of the node's store.
        changed: called with the board id after each group of writes (the node pushes
            them to peers and publishes events).
        relays_changed: called after the board's relays changed (the node dials).
    """

    def __init__(self, board: Board, changed: Callable[[bytes], None],
                 relays_changed: Callable[[], None]) -> None:
        self.board = board
        self.member: Board = board
        self._changed = changed
        self._relays_changed = relays_changed
        self._subscribers: set[EventSubscription] = set()
        self._queue: list[_Pending] = []
        self._wake = trio.Event()

    def __repr__(self) -> str:
        return f"<AsyncBoard {self.board.name!r}>"

    def as_device(self, device: Device | str) -> AsyncDeviceBoard:
        """This board as a paired device (see :meth:`Board.as_device`): the same reads
        and writes, acting as the device's own member; its writes go through this
        board's writer task.

        Raises:
            NotFoundError: no such device, or it was paired for another board.
            RevokedDeviceError: the device was revoked.
        """
        return AsyncDeviceBoard(self, self.board.as_device(device))

    @property
    def relays(self) -> tuple[str, ...]:
        """The board's own relays (from its invite, added or accepted here)."""
        return self.board.relays

    @like(Board.invite)
    def invite(self, relays: Iterable[str] | None = None) -> str:
        return self.board.invite(relays)

    # ------------------------------------------------------------------ reads

    @like(Board.relays_in_use)
    def relays_in_use(self) -> list[str]:
        return self.board.relays_in_use()

    @like(Board.suggested_relays)
    def suggested_relays(self, *, rejected: bool = False) -> list[RelaySuggestion]:
        return self.board.suggested_relays(rejected=rejected)

    @like(Board.export_automerge)
    def export_automerge(self) -> bytes:
        return self.board.export_automerge()

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

    async def run_writer(self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                         ) -> None:
        """The board's writer task (started by the node)."""
        task_status.started()
        while True:
            await self._wake.wait()
            self._wake = trio.Event()
            batch, self._queue = self._queue[:MAX_GROUP], self._queue[MAX_GROUP:]
            if self._queue:
                self._wake.set()
            self._commit(batch)
            self._changed(self.board.id)

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

    async def _relay_op(self, op: Callable[[], _T]) -> _T:
        result = await self._submit(op)
        self._relays_changed()
        return result

    @like(Board.publish_relays)
    async def publish_relays(self, relays: Iterable[str]) -> None:
        hints = tuple(relays)
        await self._relay_op(lambda: self.board.publish_relays(hints))

    @like(Board.add_relay)
    async def add_relay(self, address: str) -> None:
        await self._relay_op(lambda: self.board.add_relay(address))

    @like(Board.accept_relay)
    async def accept_relay(self, address: str) -> str:
        return await self._relay_op(lambda: self.board.accept_relay(address))

    @like(Board.reject_relay)
    async def reject_relay(self, address: str) -> str:
        return await self._relay_op(lambda: self.board.reject_relay(address))

    @like(Board.remove_relay)
    async def remove_relay(self, address: str) -> bool:
        return await self._relay_op(lambda: self.board.remove_relay(address))

    # ------------------------------------------------------------------ events

    async def events(self, *, buffer: int = EVENT_BUFFER) -> AsyncIterator[BoardEvent]:
        """Every change on this board from now on, local or remote, as it happens.

        ``async for event in board.events(): ...``; several subscribers may listen.
        A subscriber that falls more than ``buffer`` events behind gets the events
        before the gap, then :class:`~p2paid.errors.EventsLostError` (its ``count``
        says how many it missed): read the board again and subscribe again.
        """
        with self.subscribe(buffer=buffer) as subscription:
            while True:
                for event in await subscription.next_batch():
                    yield event

    def subscribe(self, *, buffer: int | None = EVENT_BUFFER) -> EventSubscription:
        """Subscribe to the board's events, to take them a batch at a time:
        ``with board.subscribe() as sub: batch = await sub.next_batch()``.

        ``buffer=None`` keeps every event until taken, for a subscriber that always
        keeps up (one that counts or summarises, as ``p2paid run``'s log does);
        otherwise see :meth:`events`.
        """
        self._subscribers = {s for s in self._subscribers if not s.closed}
        if not self._subscribers:
            self.board.track_events()
            self.board.take_events()  # drop what happened before anyone listened
        subscription = EventSubscription(self.board.name, buffer)
        self._subscribers.add(subscription)
        return subscription

    @property
    def subscribers(self) -> int:
        """Subscriptions open now (:meth:`events` and :meth:`subscribe`)."""
        return sum(not s.closed for s in self._subscribers)

    def publish_events(self) -> None:
        """Hand the board's new events to every subscriber (called by the node)."""
        events = self.board.take_events()
        for subscription in list(self._subscribers):
            if subscription.closed:
                self._subscribers.discard(subscription)
            elif not subscription.put(events):
                log.warning("board %r: an events() subscriber is %s events behind; "
                            "dropping until it catches up (it is told how many)",
                            self.board.name, f"{subscription.buffer:,}")

