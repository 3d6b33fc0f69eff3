"""``p2paid export --format csv``: a board as a spreadsheet, optionally tagged in HXL.

One row per need or offer, each followed by one row per active claim on it
(``record`` = ``claim``: who, how many, the note, when), so a coordinator can
filter by record type and see who pledged what. Times are ISO 8601 in UTC; a
cell that does not apply is empty (an offer has no urgency, an item without a
quantity has no claimed quantity, an item row has no note); text cells that a
spreadsheet would run as a formula are escaped (:func:`p2paid.cli.render.csv_cell`).

With ``hxl=True`` a second row carries Humanitarian Exchange Language hashtags, so
the HXL Proxy and HDX tools read the file. Only hashtags and attributes of the HXL
standard's core dictionary are used (:data:`HXL_CORE_HASHTAGS`,
:data:`HXL_CORE_ATTRIBUTES`); columns with no fitting core tag are left untagged, as
the HXL tagging conventions allow.
"""

from __future__ import annotations

import csv
import io
import time
from collections.abc import Iterable, Iterator
from typing import Final

from p2paid.board.model import Claim, Item, ItemKind
from p2paid.cli.render import csv_cell

__all__ = ["COLUMNS", "HXL_CORE_ATTRIBUTES", "HXL_CORE_HASHTAGS", "board_csv", "iso_utc"]

#: The core hashtags of the HXL hashtag dictionary, version 1.1 (HXL Working Group,
#: released 2018-04-30; https://hxlstandard.org/standard/1-1final/dictionary/).
HXL_CORE_HASHTAGS: Final = frozenset({
    "#access", "#activity", "#adm1", "#adm2", "#adm3", "#adm4", "#adm5", "#affected",
    "#beneficiary", "#capacity", "#cause", "#channel", "#contact", "#country", "#crisis",
    "#currency", "#date", "#description", "#event", "#frequency", "#geo", "#group",
    "#impact", "#indicator", "#inneed", "#item", "#loc", "#meta", "#modality", "#need",
    "#operations", "#org", "#output", "#population", "#reached", "#region", "#respondee",
    "#sector", "#service", "#severity", "#status", "#subsector", "#targeted", "#value",
})
#: The core attributes of the same dictionary.
HXL_CORE_ATTRIBUTES: Final = frozenset({
    "+abducted", "+activity", "+adolescents", "+adults", "+approved", "+bounds",
    "+canceled", "+children", "+cluster", "+code", "+converted", "+coord", "+dest",
    "+displaced", "+elderly", "+elevation", "+email", "+end", "+f", "+funder", "+hh", "+i",
    "+id", "+idps", "+impl", "+incamp", "+ind", "+infants", "+infected", "+injured",
    "+killed", "+label", "+lat", "+lon", "+m", "+name", "+noncamp", "+num", "+occurred",
    "+origin", "+phone", "+prog", "+programme", "+project", "+provided", "+refugees",
    "+reported", "+source", "+start", "+text", "+type", "+url", "+used",
})

#: (column, HXL tag or "" for none). The README lists the same.
COLUMNS: Final = (
    ("board", "#org+name"),  # the group whose board this is
    ("record", "#item+type"),  # need, offer or claim
    ("id", "#meta+id"),  # this row's own id
    ("item", "#item+code"),  # the need or offer the row is about
    ("title", "#item+name"),
    ("details", "#description"),
    ("category", "#sector"),
    ("quantity", "#item+num"),  # needed, offered, or (claim rows) pledged
    ("unit", ""),
    ("claimed_quantity", ""),  # what claims count toward the quantity
    ("over_claimed", ""),
    ("location", "#loc+name"),
    ("urgency", "#severity"),  # needs only
    ("status", "#status"),  # open, expired, fulfilled, withdrawn; claims: active
    ("author_name", "#contact+name"),  # chosen freely, not verified
    ("author_fingerprint", "#meta+source"),  # the key that signed the row: verified
    ("author", ""),
    ("name_shared", ""),
    ("note", ""),  # claims only
    ("created", "#date+reported"),
    ("updated", ""),
    ("expires", "#date+end"),
)


def iso_utc(ms: int | None) -> str:
    """``2026-12-01T11:29:43Z`` (ISO 8601, UTC, whole seconds); "" for None."""
    if ms is None:
        return ""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ms // 1000))


def _yes(flag: bool) -> str:
    return "yes" if flag else "no"


def _item_row(board: str, item: Item, now: int) -> dict[str, object]:
    counted = item.quantity is not None
    return {
        "board": board, "record": item.kind.value, "id": item.id, "item": item.id,
        "title": item.title, "details": item.details, "category": item.category.value,
        "quantity": item.quantity, "unit": item.unit if counted else "",
        "claimed_quantity": item.claimed_quantity if counted else None,
        "over_claimed": _yes(item.over_claimed) if counted else "",
        "location": item.location,
        "urgency": item.urgency.value if item.kind is ItemKind.NEED else "",
        "status": item.display_status(now), "author_name": item.author_name,
        "author_fingerprint": item.author_fingerprint, "author": item.author,
        "name_shared": _yes(item.name_shared), "created": iso_utc(item.created),
        "updated": iso_utc(item.updated), "expires": iso_utc(item.expires),
    }


def _claim_row(board: str, item: Item, claim: Claim, counted: int, over: bool
               ) -> dict[str, object]:
    bounded = item.quantity is not None
    return {
        "board": board, "record": "claim", "id": claim.id, "item": item.id,
        "title": item.title, "quantity": claim.quantity,
        "unit": item.unit if claim.quantity is not None else "",
        "claimed_quantity": counted if bounded else None,
        "over_claimed": _yes(over) if bounded else "", "status": claim.status.value,
        "author_name": claim.author_name, "author_fingerprint": claim.author_fingerprint,
        "author": claim.author, "name_shared": _yes(claim.name_shared), "note": claim.note,
        "created": iso_utc(claim.created), "updated": iso_utc(claim.updated),
    }


def rows(items: Iterable[Item], now: int, board: str = "") -> Iterator[dict[str, object]]:
    """Each item's row, then a row for each of its active claims."""
    for item in items:
        yield _item_row(board, item, now)
        for claim, counted, over in zip(item.claims, item.claim_counts(), item.over_claims(),
                                        strict=True):
            yield _claim_row(board, item, claim, counted, over)


def board_csv(items: Iterable[Item], now: int, *, board: str = "", hxl: bool = False) -> str:
    """The CSV text (no byte-order mark): a header row, the HXL hashtag row if
    ``hxl``, then :func:`rows`."""
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(name for name, _ in COLUMNS)
    if hxl:
        writer.writerow(tag for _, tag in COLUMNS)
    for row in rows(items, now, board):
        writer.writerow(_cell(row.get(name)) for name, _ in COLUMNS)
    return out.getvalue()


def _cell(value: object) -> object:
    if value is None:
        return ""
    return csv_cell(value) if isinstance(value, str) else value
