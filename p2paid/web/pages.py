"""What the board pages show: filters from the query string, and one page of items.

Pure functions over :class:`~p2paid.board.model.Item` lists, so that the paging and
filter rules are tested without a server.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Final, final

from p2paid.board.model import Category, Item, ItemKind, Urgency
from p2paid.board.order import coordinator_key

__all__ = ["PAGE_SIZE", "BoardQuery", "ItemPage", "RankedItems", "page_of", "rank"]

#: Items per page: a first page stays small on a 2G link whatever the board's size.
PAGE_SIZE: Final = 30
STATUSES: Final = ("open", "expired", "fulfilled", "withdrawn")
#: The longest search text taken from a query string.
MAX_SEARCH: Final = 100


@final
@dataclass(frozen=True, slots=True)
class BoardQuery:
    """A board page's filters, read leniently from a query string: a value that is not
    one of the allowed ones is ignored, as a hand-edited URL deserves."""

    kind: ItemKind | None = None
    category: Category | None = None
    urgency: Urgency | None = None
    status: str | None = "open"
    search: str = ""
    page: int = 1

    @classmethod
    def parse(cls, params: Mapping[str, str]) -> BoardQuery:
        def choice(name: str, allowed: Sequence[str]) -> str | None:
            value = params.get(name, "")
            return value if value in allowed else None

        kind = choice("kind", [k.value for k in ItemKind])
        category = choice("category", [c.value for c in Category])
        urgency = choice("urgency", [u.value for u in Urgency])
        status = params.get("status", "open")
        page = params.get("page", "1")
        return cls(
            kind=ItemKind(kind) if kind else None,
            category=Category(category) if category else None,
            urgency=Urgency(urgency) if urgency else None,
            status=status if status in STATUSES else None,
            search=" ".join(params.get("q", "").split())[:MAX_SEARCH],
            page=int(page) if page.isdigit() and 0 < len(page) < 7 and int(page) > 0 else 1,
        )

    def matches(self, item: Item, now: int, status: str | None = None) -> bool:
        """Whether ``item`` passes the filters (``status``: its display status, if known)."""
        if status is None and self.status is not None:
            status = item.display_status(now)
        return ((self.kind is None or item.kind is self.kind)
                and (self.category is None or item.category is self.category)
                and (self.urgency is None
                     or (item.kind is ItemKind.NEED and item.urgency is self.urgency))
                and (self.status is None or status == self.status)
                and (not self.search or self.search.casefold() in item.title.casefold()))

    def to_params(self, **changes: str | int) -> dict[str, str]:
        """The query string of this query with ``changes`` (for links and forms)."""
        params = {"kind": self.kind.value if self.kind else "",
                  "category": self.category.value if self.category else "",
                  "urgency": self.urgency.value if self.urgency else "",
                  "status": self.status or "any", "q": self.search, "page": str(self.page)}
        params.update({k: str(v) for k, v in changes.items()})
        return {k: v for k, v in params.items() if v and (k != "page" or v != "1")}


@final
@dataclass(frozen=True, slots=True)
class ItemPage:
    """One page of a board's matching items, most urgent first."""

    items: tuple[Item, ...]
    page: int
    pages: int
    matching: int
    total: int


Ranked = Sequence[tuple[str, Item]]


def rank(items: Iterable[Item], now: int) -> list[tuple[str, Item]]:
    """``(display status, item)`` in coordinator order (open first, most urgent, newest)."""
    keyed = [(coordinator_key(item, status), status, item)
             for item in items for status in (item.display_status(now),)]
    keyed.sort(key=lambda entry: entry[0])
    return [(status, item) for _, status, item in keyed]


@final
class RankedItems:
    """Each board's ranked items, kept until the board changes or a minute passes (items
    expire with time): a board page of a 10,000-item board then costs a filter, not a
    read and a sort. Keyed by what changes when the board does (arrivals seen and
    changes applied)."""

    def __init__(self) -> None:
        self._kept: dict[bytes, tuple[tuple[int, int, int], list[tuple[str, Item]]]] = {}

    def of(self, board_id: bytes, version: tuple[int, int], items: Callable[[], Iterable[Item]],
           now: int) -> list[tuple[str, Item]]:
        key = (*version, now // 60_000)
        kept = self._kept.get(board_id)
        if kept is None or kept[0] != key:
            kept = self._kept[board_id] = (key, rank(items(), now))
        return kept[1]


def page_of(ranked: Ranked, query: BoardQuery, now: int, size: int = PAGE_SIZE) -> ItemPage:
    """The page ``query.page`` (clamped to the last) of the ranked items ``query`` matches."""
    matching = [item for status, item in ranked if query.matches(item, now, status)]
    pages = max(1, math.ceil(len(matching) / size))
    page = min(query.page, pages)
    start = (page - 1) * size
    return ItemPage(tuple(matching[start:start + size]), page, pages, len(matching),
                    len(ranked))
