"""``p2paid list``: items in the order a coordinator needs them, and a summary line."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final

from p2paid.board.board import Board
from p2paid.board.model import Item, ItemKind, Urgency
from p2paid.cli.render import safe
from p2paid.core.text import plural

__all__ = ["DEFAULT_LIMIT", "board_summary", "coordinator_order"]

#: Items shown per board on a terminal unless ``--limit`` or ``--all`` says otherwise.
DEFAULT_LIMIT: Final = 50
_STATUS_RANK: Final = {"open": 0, "expired": 1, "fulfilled": 2, "withdrawn": 3}
_URGENCY_RANK: Final = {Urgency.CRITICAL: 0, Urgency.HIGH: 1, Urgency.NORMAL: 2,
                        Urgency.LOW: 3}


def coordinator_order(items: Sequence[Item], now: int) -> list[Item]:
    """Open items first (then expired, fulfilled, withdrawn), each group by urgency
    (critical, high, normal, low; offers count as normal), newest first within that."""
    def key(item: Item) -> tuple[int, int, int, str]:
        urgency = item.urgency if item.kind is ItemKind.NEED else Urgency.NORMAL
        return (_STATUS_RANK.get(item.display_status(now), 4), _URGENCY_RANK[urgency],
                -item.created, item.id)

    return sorted(items, key=key)


def board_summary(board: Board, items: Sequence[Item], shown: int, now: int, *,
                  filtered: bool) -> str:
    """``Camp (1a2b3c4d): 12 items: 3 open needs, 2 open offers``, and which of them
    are shown when not all are."""
    open_needs = sum(i.kind is ItemKind.NEED and i.display_status(now) == "open"
                     for i in items)
    open_offers = sum(i.kind is ItemKind.OFFER and i.display_status(now) == "open"
                      for i in items)
    what = plural(len(items), "item")
    if filtered:
        what += " matches" if len(items) == 1 else " match"
    line = (f"{safe(board.name)} ({board.id.hex()[:8]}): {what}: "
            f"{plural(open_needs, 'open need')}, {plural(open_offers, 'open offer')}")
    if shown < len(items):
        line += f"; showing the first {shown:,} ('--all' for all, or '--limit N')"
    return line
