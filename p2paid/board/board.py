"""A joined board: needs, offers, claims and relays, read and written by one member.

:class:`Board` is the synchronous library API for one board. Every write runs
under the store's write lock: it first catches up with envelopes that other
processes on the same data dir have stored, then makes one Automerge change,
seals it as the next envelope of the local author's feed and commits it durably
(:class:`~p2paid.board.log.BoardLog`, the board's replica engine, does that and
everything else about feeds and the document). Remote envelopes (a bundle, a peer)
go through :meth:`Board.receive`.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterable, Iterator, Mapping
from typing import Any, TypedDict, Unpack, final

from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

from p2paid.automerge.chunk import ChangeHeader
from p2paid.board import relayplan
from p2paid.board.document import BoardDocument, SectionWriter, new_item_id
from p2paid.board.log import BoardLog, Clock, ReceiveReport
from p2paid.board.model import (
    DEFAULT_NEED_TTL_DAYS,
    NEVER,
    BoardEvent,
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
    now_ms,
)
from p2paid.board.relayplan import RelaySuggestion, board_relays, normal_address
from p2paid.core.envelope import Envelope
from p2paid.core.feed import FeedHead
from p2paid.core.identity import AuthorId, AuthorKey, fingerprint
from p2paid.core.invite import MAX_RELAY_HINTS, BoardId, BoardKeys, Invite, derive_board_keys
from p2paid.core.relayaddr import RelayAddress
from p2paid.errors import (
    AmbiguousIdError,
    NotFoundError,
    StorageError,
    UsageError,
    ValidationError,
)
from p2paid.storage.base import ForkRow
from p2paid.storage.sqlite import BoardRow, Database

__all__ = ["Board", "ItemChanges", "ItemFields", "ItemFilters", "ReceiveReport"]

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


@final
class Board:
    """One joined board. Obtain it from :meth:`p2paid.Store.board`; do not construct it.

    Reads (:meth:`items`, :meth:`get`) first pick up whatever other processes
    stored. Writes return once the change is durable in the store.
    """

    def __init__(self, db: Database, row: BoardRow, *, clock: Clock = now_ms) -> None:
        self._db = db
        self._clock = clock
        self.keys: BoardKeys = derive_board_keys(row.secret)
        if self.keys.board_id != row.board_id:
            raise StorageError("a stored board's id does not match its secret")
        self.id = BoardId(row.board_id)
        self.name = row.name
        self.relays: tuple[str, ...] = row.relays
        self._author_key = AuthorKey(row.author_key)
        self.author = AuthorId(self._author_key.public)
        self._cipher = ChaCha20Poly1305(self.keys.content_key)
        self._log = BoardLog(db, self.id, self._author_key, self._cipher, self.name, clock)

    # ------------------------------------------------------------------ the replica engine

    @property
    def log(self) -> BoardLog:
        """The board's feeds and document (what replication and bundles use)."""
        return self._log

    @property
    def document(self) -> BoardDocument:
        """The board's document, loaded on first use."""
        return self._log.document

    def load(self) -> BoardDocument:
        """Load the document now (otherwise it loads on first use); returns it."""
        return self._log.load()

    def refresh(self) -> list[ChangeHeader]:
        """Apply envelopes that other processes stored since we last looked."""
        return self._log.refresh()

    def receive(self, envelopes: Iterable[bytes | Envelope], *,
                defer_apply: bool = False) -> ReceiveReport:
        """Verify, store and apply envelopes from a peer or a bundle (see
        :meth:`BoardLog.receive`)."""
        return self._log.receive(envelopes, defer_apply=defer_apply)

    def flush(self, max_changes: int | None = None) -> list[ChangeHeader]:
        """Apply changes that :meth:`receive` stored with ``defer_apply``."""
        return self._log.flush(max_changes)

    def heads(self) -> dict[bytes, FeedHead]:
        """The newest envelope held per author."""
        return self._log.heads()

    def version_vector(self) -> dict[bytes, int]:
        """``author -> highest contiguous seq`` held."""
        return self._log.version_vector()

    def envelopes(self) -> Iterable[bytes]:
        """Every stored envelope of this board, per author in seq order."""
        return self._log.envelopes()

    def forks(self) -> dict[bytes, ForkRow]:
        """Proven forks of this board's authors (each author's feed ends before its fork)."""
        return self._log.forks()

    @property
    def forked(self) -> dict[bytes, int]:
        """``author -> seq`` of each proven fork (the author's feed ends before ``seq``)."""
        return self._log.forked

    def record_fork(self, first: bytes | Envelope, second: bytes | Envelope) -> bool:
        """Learn a fork from its evidence (see :meth:`BoardLog.record_fork`)."""
        return self._log.record_fork(first, second)

    def track_events(self) -> None:
        """Record a :class:`~p2paid.model.BoardEvent` for every change from now on."""
        self._log.track_events()

    def take_events(self) -> list[BoardEvent]:
        """Events recorded since the last call (see :meth:`track_events`)."""
        return self._log.take_events()

    @contextlib.contextmanager
    def group(self) -> Iterator[None]:
        """Make every write inside one durable transaction (one commit, one fsync)."""
        with self._log.group():
            yield

    def save_snapshot(self) -> None:
        """Store the current document so the next open skips re-applying changes."""
        self._log.save_snapshot()

    def maybe_snapshot(self, threshold: int | None = None) -> bool:
        """Save a snapshot if enough changes were applied since the last."""
        return (self._log.maybe_snapshot() if threshold is None
                else self._log.maybe_snapshot(threshold))

    def close(self) -> None:
        """Save a snapshot if enough changed; the board stays usable."""
        self._log.close()

    @property
    def applied_count(self) -> int:
        return self._log.applied_count

    @property
    def seen_id(self) -> int:
        return self._log.seen_id

    def __repr__(self) -> str:
        return f"<Board {self.name!r} {self.id.hex()[:12]}>"

    @property
    def author_fingerprint(self) -> str:
        return fingerprint(self.author)

    def invite(self, relays: Iterable[str] | None = None) -> str:
        """The invite URI (board secret, name and relay hints): share it only with members."""
        hints = tuple(self.relays[-MAX_RELAY_HINTS:] if relays is None else relays)
        return Invite(self.keys.secret, self.name, hints).to_uri()

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

    def export_automerge(self) -> bytes:
        """The raw saved Automerge document, readable by any Automerge implementation."""
        self._log.refresh()
        return self._log.document.save()

    def set_display_name(self, name: str) -> None:
        """Publish the name other members see next to your needs, offers and claims."""
        clean = clean_text(name, "display name")
        self._log.write(lambda w: w.set_name(clean))

    def publish_relays(self, relays: Iterable[str]) -> None:
        """Publish relay addresses in your own section, as hints for other members."""
        hints = tuple(relays)
        self._log.write(lambda w: w.set_relays(hints))

    def add_relay(self, address: str) -> None:
        """Use a relay for this board: remember it, and publish it to the other members.

        Raises:
            InviteError: not a relay address.
        """
        text = str(RelayAddress.parse(address))
        if text in self.relays:
            return
        self.relays = (*self.relays, text)
        self._db.set_board_relays(self.id, self.relays)
        self.publish_relays(self.relays[-MAX_RELAY_HINTS:])

    def relays_in_use(self) -> list[str]:
        """The relays this board syncs through: its own (from its invite, added here,
        or accepted) and those you publish; each valid address once, in normal form.

        Relays that other members publish are not among them: they are only
        suggestions until accepted (:meth:`suggested_relays`, :meth:`accept_relay`).
        """
        self._log.refresh()
        self._reload_relays()
        return board_relays(self.relays, self._log.document.view.relays(self.author))

    def suggested_relays(self, *, rejected: bool = False) -> list[RelaySuggestion]:
        """Relays other members publish on this board that it does not use, each with
        the members who publish it (their names are not verified: compare
        fingerprints). Rejected ones only with ``rejected=True``."""
        in_use = set(self.relays_in_use())
        view = self._log.document.view
        hints = {a: view.relays(a) for a in self._log.document.authors if a != self.author}
        hints = {a: h for a, h in hints.items() if h}
        if not hints:
            return []
        members = {m.author: m for m in view.members()}
        found = relayplan.suggestions(
            self.id, self.name, [(members[a.hex()], h) for a, h in hints.items()],
            in_use, self._rejected_relays())
        return [s for s in found if rejected or not s.rejected]

    def accept_relay(self, address: str) -> str:
        """Sync this board through a relay that another member suggests. It becomes
        one of the board's own relays (so it also goes into invites made here), but
        is not published. Returns the address in normal form.

        Raises:
            InviteError: not a relay address.
            NotFoundError: no other member of this board suggests it.
        """
        text = str(RelayAddress.parse(address))
        if text in self.relays_in_use():
            return text
        if all(s.address != text for s in self.suggested_relays(rejected=True)):
            raise NotFoundError(f"no member of board {self.name!r} suggests relay {text}")
        self._set_rejected_relays(self._rejected_relays() - {text})
        self.relays = (*self.relays, text)
        self._db.set_board_relays(self.id, self.relays)
        return text

    def reject_relay(self, address: str) -> str:
        """Say that a relay another member suggests is not to be used: it is then left
        out of :meth:`suggested_relays` (it can still be accepted later).

        Raises:
            InviteError: not a relay address.
            NotFoundError: no other member of this board suggests it.
            UsageError: this board syncs through it (stop with :meth:`remove_relay`).
        """
        text = str(RelayAddress.parse(address))
        if text in self.relays_in_use():
            raise UsageError(f"board {self.name!r} syncs through {text}; "
                             "to stop, use 'p2paid relay remove'")
        if all(s.address != text for s in self.suggested_relays(rejected=True)):
            raise NotFoundError(f"no member of board {self.name!r} suggests relay {text}")
        self._set_rejected_relays(self._rejected_relays() | {text})
        return text

    def remove_relay(self, address: str) -> bool:
        """Stop syncing this board through a relay of its own (and stop publishing it,
        if you do). Returns False if the board did not use it.

        Raises:
            InviteError: not a relay address.
        """
        text = str(RelayAddress.parse(address))
        self._log.refresh()
        self._reload_relays()
        kept = tuple(r for r in self.relays if normal_address(r) != text)
        published = self._log.document.view.relays(self.author)
        unpublish = [r for r in published if normal_address(r) != text]
        if kept == self.relays and len(unpublish) == len(published):
            return False
        if kept != self.relays:
            self.relays = kept
            self._db.set_board_relays(self.id, kept)
        if len(unpublish) != len(published):
            self.publish_relays(unpublish)
        return True

    def _reload_relays(self) -> None:
        """The board's own relays as stored (another process may have changed them)."""
        for row in self._db.boards():
            if row.board_id == self.id:
                self.relays = row.relays

    def _rejected_relays(self) -> frozenset[str]:
        raw = self._db.get_meta(relayplan.REJECTED_META_PREFIX + self.id.hex())
        try:
            entries = json.loads(raw) if raw else []
        except ValueError:
            entries = []
        return frozenset(e for e in entries if isinstance(e, str))

    def _set_rejected_relays(self, addresses: Iterable[str]) -> None:
        self._db.set_meta(relayplan.REJECTED_META_PREFIX + self.id.hex(),
                          json.dumps(sorted(addresses)).encode())

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
        self._log.write(lambda w: w.put_item(kind, item_id, fields))
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
        self._log.write(lambda w: w.update_item(item.kind, item.id, fields))
        return self._own_item(item.kind, item.id)

    def _set_status(self, item_id: str, status: Status) -> Item:
        item = self._mine(item_id)
        if item.status is status:
            raise UsageError(f"{item.kind.value} {item.id[:8]} is already {status.value}")
        fields: Mapping[str, str | int] = {"status": status.value, "updated": self._clock()}
        self._log.write(lambda w: w.update_item(item.kind, item.id, fields))
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
        self._log.write(lambda w: w.put_claim(claim_id, fields))
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

        self._log.write(cancel)
        claims = self._log.document.section(self.author).claims
        return [claims[c.id] for c in mine]
