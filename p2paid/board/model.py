"""The board's domain objects: needs, offers and claims, with their limits.

These are plain frozen values. :mod:`p2paid.board.document` stores them in Automerge
and reads them back; everything read from a (possibly hostile) remote section
goes through the same validation as local input, so an invalid item is skipped
rather than shown.
"""

from __future__ import annotations

import enum
import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final, TypeVar, final

from p2paid.core.clock import now_ms
from p2paid.core.identity import fingerprint, short_fingerprint
from p2paid.core.text import shows_something, text_problem
from p2paid.errors import ValidationError

__all__ = [
    "DEFAULT_NEED_TTL_DAYS",
    "BoardEvent",
    "Category",
    "Claim",
    "ClaimStatus",
    "EventKind",
    "Item",
    "ItemKind",
    "Member",
    "Status",
    "Urgency",
    "clean_text",
    "item_fields",
    "member_label",
    "now_ms",
]


class ItemKind(enum.StrEnum):
    NEED = "need"  #: something a member asks for
    OFFER = "offer"  #: something a member can give


class Category(enum.StrEnum):
    WATER = "water"
    FOOD = "food"
    SHELTER = "shelter"
    MEDICAL = "medical"
    HYGIENE = "hygiene"
    TRANSPORT = "transport"
    MONEY = "money"
    INFORMATION = "information"
    OTHER = "other"


class Urgency(enum.StrEnum):
    LOW = "low"
    NORMAL = "normal"
    HIGH = "high"
    CRITICAL = "critical"


class Status(enum.StrEnum):
    OPEN = "open"  #: still wanted / still available
    FULFILLED = "fulfilled"  #: the author marked it done
    WITHDRAWN = "withdrawn"  #: the author took it back


class ClaimStatus(enum.StrEnum):
    ACTIVE = "active"
    CANCELLED = "cancelled"


#: Character limits per text field; quantities are integers in 1..MAX_QUANTITY.
LIMITS: Final = {
    "title": 200,
    "details": 4000,
    "unit": 30,
    "location": 200,
    "note": 500,
    "name": 60,
    "device name": 60,
}
#: Fields that may hold several lines (newline and tab allowed).
MULTILINE_FIELDS: Final = frozenset({"details", "note"})
MAX_QUANTITY: Final = 1_000_000_000
DEFAULT_NEED_TTL_DAYS: Final = 14
MAX_TTL_DAYS: Final = 366
_DAY_MS: Final = 86_400_000
#: Timestamps must fall between 2020 and 2100 (ms since the epoch).
_MIN_TIME, _MAX_TIME = 1_577_836_800_000, 4_102_444_800_000
ITEM_ID_HEX: Final = 32


_E = TypeVar("_E", bound=enum.StrEnum)


def clean_text(value: object, field_name: str, *, required: bool = False) -> str:
    """Normalise (NFC, strip) and check a text field against its limit.

    The characters allowed are those of :func:`p2paid.core.text.char_problem`; the same
    check runs on local input and on every entry read from a member's section.

    Raises:
        ValidationError: not a string, too long, empty when required, or holds a
            character that :func:`p2paid.core.text.text_problem` refuses.
    """
    if not isinstance(value, str):
        raise ValidationError(f"{field_name} must be text")
    text = unicodedata.normalize("NFC", value).strip()
    limit = LIMITS["name" if field_name == "display name" else field_name]
    if required and not text:
        raise ValidationError(f"{field_name} cannot be empty")
    if len(text) > limit:
        raise ValidationError(f"{field_name} is at most {limit} characters (got {len(text)})")
    problem = text_problem(text, multiline=field_name in MULTILINE_FIELDS)
    if problem is not None:
        raise ValidationError(f"{field_name} {problem}")
    if text and (required or field_name == "display name") and not shows_something(text):
        raise ValidationError(f"{field_name} shows nothing visible")
    return text


def clean_quantity(value: object) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValidationError("quantity must be a whole number")
    if not 1 <= value <= MAX_QUANTITY:
        raise ValidationError(f"quantity must be between 1 and {MAX_QUANTITY:,}")
    return value


