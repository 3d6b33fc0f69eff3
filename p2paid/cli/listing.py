"""``p2paid list``: items in the order a coordinator needs them, and a summary line."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final

from p2paid.board.board import Board
from p2paid.board.model import Item, ItemKind
from p2paid.board.order import coordinator_order
from p2paid.cli.render import safe
from p2paid.core.text import plural

__all__ = ["DEFAULT_LIMIT", "board_summary", "coordinator_order"]

#: Items shown per board on a terminal unless ``--limit`` or ``--all`` says otherwise.
DEFAULT_LIMIT: Final = 50


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
