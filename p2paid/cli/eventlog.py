"""``p2paid run``'s log of what changes on a board: one line per change for a handful,
one summary line for a burst (a big sync)::

    11:29:46 Camp: Amina posted need 'Tents' (3) (synced)
    11:29:52 Big: synced 10,000 new needs and 12 new offers (by 2 members)

Changes that arrive within :data:`QUIET` seconds of each other are taken together,
for at most :data:`GATHER_MAX` seconds, so that a long sync gives a summary line every
few seconds. The subscription keeps every event until taken (it only counts), so it
cannot fall behind and lose any.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field
from typing import Final

import trio

from p2paid.board.model import BoardEvent, EventKind
from p2paid.cli.render import safe
from p2paid.core.text import plural
from p2paid.node.asyncboard import AsyncBoard
from p2paid.node.subscription import EventSubscription

__all__ = ["SMALL_BURST", "Burst", "gather", "log_board_events"]

log = logging.getLogger("p2paid")

#: Up to this many changes at once are logged one line each.
SMALL_BURST: Final = 5
#: Seconds without a change that end a burst.
QUIET: Final = 0.3
#: Longest a burst is gathered before its summary is logged (seconds).
GATHER_MAX: Final = 5.0


def _what(event: BoardEvent) -> str:
    """The noun a summary counts ``event`` under."""
    if event.kind is EventKind.ITEM_ADDED and event.item is not None:
        return f"new {event.item.kind.value}"
    return {
        EventKind.ITEM_ADDED: "new item", EventKind.ITEM_CHANGED: "item change",
        EventKind.ITEM_REMOVED: "removed item", EventKind.CLAIM_ADDED: "claim",
        EventKind.CLAIM_CHANGED: "claim change", EventKind.CLAIM_REMOVED: "removed claim",
        EventKind.MEMBER_RENAMED: "new member name",
    }[event.kind]


def _and(parts: list[str]) -> str:
    return parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]


@dataclass
class Burst:
    """The changes of one burst: the first few kept, every one counted."""

    first: list[BoardEvent] = field(default_factory=list)
    counts: dict[bool, Counter[str]] = field(default_factory=lambda: {True: Counter(),
                                                                      False: Counter()})
    authors: dict[bool, set[str]] = field(default_factory=lambda: {True: set(), False: set()})
    size: int = 0

    def add(self, events: list[BoardEvent]) -> None:
        for event in events:
            if self.size < SMALL_BURST:
                self.first.append(event)
            self.size += 1
            self.counts[event.local][_what(event)] += 1
            self.authors[event.local].add(event.author)

    def lines(self, board: str) -> list[str]:
        """One line per change if there are a handful, else one per origin (synced,
        made here)."""
        name = safe(board)
        if self.size <= SMALL_BURST:
            return [f"{name}: {safe(e)}{'' if e.local else ' (synced)'}" for e in self.first]
        out = []
        for local in (False, True):
            counts = self.counts[local]
            if not counts:
                continue
            parts = [plural(n, noun) for noun, n in sorted(counts.items(),
                                                           key=lambda kv: (-kv[1], kv[0]))]
            by = plural(len(self.authors[local]), "member")
            out.append(f"{name}: {'made here' if local else 'synced'} {_and(parts)} (by {by})")
        return out


async def gather(subscription: EventSubscription, first: list[BoardEvent]) -> Burst:
    """``first`` and what follows it closely (see :data:`QUIET`, :data:`GATHER_MAX`)."""
    burst = Burst()
    burst.add(first)
    deadline = trio.current_time() + GATHER_MAX
    while trio.current_time() < deadline:
        with trio.move_on_after(min(QUIET, deadline - trio.current_time())):
            burst.add(await subscription.next_batch())
            continue
        break
    return burst


async def log_board_events(board: AsyncBoard) -> None:
    """Log the board's changes until cancelled."""
    with board.subscribe(buffer=None) as subscription:
        while True:
            burst = await gather(subscription, await subscription.next_batch())
            for line in burst.lines(board.name):
                log.info("%s", line)