def clean_enum(kind: type[_E], value: object, field_name: str) -> _E:
    if isinstance(value, str):
        try:
            return kind(value)
        except ValueError:
            pass
    choices = ", ".join(m.value for m in kind)
    raise ValidationError(f"{field_name} must be one of: {choices}")


def clean_time(value: object, field_name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not _MIN_TIME <= value <= _MAX_TIME:
        raise ValidationError(f"{field_name} is not a valid time")
    return value


def clean_ttl_days(days: object) -> int:
    if isinstance(days, bool) or not isinstance(days, int) or not 1 <= days <= MAX_TTL_DAYS:
        raise ValidationError(f"expiry must be between 1 and {MAX_TTL_DAYS} days")
    return days * _DAY_MS


def clean_item_id(value: object) -> str:
    if (
        not isinstance(value, str)
        or len(value) != ITEM_ID_HEX
        or value.strip("0123456789abcdef")
    ):
        raise ValidationError("not an item id")
    return value


@final
@dataclass(frozen=True, slots=True)
class Claim:
    """A member's pledge on a need ("I will bring 10") or request for an offer."""

    id: str
    author: str  #: claimant's author key, hex
    author_name: str
    item_author: str
    item_id: str
    quantity: int | None
    note: str
    status: ClaimStatus
    created: int
    updated: int
    #: another member of the board shows a name that looks the same (see :class:`Member`)
    name_shared: bool = False

    @property
    def author_fingerprint(self) -> str:
        """The claimant's key fingerprint: display names are not verified, this is."""
        return fingerprint(bytes.fromhex(self.author))

    @classmethod
    def from_fields(cls, claim_id: str, author: str, name: str, f: Mapping[str, Any]) -> Claim:
        """Build from stored fields. Raises :class:`ValidationError` if any is invalid."""
        return cls(
            id=clean_item_id(claim_id),
            author=author,
            author_name=name,
            item_author=clean_author_hex(f.get("item_author")),
            item_id=clean_item_id(f.get("item")),
            quantity=clean_quantity(f.get("quantity")),
            note=clean_text(f.get("note", ""), "note"),
            status=clean_enum(ClaimStatus, f.get("status"), "claim status"),
            created=clean_time(f.get("created"), "created"),
            updated=clean_time(f.get("updated", f.get("created")), "updated"),
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "author": self.author,
            "author_name": self.author_name,
            "author_fingerprint": self.author_fingerprint,
            "name_shared": self.name_shared,
            "item_author": self.item_author,
            "item": self.item_id,
            "quantity": self.quantity,
            "note": self.note,
            "status": self.status.value,
            "created": self.created,
            "updated": self.updated,
        }


#: Stored ``expires`` that means "never" (absent means the kind's default).
NEVER: Final = 0


def _expiry(kind: ItemKind, created: object, stored: object) -> int | None:
    """Absent: a need's default (created + 14 days) or an offer's (never); 0: never."""
    if stored is None:
        if kind is ItemKind.NEED and isinstance(created, int):
            return created + DEFAULT_NEED_TTL_DAYS * _DAY_MS
        return None
    if stored == NEVER and not isinstance(stored, bool):
        return None
    return clean_time(stored, "expires")


def stored_expiry(kind: ItemKind, now: int, days: int | None) -> int | None:
    """What to store for an expiry of ``days`` from ``now`` (None: never); None means
    "leave the key out" (it is the kind's default)."""
    default = DEFAULT_NEED_TTL_DAYS if kind is ItemKind.NEED else None
    if days == default:
        return None
    return NEVER if days is None else now + clean_ttl_days(days)


def item_fields(
    kind: ItemKind,
    title: str,
    *,
    now: int,
    details: str = "",
    category: str = "other",
    quantity: int | None = None,
    unit: str = "",
    location: str = "",
    urgency: str = "normal",
    expires_in_days: int | None = None,
) -> dict[str, str | int | None]:
    """The stored fields of a new need or offer, validated.

    Defaults are left out (None), since every Automerge op costs time and readers
    apply them: empty text, urgency ``normal``, status ``open``, ``updated`` equal
    to ``created``, and the kind's default expiry.

    Raises:
        ValidationError: a field is out of range.
    """
    return {
        "title": clean_text(title, "title", required=True),
        "details": clean_text(details, "details"),
        "category": clean_enum(Category, category, "category").value,
        "quantity": clean_quantity(quantity),
        "unit": clean_text(unit, "unit"),
        "location": clean_text(location, "location"),
        "urgency": _unless_default(clean_enum(Urgency, urgency, "urgency").value, "normal"),
        "created": now,
        "expires": stored_expiry(kind, now, expires_in_days),
    }


def _unless_default(value: str, default: str) -> str | None:
    return None if value == default else value


def clean_author_hex(value: object) -> str:
    if not isinstance(value, str) or len(value) != 64 or value.strip("0123456789abcdef"):
        raise ValidationError("not an author key")
    return value


@final
@dataclass(frozen=True, slots=True)
class Item:
    """A need or an offer as every replica shows it."""

    kind: ItemKind
    id: str
    author: str  #: author key, hex
    author_name: str
    title: str
    details: str
    category: Category
    quantity: int | None
    unit: str
    location: str
    urgency: Urgency
    status: Status
    created: int
    updated: int
    expires: int | None
    #: active claims on this item, in order (created, id)
    claims: tuple[Claim, ...] = field(default=())
    #: another member of the board shows a name that looks the same (see :class:`Member`)
    name_shared: bool = False

    @classmethod
    def from_fields(
        cls, kind: ItemKind, item_id: str, author: str, name: str, f: Mapping[str, Any]
    ) -> Item:
        """Build from stored fields. Raises :class:`ValidationError` if any is invalid."""
        expires = f.get("expires")
        return cls(
            kind=kind,
            id=clean_item_id(item_id),
            author=author,
            author_name=name,
            title=clean_text(f.get("title"), "title", required=True),
            details=clean_text(f.get("details", ""), "details"),
            category=clean_enum(Category, f.get("category"), "category"),
            quantity=clean_quantity(f.get("quantity")),
            unit=clean_text(f.get("unit", ""), "unit"),
            location=clean_text(f.get("location", ""), "location"),
            urgency=clean_enum(Urgency, f.get("urgency", "normal"), "urgency"),
            status=clean_enum(Status, f.get("status", "open"), "status"),
            created=clean_time(f.get("created"), "created"),
            updated=clean_time(f.get("updated", f.get("created")), "updated"),
            expires=_expiry(kind, f.get("created"), expires),
        )

    @property
    def author_fingerprint(self) -> str:
        """The author's key fingerprint: display names are not verified, this is."""
        return fingerprint(bytes.fromhex(self.author))

    def claim_counts(self) -> tuple[int, ...]:
        """What each active claim counts towards the quantity, in the order of
        :attr:`claims`: at most what was still open when its turn came (a claim
        without a quantity counts 0). An item without a quantity has no bound."""
        if self.quantity is None:
            return tuple(c.quantity or 0 for c in self.claims)
        still_open = self.quantity
        counts = []
        for claim in self.claims:
            counted = min(claim.quantity or 0, still_open)
            still_open -= counted
            counts.append(counted)
        return tuple(counts)

    @property
    def claimed_quantity(self) -> int:
        """What the active claims count together; never more than :attr:`quantity`."""
        return sum(self.claim_counts())

    @property
    def open_quantity(self) -> int | None:
        """How much is not claimed yet (None for an item without a quantity)."""
        return None if self.quantity is None else self.quantity - self.claimed_quantity

    def over_claims(self) -> tuple[bool, ...]:
        """For each claim of :attr:`claims`: whether it asked for more than was open."""
        return tuple((c.quantity or 0) > n
                     for c, n in zip(self.claims, self.claim_counts(), strict=True))

    @property
    def over_claimed(self) -> bool:
        """Whether some claim asked for more than was still open when it came."""
        return any(self.over_claims())

    def is_expired(self, now: int | None = None) -> bool:
        now = now_ms() if now is None else now
        return self.status is Status.OPEN and self.expires is not None and now >= self.expires

    def display_status(self, now: int | None = None) -> str:
        """``expired`` for an open item past its expiry, else its status."""
        return "expired" if self.is_expired(now) else self.status.value

    def to_json(self, now: int | None = None) -> dict[str, Any]:
        return {
            "kind": self.kind.value,
            "id": self.id,
            "author": self.author,
            "author_name": self.author_name,
            "author_fingerprint": self.author_fingerprint,
            "name_shared": self.name_shared,
            "title": self.title,
            "details": self.details,
            "category": self.category.value,
            "quantity": self.quantity,
            "unit": self.unit,
            "location": self.location,
            "urgency": self.urgency.value,
            "status": self.status.value,
            "expired": self.is_expired(now),
            "created": self.created,
            "updated": self.updated,
            "expires": self.expires,
            "claimed_quantity": self.claimed_quantity,
            "over_claimed": self.over_claimed,
            "claims": [
                {**c.to_json(), "counted_quantity": counted, "over_claimed": over}
                for c, counted, over in zip(self.claims, self.claim_counts(),
                                            self.over_claims(), strict=True)
            ],
        }


@final
@dataclass(frozen=True, slots=True)
class Member:
    """A member of a board: someone whose section the board holds."""

    author: str  #: author key, hex
    name: str  #: display name ("" when anonymous or invalid); chosen freely, not verified
    #: another member shows a name that looks the same (:func:`p2paid.core.text.name_key`)
    name_shared: bool = False

    @property
    def fingerprint(self) -> str:
        return fingerprint(bytes.fromhex(self.author))

    def __str__(self) -> str:
        return member_label(self.author, self.name, self.name_shared)

    def to_json(self) -> dict[str, Any]:
        return {"author": self.author, "name": self.name, "fingerprint": self.fingerprint,
                "name_shared": self.name_shared}


def member_label(author: str, name: str, name_shared: bool = False, *,
                 full: bool = False) -> str:
    """``Ana (mngt-xv5d)``: a display name with the author's key fingerprint (short,
    or ``full``), marked when another member shows a name that looks the same."""
    key = bytes.fromhex(author)
    fp = fingerprint(key) if full else short_fingerprint(key)
    shared = ", name shared" if name_shared and name else ""
    return f"{name or 'anonymous'} ({fp}{shared})"


class EventKind(enum.StrEnum):
    ITEM_ADDED = "item-added"
    ITEM_CHANGED = "item-changed"  #: edited, fulfilled, withdrawn or reopened
    ITEM_REMOVED = "item-removed"
    CLAIM_ADDED = "claim-added"
    CLAIM_CHANGED = "claim-changed"  #: e.g. cancelled
    CLAIM_REMOVED = "claim-removed"
    MEMBER_RENAMED = "member-renamed"


@final
@dataclass(frozen=True, slots=True)
class BoardEvent:
    """Something that changed on a board, and who did it."""

    kind: EventKind
    author: str  #: hex author key of the member who made the change
    author_name: str
    item: Item | None = None  #: the item (for claim events: the claimed item, if known)
    claim: Claim | None = None
    previous: Item | Claim | None = None
    local: bool = False  #: made by this node's own author key (here or by the CLI)
    #: another member shows a name that looks the same as ``author_name``
    name_shared: bool = False

    def __str__(self) -> str:
        who = member_label(self.author, self.author_name, self.name_shared)
        item = self.item
        what = f"{item.kind.value} {item.title!r}" if item is not None else "an item"
        if self.kind is EventKind.ITEM_ADDED and item is not None:
            qty = f" ({item.quantity} {item.unit})".replace(" )", ")") if item.quantity else ""
            return f"{who} posted {what}{qty}"
        if self.kind is EventKind.ITEM_CHANGED and item is not None:
            old = self.previous
            if isinstance(old, Item) and old.status is not item.status:
                return f"{who} marked {what} {item.status.value}"
            return f"{who} edited {what}"
        if self.kind is EventKind.CLAIM_ADDED and self.claim is not None:
            qty = f"{self.claim.quantity} of " if self.claim.quantity else ""
            return f"{who} claimed {qty}{what}"
        if self.kind is EventKind.CLAIM_CHANGED and self.claim is not None:
            return f"{who} {self.claim.status.value} their claim on {what}"
        if self.kind is EventKind.MEMBER_RENAMED:
            shared = " (a name another member shows too)" if self.name_shared else ""
            key = short_fingerprint(bytes.fromhex(self.author))
            return f"member {key} is now called {self.author_name!r}{shared}"
        return f"{who}: {self.kind.value} {what}"
