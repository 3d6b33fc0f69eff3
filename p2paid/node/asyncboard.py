"""A board of a running node: :class:`~p2paid.Board`'s API with async writes that share
commits, and a stream of events."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable, Iterable
from typing import Any, Final, TypeVar, Unpack, final

import trio

from p2paid.board.board import Board, ItemChanges, ItemFields, ItemFilters
from p2paid.board.model import BoardEvent, Category, Claim, Item, ItemKind, Member
from p2paid.board.relayplan import RelaySuggestion
from p2paid.core.identity import AuthorId
from p2paid.core.invite import BoardId
from p2paid.errors import UsageError
from p2paid.node.subscription import EventSubscription

__all__ = ["AsyncBoard"]

log = logging.getLogger("p2paid.node.node")

#: Events buffered per subscriber; a subscriber that falls further behind loses events
#: (and is told: :class:`~p2paid.errors.EventsLostError`).
EVENT_BUFFER: Final = 4096
#: Most writes committed together.
MAX_GROUP: Final = 256

_T = TypeVar("_T")
_F = TypeVar("_F", bound=Callable[..., Any])


class _Pending:
    """One submitted write and, once done, its result or error."""

    __slots__ = ("done", "error", "op", "result")

    def __init__(self, op: Callable[[], Any]) -> None:
        self.op = op
        self.done = trio.Event()
        self.result: Any = None
        self.error: BaseException | None = None


def _like(sync: Callable[..., object]) -> Callable[[_F], _F]:
    """Give an async mirror the docstring of the :class:`Board` method it runs."""
    def decorate(method: _F) -> _F:
        method.__doc__ = sync.__doc__
        return method
    return decorate


@final
class AsyncBoard:
    """One joined board of a running node. Obtain it from :class:`~p2paid.Node`.

    The same methods as :class:`~p2paid.Board`, with the same arguments. Every write
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
        self._changed = changed
        self._relays_changed = relays_changed
        self._subscribers: set[EventSubscription] = set()
        self._queue: list[_Pending] = []
        self._wake = trio.Event()

    def __repr__(self) -> str:
        return f"<AsyncBoard {self.board.name!r}>"

    @property
    def id(self) -> BoardId:
        return self.board.id

    @property
    def name(self) -> str:
        return self.board.name

    @property
    def author(self) -> AuthorId:
        """The local member's author id on this board."""
        return self.board.author

    @property
    def author_fingerprint(self) -> str:
        return self.board.author_fingerprint

    @property
    def relays(self) -> tuple[str, ...]:
        """The board's own relays (from its invite, added or accepted here)."""
        return self.board.relays

    @_like(Board.invite)
    def invite(self, relays: Iterable[str] | None = None) -> str:
        return self.board.invite(relays)

    # ------------------------------------------------------------------ reads

    @_like(Board.items)
    def items(self, *, kind: ItemKind | str | None = None, status: str | None = None,
              category: Category | str | None = None) -> list[Item]:
        return self.board.items(kind=kind, status=status, category=category)

    @_like(Board.needs)
    def needs(self, **filters: Unpack[ItemFilters]) -> list[Item]:
        return self.board.needs(**filters)

    @_like(Board.offers)
    def offers(self, **filters: Unpack[ItemFilters]) -> list[Item]:
        return self.board.offers(**filters)

    @_like(Board.get)
    def get(self, item_id: str) -> Item:
        return self.board.get(item_id)

    @_like(Board.my_claims)
    def my_claims(self) -> list[Claim]:
        return self.board.my_claims()

    @_like(Board.display_name)
    def display_name(self, author: bytes | None = None) -> str:
        return self.board.display_name(author)

    @property
    def member_count(self) -> int:
        return self.board.member_count

    @_like(Board.members)
    def members(self) -> list[Member]:
        return self.board.members()

    @_like(Board.me)
    def me(self) -> Member:
        return self.board.me()

    @_like(Board.relays_in_use)
    def relays_in_use(self) -> list[str]:
        return self.board.relays_in_use()

    @_like(Board.suggested_relays)
    def suggested_relays(self, *, rejected: bool = False) -> list[RelaySuggestion]:
        return self.board.suggested_relays(rejected=rejected)

    @_like(Board.export_automerge)
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

    @_like(Board.post)
    async def post(self, kind: ItemKind | str, title: str, **fields: Unpack[ItemFields]) -> Item:
        return await self._submit(lambda: self.board.post(kind, title, **fields))

    @_like(Board.post_need)
    async def post_need(self, title: str, **fields: Unpack[ItemFields]) -> Item:
        return await self._submit(lambda: self.board.post_need(title, **fields))

    @_like(Board.post_offer)
    async def post_offer(self, title: str, **fields: Unpack[ItemFields]) -> Item:
        return await self._submit(lambda: self.board.post_offer(title, **fields))

    @_like(Board.edit)
    async def edit(self, item_id: str, **changes: Unpack[ItemChanges]) -> Item:
        return await self._submit(lambda: self.board.edit(item_id, **changes))

    @_like(Board.fulfil)
    async def fulfil(self, item_id: str) -> Item:
        return await self._submit(lambda: self.board.fulfil(item_id))

    @_like(Board.withdraw)
    async def withdraw(self, item_id: str) -> Item:
        return await self._submit(lambda: self.board.withdraw(item_id))

    @_like(Board.reopen)
    async def reopen(self, item_id: str) -> Item:
        return await self._submit(lambda: self.board.reopen(item_id))

    @_like(Board.claim)
    async def claim(self, item_id: str, *, quantity: int | None = None, note: str = "") -> Claim:
        return await self._submit(
            lambda: self.board.claim(item_id, quantity=quantity, note=note))

    @_like(Board.unclaim)
    async def unclaim(self, item_id: str) -> list[Claim]:
        return await self._submit(lambda: self.board.unclaim(item_id))

    @_like(Board.set_display_name)
    async def set_display_name(self, name: str) -> None:
        await self._submit(lambda: self.board.set_display_name(name))

    @_like(Board.publish_relays)
    async def publish_relays(self, relays: Iterable[str]) -> None:
        hints = tuple(relays)
        await self._relay_op(lambda: self.board.publish_relays(hints))

    @_like(Board.add_relay)
    async def add_relay(self, address: str) -> None:
        await self._relay_op(lambda: self.board.add_relay(address))

    @_like(Board.accept_relay)
    async def accept_relay(self, address: str) -> str:
        return await self._relay_op(lambda: self.board.accept_relay(address))

    @_like(Board.reject_relay)
    async def reject_relay(self, address: str) -> str:
        return await self._relay_op(lambda: self.board.reject_relay(address))

    @_like(Board.remove_relay)
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

