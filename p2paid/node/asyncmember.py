"""The async domain API of one member of a running node's board: reads, and writes that
go through the board's writer task (durable before they return).

:class:`AsyncMemberBoard` mirrors :class:`~p2paid.board.member.MemberBoard`;
:class:`~p2paid.node.asyncboard.AsyncBoard` (the node's own member) adds sync, relays
and events, and :class:`AsyncDeviceBoard` is a paired device, obtained from
:meth:`AsyncBoard.as_device <p2paid.node.asyncboard.AsyncBoard.as_device>`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar, Unpack, final

from p2paid.board.deviceboard import DeviceBoard
from p2paid.board.member import ItemChanges, ItemFields, ItemFilters, MemberBoard
from p2paid.board.model import Category, Claim, Item, ItemKind, Member
from p2paid.core.identity import AuthorId
from p2paid.core.invite import BoardId
from p2paid.storage.devices import Device

__all__ = ["AsyncDeviceBoard", "AsyncMemberBoard"]

_T = TypeVar("_T")
_F = TypeVar("_F", bound=Callable[..., Any])


def like(sync: Callable[..., object]) -> Callable[[_F], _F]:
    """Give an async mirror the docstring of the synchronous method it runs."""
    def decorate(method: _F) -> _F:
        method.__doc__ = sync.__doc__
        return method
    return decorate


class AsyncMemberBoard:
    """The same reads and writes as :class:`~p2paid.board.member.MemberBoard`, with the
    same arguments; each write is a coroutine that returns once the change is durable.
    Subclasses set :attr:`member` and run writes in :meth:`_submit`."""

    #: the synchronous member this mirrors
    member: MemberBoard

    async def _submit(self, op: Callable[[], _T]) -> _T:
        """Run a write in the board's writer task; return once it is durable."""
        raise NotImplementedError

    @property
    def id(self) -> BoardId:
        return self.member.id

    @property
    def name(self) -> str:
        return self.member.name

    @property
    def author(self) -> AuthorId:
        """The member's author id on this board."""
        return self.member.author

    @property
    def author_fingerprint(self) -> str:
        return self.member.author_fingerprint

    # ------------------------------------------------------------------ reads

    @like(MemberBoard.items)
    def items(self, *, kind: ItemKind | str | None = None, status: str | None = None,
              category: Category | str | None = None) -> list[Item]:
        return self.member.items(kind=kind, status=status, category=category)

    @like(MemberBoard.needs)
    def needs(self, **filters: Unpack[ItemFilters]) -> list[Item]:
        return self.member.needs(**filters)

    @like(MemberBoard.offers)
    def offers(self, **filters: Unpack[ItemFilters]) -> list[Item]:
        return self.member.offers(**filters)

    @like(MemberBoard.get)
    def get(self, item_id: str) -> Item:
        return self.member.get(item_id)

    @like(MemberBoard.my_claims)
    def my_claims(self) -> list[Claim]:
        return self.member.my_claims()

    @like(MemberBoard.display_name)
    def display_name(self, author: bytes | None = None) -> str:
        return self.member.display_name(author)

    @property
    def member_count(self) -> int:
        return self.member.member_count

    @like(MemberBoard.members)
    def members(self) -> list[Member]:
        return self.member.members()

    @like(MemberBoard.me)
    def me(self) -> Member:
        return self.member.me()

    # ------------------------------------------------------------------ writes

    @like(MemberBoard.post)
    async def post(self, kind: ItemKind | str, title: str, **fields: Unpack[ItemFields]) -> Item:
        return await self._submit(lambda: self.member.post(kind, title, **fields))

    @like(MemberBoard.post_need)
    async def post_need(self, title: str, **fields: Unpack[ItemFields]) -> Item:
        return await self._submit(lambda: self.member.post_need(title, **fields))

    @like(MemberBoard.post_offer)
    async def post_offer(self, title: str, **fields: Unpack[ItemFields]) -> Item:
        return await self._submit(lambda: self.member.post_offer(title, **fields))

    @like(MemberBoard.edit)
    async def edit(self, item_id: str, **changes: Unpack[ItemChanges]) -> Item:
        return await self._submit(lambda: self.member.edit(item_id, **changes))

    @like(MemberBoard.fulfil)
    async def fulfil(self, item_id: str) -> Item:
        return await self._submit(lambda: self.member.fulfil(item_id))

    @like(MemberBoard.withdraw)
    async def withdraw(self, item_id: str) -> Item:
        return await self._submit(lambda: self.member.withdraw(item_id))

    @like(MemberBoard.reopen)
    async def reopen(self, item_id: str) -> Item:
        return await self._submit(lambda: self.member.reopen(item_id))

    @like(MemberBoard.claim)
    async def claim(self, item_id: str, *, quantity: int | None = None, note: str = "") -> Claim:
        return await self._submit(
            lambda: self.member.claim(item_id, quantity=quantity, note=note))

    @like(MemberBoard.unclaim)
    async def unclaim(self, item_id: str) -> list[Claim]:
        return await self._submit(lambda: self.member.unclaim(item_id))

    @like(MemberBoard.set_display_name)
    async def set_display_name(self, name: str) -> None:
        await self._submit(lambda: self.member.set_display_name(name))


@final
class AsyncDeviceBoard(AsyncMemberBoard):
    """A running node's board as one paired device (see
    :class:`~p2paid.board.deviceboard.DeviceBoard`). Its writes share the board's
    writer task and commits with the node's own member's; a write made after the
    device is revoked raises :class:`~p2paid.errors.RevokedDeviceError`.

    Args:
        owner: the board's own async member, whose writer task runs the writes.
        member: the board as the device.
    """

    def __init__(self, owner: AsyncMemberBoard, member: DeviceBoard) -> None:
        self._owner = owner
        self.member: DeviceBoard = member

    def __repr__(self) -> str:
        device = self.member.device
        return f"<AsyncDeviceBoard {self.name!r} as device {device.name!r} ({device.id})>"

    @property
    def device(self) -> Device:
        """The device, as it was when this was made."""
        return self.member.device

    async def _submit(self, op: Callable[[], _T]) -> _T:
        return await self._owner._submit(op)
