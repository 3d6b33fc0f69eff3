"""Human-readable text for the CLI: item tables, item details, import reports."""

from __future__ import annotations

import csv
import io
import time
from collections.abc import Iterable, Sequence
from typing import Any

from .model import Item, ItemKind

__all__ = ["item_csv", "item_detail", "item_table", "plural", "when"]

_CSV_FIELDS = (
    "kind", "id", "title", "details", "category", "quantity", "unit", "claimed_quantity",
    "location", "urgency", "status", "expired", "author", "author_name", "created", "updated",
    "expires",
)


def plural(count: int, noun: str) -> str:
    """``1 need``, ``2 needs``."""
    return f"{count:,} {noun}{'' if count == 1 else 's'}"


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
        text += f" ({item.claimed_quantity} claimed)"
    return text


def _cut(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def item_table(items: Sequence[Item], now: int) -> str:
    """One line per item: kind, short id, urgency, title, amount, category, status, author."""
    if not items:
        return "(nothing here yet)"
    rows: list[tuple[str, ...]] = []
    for item in items:
        urgency = "" if item.urgency.value == "normal" or item.kind is ItemKind.OFFER else (
            f"[{item.urgency.value}]")
        rows.append((
            item.kind.value.upper(), item.id[:8], urgency, _cut(item.title, 40), _amount(item),
            item.category.value, item.display_status(now), _cut(item.location, 20),
            _cut(item.author_name or "anonymous", 16),
        ))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join(
        "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
        for row in rows
    )


def item_detail(item: Item, now: int) -> str:
    """Every field of one item, with its claims."""
    lines = [
        f"{item.kind.value.upper()} {item.id}",
        f"  title     {item.title}",
        f"  category  {item.category.value}",
        f"  status    {item.display_status(now)}",
    ]
    if item.kind is ItemKind.NEED:
        lines.append(f"  urgency   {item.urgency.value}")
    if item.quantity is not None:
        lines.append(f"  quantity  {item.quantity} {item.unit}".rstrip()
                     + f"  ({item.claimed_quantity} claimed)")
    if item.location:
        lines.append(f"  location  {item.location}")
    lines.append(f"  by        {item.author_name or 'anonymous'} ({item.author[:16]})")
    lines.append(f"  posted    {when(item.created)}   updated {when(item.updated)}")
    if item.expires is not None:
        lines.append(f"  expires   {when(item.expires)}")
    if item.details:
        lines.append("  details")
        lines.extend(f"    {line}" for line in item.details.splitlines())
    if item.claims:
        lines.append("  claims")
        for c in item.claims:
            qty = "" if c.quantity is None else f"{c.quantity} "
            note = f": {c.note}" if c.note else ""
            lines.append(f"    {qty}by {c.author_name or 'anonymous'} on {when(c.created)}{note}")
    return "\n".join(lines)


def item_csv(items: Iterable[Item], now: int) -> str:
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=_CSV_FIELDS, extrasaction="ignore")
    writer.writeheader()
    for item in items:
        row: dict[str, Any] = item.to_json(now)
        row["expired"] = "yes" if row["expired"] else "no"
        writer.writerow(row)
    return out.getvalue()
