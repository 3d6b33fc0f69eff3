"""The domain API of a board as one member: needs, offers, claims, display name.

:class:`MemberBoard` is what :class:`~p2paid.board.board.Board` (the node's own
member) and :class:`~p2paid.board.deviceboard.DeviceBoard` (a paired device, a member
of its own) share: reads see the whole board; writes go into the member's own
section, as the next change of its own feed, signed with its own key.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, TypedDict, Unpack

from p2paid.board.document import SectionWriter, new_item_id
from p2paid.board.log import BoardLog, Clock
from p2paid.board.model import (
    DEFAULT_NEED_TTL_DAYS,
    NEVER,
    Category,
    Claim,
    ClaimStatus,
    Item,
    ItemKind,
    Member,
    Status,
    Urgency,
    clean_enum,
    clean_quantity,
    clean_text,
    clean_ttl_days,
    item_fields,
    member_label,
)
from p2paid.core.identity import AuthorId, AuthorKey, fingerprint
from p2paid.core.invite import BoardId
from p2paid.errors import AmbiguousIdError, NotFoundError, UsageError, ValidationError

__all__ = ["ItemChanges", "ItemFields", "ItemFilters", "MemberBoard"]

_UNSET: Any = object()
_OFFERS_HAVE_NO_URGENCY = "offers have no urgency (only needs do)"


class ItemFields(TypedDict, total=False):
    """The optional fields of a new need or offer (see :meth:`Board.post`)."""

    details: str
    category: Category | str
    quantity: int | None
    unit: str
    location: str
    urgency: Urgency | str
    expires_in_days: int | None


class ItemChanges(ItemFields, total=False):
    """The fields :meth:`Board.edit` changes; those left out stay as they are."""

    title: str


class ItemFilters(TypedDict, total=False):
    """Filters of :meth:`Board.needs` and :meth:`Board.offers`."""

    status: str | None
    category: Category | str | None



class MemberBoard:
    """The domain API of a board as one member: reads of the whole board, and writes
    in the member's own section and feed.

    Subclasses set the attributes below; see :class:`~p2paid.board.board.Board` (the
    node's own member) and :class:`~p2paid.board.deviceboard.DeviceBoard` (a paired
    device).
    """

    id: BoardId
    name: str
    #: the member's author id (its public key) on this board
    author: AuthorId
    _author_key: AuthorKey
    _log: BoardLog
    _clock: Clock

    def _authorize(self) -> None:
        """Called under the write lock before each write; raise to refuse it."""

    def _write(self, edit: Callable[[SectionWriter], None]) -> None:
        """Make one change in the member's section, durable as its feed's next envelope."""
        self._log.write(edit, key=self._author_key, authorize=self._authorize)

    @property
    def author_fingerprint(self) -> str:
        return fingerprint(self.author)

    def items(
        self,
        *,
        kind: ItemKind | str | None = None,
        status: str | None = None,
        category: Category | str | None = None,
    ) -> list[Item]:
        """Needs and offers, oldest first, optionally filtered.

        Args:
            status: ``open``, ``fulfilled``, ``withdrawn`` or ``expired``
                (``open`` excludes expired items).
        """
        self._log.refresh()
        now = self._clock()
        kind = None if kind is None else clean_enum(ItemKind, kind, "kind")
        category = None if category is None else clean_enum(Category, category, "category")
        if status is not None and status not in {*(s.value for s in Status), "expired"}:
            raise ValidationError("status must be one of: open, fulfilled, withdrawn, expired")
        return [
            item for item in self._log.document.items()
            if (kind is None or item.kind is kind)
            and (category is None or item.category is category)
            and (status is None or item.display_status(now) == status)
        ]

    def needs(self, **filters: Unpack[ItemFilters]) -> list[Item]:
        """Needs, oldest first, filtered as :meth:`items`."""
        return self.items(kind=ItemKind.NEED, **filters)

    def offers(self, **filters: Unpack[ItemFilters]) -> list[Item]:
        """Offers, oldest first, filtered as :meth:`items`."""
        return self.items(kind=ItemKind.OFFER, **filters)

    def get(self, item_id: str) -> Item:
        """The item whose id starts with ``item_id`` (at least 4 hex characters).

        Raises:
            NotFoundError: no item matches.
            AmbiguousIdError: several items match; give more characters.
        """
        prefix = item_id.strip().lower()
        if len(prefix) < 4:
            raise UsageError("give at least 4 characters of the item id")
        matches = [item for item in self.items() if item.id.startswith(prefix)]
        if not matches:
            raise NotFoundError(f"no need or offer with id {prefix!r} on board {self.name!r}")
        if len(matches) > 1:
            listed = ", ".join(m.id[:12] for m in matches[:5])
            raise AmbiguousIdError(f"id {prefix!r} matches {len(matches)} items ({listed}); "
                                   "give more characters")
        return matches[0]

    def my_claims(self) -> list[Claim]:
        """Your claims on other members' needs and offers (active and cancelled)."""
        self._log.refresh()
        return self._log.document.claims_by(self.author)

    def display_name(self, author: bytes | None = None) -> str:
        """The name a member (you, by default) shows on this board; "" if none."""
        self._log.refresh()
        return self._log.document.display_name(self.author if author is None else author)

    @property
    def member_count(self) -> int:
        return len(self._log.document.authors)

    def members(self) -> list[Member]:
        """Every member with a section on this board, with the display name it shows
        and whether another member shows a name that looks the same (names are not
        verified; fingerprints are)."""
        self._log.refresh()
        return self._log.document.view.members()

    def me(self) -> Member:
        """The local member, as the others see it."""
        mine = self.author.hex()
        for member in self.members():
            if member.author == mine:
                return member
        return Member(mine, "")

    def set_display_name(self, name: str) -> None:
        """Publish the name other members see next to your needs, offers and claims."""
        clean = clean_text(name, "display name")
        self._write(lambda w: w.set_name(clean))

    def post_need(self, title: str, **fields: Unpack[ItemFields]) -> Item:
        """Post a need. Keyword fields as for :meth:`post`; expires in 14 days by default."""
        fields.setdefault("expires_in_days", DEFAULT_NEED_TTL_DAYS)
        return self.post(ItemKind.NEED, title, **fields)

    def post_offer(self, title: str, **fields: Unpack[ItemFields]) -> Item:
        """Post an offer. Keyword fields as for :meth:`post`; no expiry by default."""
        return self.post(ItemKind.OFFER, title, **fields)

    def post(
        self,
        kind: ItemKind | str,
        title: str,
        *,
        details: str = "",
        category: Category | str = Category.OTHER,
        quantity: int | None = None,
        unit: str = "",
        location: str = "",
        urgency: Urgency | str = Urgency.NORMAL,
        expires_in_days: int | None = None,
    ) -> Item:
        """Post a need or an offer; returns it once it is durable.

        Args:
            kind: ``need`` or ``offer``.
            title: what is needed or offered (required; one line).
            details: more text, for instance when and how.
            category: ``food``, ``water``, ``shelter``, ... (:class:`Category`).
            quantity: how many (None: not counted); claims count against it.
            unit: what ``quantity`` counts (``kg``, ``nights``).
            location: where, in the group's own words.
            urgency: ``low``, ``normal``, ``high`` or ``critical`` (needs only).
            expires_in_days: when it lapses (None: never).

        Raises:
            UsageError: an urgency other than ``normal`` for an offer.
            ValidationError: a field is out of range (nothing is written).
        """
        kind = clean_enum(ItemKind, kind, "kind")
        if kind is ItemKind.OFFER and urgency != Urgency.NORMAL:
            raise UsageError(_OFFERS_HAVE_NO_URGENCY)
        fields = item_fields(
            kind, title, now=self._clock(), details=details, category=category,
            quantity=quantity, unit=unit, location=location, urgency=urgency,
            expires_in_days=expires_in_days,
        )
        item_id = new_item_id()
        self._write(lambda w: w.put_item(kind, item_id, fields))
        return self._own_item(kind, item_id)

    def _own_item(self, kind: ItemKind, item_id: str) -> Item:
        return self._log.document.section(self.author).items[kind][item_id]

    def _mine(self, item_id: str) -> Item:
        item = self.get(item_id)
        if item.author != self.author.hex():
            raise UsageError(
                f"{item.kind.value} {item.id[:8]} was posted by "
                f"{member_label(item.author, item.author_name, item.name_shared)}; "
                "only its author can change it"
            )
        return item

    def edit(
        self,
        item_id: str,
        *,
        title: str = _UNSET,
        details: str = _UNSET,
        category: Category | str = _UNSET,
        quantity: int | None = _UNSET,
        unit: str = _UNSET,
        location: str = _UNSET,
        urgency: Urgency | str = _UNSET,
        expires_in_days: int | None = _UNSET,
    ) -> Item:
        """Change fields of your own need or offer; leave out what stays the same.

        ``quantity=None`` removes the quantity; ``expires_in_days=None`` removes the expiry.

        Raises:
            UsageError: not your item, nothing to change, or an urgency for an offer.
            ValidationError: a field is out of range (nothing is written).
        """
        item = self._mine(item_id)
        now = self._clock()
        fields: dict[str, str | int | None] = {}
        if title is not _UNSET:
            fields["title"] = clean_text(title, "title", required=True)
        for name, value in (("details", details), ("unit", unit), ("location", location)):
            if value is not _UNSET:
                fields[name] = clean_text(value, name)
        if category is not _UNSET:
            fields["category"] = clean_enum(Category, category, "category").value
        if urgency is not _UNSET:
            if item.kind is ItemKind.OFFER:
                raise UsageError(_OFFERS_HAVE_NO_URGENCY)
            fields["urgency"] = clean_enum(Urgency, urgency, "urgency").value
        if quantity is not _UNSET:
            fields["quantity"] = clean_quantity(quantity)
        if expires_in_days is not _UNSET:
            fields["expires"] = NEVER if expires_in_days is None else (
                now + clean_ttl_days(expires_in_days))
        if not fields:
            raise UsageError("nothing to change: give at least one field")
        fields["updated"] = now
        self._write(lambda w: w.update_item(item.kind, item.id, fields))
        return self._own_item(item.kind, item.id)

    def _set_status(self, item_id: str, status: Status) -> Item:
        item = self._mine(item_id)
        if item.status is status:
            raise UsageError(f"{item.kind.value} {item.id[:8]} is already {status.value}")
        fields: Mapping[str, str | int] = {"status": status.value, "updated": self._clock()}
        self._write(lambda w: w.update_item(item.kind, item.id, fields))
        return self._own_item(item.kind, item.id)

    def fulfil(self, item_id: str) -> Item:
        """Mark your own need or offer as fulfilled."""
        return self._set_status(item_id, Status.FULFILLED)

    def withdraw(self, item_id: str) -> Item:
        """Withdraw your own need or offer."""
        return self._set_status(item_id, Status.WITHDRAWN)

    def reopen(self, item_id: str) -> Item:
        """Open again a need or offer you had fulfilled or withdrawn."""
        return self._set_status(item_id, Status.OPEN)

    def claim(self, item_id: str, *, quantity: int | None = None, note: str = "") -> Claim:
        """Pledge to meet (part of) a need, or ask for an offer.

        Raises:
            UsageError: the item is your own or not open.
        """
        item = self.get(item_id)
        if item.author == self.author.hex():
            raise UsageError("you cannot claim your own need or offer")
        if item.display_status(self._clock()) != Status.OPEN.value:
            raise UsageError(f"{item.kind.value} {item.id[:8]} is {item.display_status()}, "
                             "not open")
        quantity = clean_quantity(quantity)
        still_open = item.open_quantity
        if quantity is not None and still_open is not None and quantity > still_open:
            unit = f" {item.unit}" if item.unit else ""
            raise UsageError(
                f"{item.kind.value} {item.id[:8]} is fully claimed ({item.quantity}{unit})"
                if still_open == 0 else
                f"only {still_open} of {item.quantity}{unit} of {item.kind.value} "
                f"{item.id[:8]} are still open; claim at most {still_open}")
        now = self._clock()
        claim_id = new_item_id()
        fields: dict[str, str | int | None] = {
            "kind": item.kind.value,
            "item_author": item.author,
            "item": item.id,
            "quantity": clean_quantity(quantity),
            "note": clean_text(note, "note"),
            "status": ClaimStatus.ACTIVE.value,
            "created": now,
        }
        self._write(lambda w: w.put_claim(claim_id, fields))
        return self._log.document.section(self.author).claims[claim_id]

    def unclaim(self, item_id: str) -> list[Claim]:
        """Cancel your active claims on an item.

        Raises:
            NotFoundError: you have no active claim on it.
        """
        item = self.get(item_id)
        mine = [c for c in item.claims if c.author == self.author.hex()]
        if not mine:
            raise NotFoundError(f"you have no active claim on {item.kind.value} {item.id[:8]}")
        fields: Mapping[str, str | int] = {
            "status": ClaimStatus.CANCELLED.value, "updated": self._clock(),
        }

        def cancel(w: SectionWriter) -> None:
            for c in mine:
                w.update_claim(c.id, fields)

        self._write(cancel)
        claims = self._log.document.section(self.author).claims
        return [claims[c.id] for c in mine]
