"""Human-readable text for the CLI: item tables, item details, CSV, and safe output.

Every string that came from outside (members' entries, board names from invites,
relay hints, peers' messages) goes through :func:`safe` (or :func:`json_text`,
or :class:`SafeFormatter` for logs) before it reaches a terminal, so that no
control or formatting character from outside is ever printed raw.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterable, Sequence
from typing import Any, Final

from p2paid.board.model import Item, ItemKind, member_label
from p2paid.cli.width import display_width, ljust, truncate
from p2paid.core.text import escape_json, escape_text

__all__ = [
    "TABLE_HEADINGS", "SafeFormatter", "csv_cell", "item_csv", "item_detail", "item_table",
    "json_text", "safe", "when",
]

#: Cells a spreadsheet would run as a formula start with one of these (the full-width
#: forms too: some spreadsheets fold them to ASCII before parsing).
_FORMULA_STARTS: Final = frozenset("=+-@\t\r\uff1d\uff0b\uff0d\uff20")


def safe(text: object) -> str:
    """``str(text)`` with every control or formatting character that a terminal
    should not get raw escaped (see :func:`p2paid.core.text.escape_text`)."""
    return escape_text(str(text))


def json_text(value: Any) -> str:
    """Indented JSON in which no string holds a raw control, formatting or bidi
    character (each is written as a ``\\u`` escape: the same string to a parser)."""
    return escape_json(json.dumps(value, indent=2, ensure_ascii=False))


class SafeFormatter(logging.Formatter):
    """A log formatter that escapes what :func:`safe` escapes in each message (log
    lines carry board names, peers' close reasons, relay addresses, titles)."""

    def formatMessage(self, record: logging.LogRecord) -> str:
        return escape_text(super().formatMessage(record))


def csv_cell(value: str) -> str:
    """A text cell that no spreadsheet runs as a formula: one that would start with
    ``= + - @``, a tab or a carriage return is prefixed with an apostrophe."""
    return "'" + value if value[:1] in _FORMULA_STARTS else value


def when(ms: int | None) -> str:
    """A local date and time, minute precision."""
    if ms is None:
        return "-"
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(ms / 1000))


def _amount(item: Item) -> str:
    if item.quantity is None:
        claimed = item.claimed_quantity
        return f"({len(item.claims)} claim{'s' * (len(item.claims) != 1)})" if item.claims else (
            "" if not claimed else str(claimed))
    text = f"{item.quantity} {item.unit}".strip()
    if item.claims:
        text += f" ({_claimed(item)})"
    return text


def _claimed(item: Item) -> str:
    """``10 claimed``, or ``40 claimed, over-claimed`` when claims asked for more."""
    return f"{item.claimed_quantity} claimed" + (", over-claimed" if item.over_claimed else "")


#: Column headings of :func:`item_table`, and the widest a cut column may be.
TABLE_HEADINGS: Final = ("KIND", "ID", "URGENCY", "TITLE", "AMOUNT", "CATEGORY", "STATUS",
                         "WHERE", "BY")
_CUT: Final = {"title": 40, "location": 20, "name": 16}


def item_table(items: Sequence[Item], now: int, *, header: bool = True) -> str:
    """One line per item, in the order given, under a heading line: kind, short id,
    urgency (needs only), title, amount, category, status, place, author. Columns
    are measured in terminal cells and cut between grapheme clusters (see
    :mod:`p2paid.cli.width`), so wide scripts and emoji keep them aligned."""
    if not items:
        return "(nothing here yet)"
    rows: list[tuple[str, ...]] = [TABLE_HEADINGS] if header else []
    for item in items:
        urgency = item.urgency.value if item.kind is ItemKind.NEED else ""
        name = truncate(item.author_name, _CUT["name"])
        rows.append(tuple(safe(cell) for cell in (
            item.kind.value.upper(), item.id[:8], urgency, truncate(item.title, _CUT["title"]),
            _amount(item), item.category.value, item.display_status(now),
            truncate(item.location, _CUT["location"]),
            member_label(item.author, name, item.name_shared),
        )))
    widths = [max(display_width(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join(
        "  ".join(ljust(cell, w) for cell, w in zip(row, widths, strict=True)).rstrip()
        for row in rows
    )


def item_detail(item: Item, now: int) -> str:
    """Every field of one item, with its claims."""
    lines = [
        f"{item.kind.value.upper()} {item.id}",
        f"  title     {safe(item.title)}",
        f"  category  {item.category.value}",
        f"  status    {item.display_status(now)}",
    ]
    if item.kind is ItemKind.NEED:
        lines.append(f"  urgency   {item.urgency.value}")
    if item.quantity is not None:
        lines.append(f"  quantity  {item.quantity} {safe(item.unit)}".rstrip()
                     + f"  ({_claimed(item)})")
    if item.location:
        lines.append(f"  location  {safe(item.location)}")
    by = member_label(item.author, item.author_name, item.name_shared, full=True)
    lines.append(f"  by        {safe(by)}")
    if item.name_shared:
        lines.append("            (another member shows the same name: compare the key)")
    lines.append(f"  posted    {when(item.created)}   updated {when(item.updated)}")
    if item.expires is not None:
        lines.append(f"  expires   {when(item.expires)}")
    if item.details:
        lines.append("  details")
        lines.extend(f"    {safe(line)}" for line in item.details.splitlines())
    if item.claims:
        lines.append("  claims")
        counts = item.claim_counts()
        for c, counted, over in zip(item.claims, counts, item.over_claims(), strict=True):
            qty = "" if c.quantity is None else f"{c.quantity} "
            who = member_label(c.author, c.author_name, c.name_shared)
            note = f": {c.note}" if c.note else ""
            line = f"    {qty}by {who} on {when(c.created)}{note}"
            if over:
                line += f"  [over-claimed: counts {counted}]"
            lines.extend(f"      {safe(part)}" if i else safe(part)
                         for i, part in enumerate(line.splitlines()))
    return "\n".join(lines)


def item_csv(items: Iterable[Item], now: int, *, hxl: bool = False) -> str:
    """The CSV export (see :mod:`p2paid.cli.csvexport`), without a byte-order mark."""
    from p2paid.cli.csvexport import board_csv

    return board_csv(items, now, hxl=hxl)
