"""The order in which a coordinator needs to see items (``p2paid list``, the web pages)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final

from p2paid.board.model import Item, ItemKind, Urgency

__all__ = ["coordinator_key", "coordinator_order"]

_STATUS_RANK: Final = {"open": 0, "expired": 1, "fulfilled": 2, "withdrawn": 3}
_URGENCY_RANK: Final = {Urgency.CRITICAL: 0, Urgency.HIGH: 1, Urgency.NORMAL: 2,
                        Urgency.LOW: 3}


def coordinator_key(item: Item, status: str) -> tuple[int, int, int, str]:
    """The sort key of :func:`coordinator_order`, given the item's display status."""
    urgency = item.urgency if item.kind is ItemKind.NEED else Urgency.NORMAL
    return (_STATUS_RANK.get(status, 4), _URGENCY_RANK[urgency], -item.created, item.id)


def coordinator_order(items: Sequence[Item], now: int) -> list[Item]:
    """Open items first (then expired, fulfilled, withdrawn), each group by urgency
    (critical, high, normal, low; offers count as normal), newest first within that."""
    return sorted(items, key=lambda item: coordinator_key(item, item.display_status(now)))
