"""Impersonation and injection by a hostile member (issue 7, finding 11).

Each attack is made the way a member who holds the invite would make it: a second
store joins the board and posts, through the API where the API allows it (anyone
may call themselves "Ana", or title a need "=HYPERLINK(...)"), and through
hand-made changes sealed under its own author key where the API refuses
(``tests/hostile_helpers.py``). The honest replicas must then:

* show a key fingerprint beside every name, and mark display names that two
  members share (also lookalikes), across all members of the board;
* not show entries with bidi overrides or other format controls (the same rule as
  for local input, which refuses them), while real text that needs ZWNJ, ZWJ,
  marks, isolates or emoji tags is shown;
* never count claims beyond an item's quantity, and mark the over-claim;
* write CSV cells that no spreadsheet runs as formulas.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import unicodedata
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from hostile_helpers import FIXED_NOW, HostileMember, deliver

import p2paid
from p2paid import Board, Store, UsageError, ValidationError
from p2paid.board.model import EventKind, Item
from p2paid.cli.render import SafeFormatter, csv_cell, item_csv, item_detail, item_table, json_text
from p2paid.core.identity import fingerprint, short_fingerprint
from p2paid.core.invite import validate_board_name
from p2paid.core.text import (
    ALLOWED_FORMAT,
    REFUSED_FORMAT,
    char_problem,
    escape_text,
    name_key,
    text_problem,
)

# --------------------------------------------------------------------- the world


@dataclass
class World:
    """Ana (A) created the board and posted a need for 40 litres; C is an honest
    member; the hostile member H joined from its own store."""

    stores: dict[str, Store]
    invite: str
    need: Item
    hostile: HostileMember

    @property
    def a(self) -> Board:
        return self.stores["a"].board()

    @property
    def c(self) -> Board:
        return self.stores["c"].board()

    def honest(self) -> list[Board]:
        return [self.a, self.c]

    def deliver_hostile(self) -> None:
        deliver(self.hostile.envelopes, self.stores["a"], self.stores["c"])

    def sync(self) -> None:
        """Every honest store gets every honest envelope."""
        everything = sorted({raw for b in self.honest() for raw in b.envelopes()})
        for board in self.honest():
            report = board.receive(everything)
            assert not report.rejected, report.rejected


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    stores = {n: p2paid.open_store(tmp_path / n) for n in ("a", "c", "h")}
    try:
        a = stores["a"].create_board("Riverside", display_name="Ana")
        invite = a.invite()
        need = a.post_need("Drinking water", quantity=40, unit="litres")
        stores["c"].join(invite, display_name="Chen")
        hostile = HostileMember(stores["h"], invite)
        w = World(stores, invite, need, hostile)
        w.sync()
        yield w
    finally:
        for store in stores.values():
            store.close()


# --------------------------------------------------------------------- impersonation


def test_a_member_who_takes_anothers_name_is_marked_and_told_apart_by_key(
        tmp_path: Path, world: World) -> None:
    """B joins as "Ana" through the API and posts; a lookalike "Аna" (Cyrillic А)
    and "A\u200dna" (with a ZWJ) post too. On every honest replica each of them is
    marked name_shared (so is the real Ana, whose post is listed separately), each
    item carries its author's own fingerprint, and Board.members() covers every
    member, also those with nothing listed. Chen's name is not marked."""
    w = world
    posts: dict[str, tuple[str, str]] = {}
    for name in ("Ana", "Аna", "A\u200dna"):
        store = p2paid.open_store(tmp_path / f"b-{name_key(name)}-{len(posts)}")
        board = store.join(w.invite, display_name=name)
        posts[name] = (board.post_need(f"Water for {len(posts)}").id,
                       board.author_fingerprint)
        w.sync()
        for honest in w.honest():
            honest.receive(list(board.envelopes()))
        store.close()
    quiet = p2paid.open_store(tmp_path / "quiet")  # an "Ana" who posts nothing
    quiet_board = quiet.join(w.invite, display_name="ANA")
    w.a.receive(list(quiet_board.envelopes()))
    w.c.receive(list(quiet_board.envelopes()))
    quiet.close()

    for board in w.honest():
        by_id = {i.id: i for i in board.items()}
        real = by_id[w.need.id]
        assert real.author_name == "Ana" and real.name_shared
        assert real.author_fingerprint == w.a.author_fingerprint
        for name, (item_id, key) in posts.items():
            item = by_id[item_id]
            assert item.author_name == name and item.name_shared
            assert item.author_fingerprint == key != real.author_fingerprint
            assert item.to_json(FIXED_NOW)["author_fingerprint"] == key
            assert item.to_json(FIXED_NOW)["name_shared"] is True
        members = {m.fingerprint: m for m in board.members()}
        assert len(members) == 6  # Ana, Chen, three lookalikes, the quiet one (H wrote nothing)
        assert sum(m.name_shared for m in members.values()) == 5
        assert members[w.c.author_fingerprint].name == "Chen"
        assert not members[w.c.author_fingerprint].name_shared
        assert board.author_fingerprint in members
    assert w.a.me().name_shared and not w.c.me().name_shared
    # The shared-name flag comes from all members, not only from those listed.
    [row] = [line for line in item_table(w.a.items(), FIXED_NOW).splitlines()
             if w.need.id[:8] in line]
    assert f"Ana ({short_fingerprint(w.a.author)}, name shared)" in row


def test_events_name_the_author_with_a_fingerprint(world: World) -> None:
    """The events a node logs show the fingerprint beside the name, and the mark
    when the name is shared."""
    w = world
    a = w.a
    a.track_events()
    w.hostile.set_profile(name="Ana")
    w.hostile.post({"title": "Send the money to me"})
    deliver(w.hostile.envelopes, w.stores["a"])
    events = a.take_events()
    posted = [e for e in events if e.kind is EventKind.ITEM_ADDED]
    assert len(posted) == 1 and posted[0].name_shared
    text = str(posted[0])
    assert text.startswith(f"Ana ({short_fingerprint(w.hostile.author)}, name shared) posted")


# --------------------------------------------------------------------- format controls

#: Text a hostile member writes; each must make its entry invalid on every reader.
REFUSED_TEXT = {
    "right-to-left override": "Water \u202eretaw",
    "left-to-right embedding": "Water \u202a",
    "pop directional formatting": "Water \u202c",
    "zero width space": "Wa\u200bter",
    "byte order mark": "\ufeffWater",
    "soft hyphen": "Wa\u00adter",
    "unclosed isolate": "Water \u2067נחוץ",
    "isolate end alone": "Water \u2069",
    "line separator": "Water\u2028Bread",
    "paragraph separator": "Water\u2029Bread",
    "escape sequence": "Water \x1b[31m",
    "C1 control": "Water \x9b",
    "language tag": "Water \U000e0001",
    "musical format control": "Water \U0001d173",
}

#: Real text that needs format characters, which must be shown as written.
ALLOWED_TEXT = {
    "Persian with ZWNJ": "آب می\u200cخواهیم",
    "emoji ZWJ sequence": "Family \U0001f468\u200d\U0001f469\u200d\U0001f467",
    "flag of Scotland": "\U0001f3f4\U000e0067\U000e0062\U000e0073\U000e0063\U000e0074\U000e007f",
    "Arabic with RLM": "ماء 40\u200f لتر",
    "Hebrew isolated": "Water for \u2067מחנה צפון\u2069 camp",
    "Devanagari with ZWJ": "क्\u200dष पानी",
}


@pytest.mark.parametrize("text", list(REFUSED_TEXT.values()), ids=list(REFUSED_TEXT))
def test_local_input_with_format_controls_is_refused(world: World, text: str) -> None:
    """Every text field refuses them with a clear error and nothing is written."""
    board = world.c
    before = sorted(board.envelopes())
    for field in ("title", "unit", "location"):
        fields: dict[str, Any] = {"title": "ok", field: text}
        with pytest.raises(ValidationError, match=field):
            board.post_need(**fields)
    if "\u2028" not in text and "\u2029" not in text:  # line breaks are fine in details
        with pytest.raises(ValidationError, match="details"):
            board.post_need("ok", details=text)
        with pytest.raises(ValidationError, match="note"):
            board.claim(world.need.id, note=text)
    with pytest.raises(ValidationError, match="display name"):
        board.set_display_name(text)
    with pytest.raises(ValidationError, match="board name"):
        validate_board_name(text)
    assert sorted(board.envelopes()) == before


def test_remote_entries_with_format_controls_are_not_shown(world: World) -> None:
    """The hostile member stores, by hand, one need per refused text (in the title,
    the details or the location), a claim with one in its note, and a display name
    with an override. No honest replica shows any of them (the hostile appears
    anonymous), nothing crashes, and the hostile's valid need is shown."""
    w = world
    h = w.hostile
    h.set_profile(name="Ana\u202e")
    bad = []
    for i, text in enumerate(REFUSED_TEXT.values()):
        field = ("title", "details", "location")[i % 3]
        if field == "details" and ("\u2028" in text or "\u2029" in text):
            field = "title"
        fields = {"title": "Water", field: text}
        bad.append(h.post(fields))
    h.claim(w.need.author, w.need.id, quantity=1, note="I bring it \u202e")
    good = h.post({"title": "Bread"})
    w.deliver_hostile()
    for board in w.honest():
        items = {i.id: i for i in board.items()}
        assert not set(bad) & set(items)
        assert items[good].title == "Bread" and items[good].author_name == ""
        assert items[w.need.id].claims == ()
        assert board.display_name(h.author) == ""
        assert {m.author: m.name for m in board.members()}[h.author_hex] == ""


def test_text_that_needs_format_characters_is_kept(world: World) -> None:
    """ZWNJ, ZWJ, marks, balanced isolates and emoji tags pass locally and remotely."""
    w = world
    local = [w.c.post_need(text, details=f"{text}\n{text}").id for text in ALLOWED_TEXT.values()]
    remote = [w.hostile.post({"title": text, "location": text}) for text in ALLOWED_TEXT.values()]
    w.hostile.set_profile(name=ALLOWED_TEXT["Persian with ZWNJ"][:20])
    w.deliver_hostile()
    w.sync()
    for board in w.honest():
        items = {i.id: i for i in board.items()}
        for item_id, text in zip(local + remote, [*ALLOWED_TEXT.values()] * 2, strict=True):
            assert items[item_id].title == unicodedata.normalize("NFC", text)
        assert board.display_name(w.hostile.author) == ALLOWED_TEXT["Persian with ZWNJ"][:20]


def test_the_refused_set_covers_every_format_character_of_this_python() -> None:
    """The policy lists code points (so replicas on every Python agree); it must cover
    every Cf character this Python's Unicode database knows, and nothing else."""
    local_cf = {c for c in range(0x110000) if unicodedata.category(chr(c)) == "Cf"}
    assert local_cf <= REFUSED_FORMAT | ALLOWED_FORMAT, sorted(
        hex(c) for c in local_cf - REFUSED_FORMAT - ALLOWED_FORMAT)
    assert not REFUSED_FORMAT & ALLOWED_FORMAT
    for code in REFUSED_FORMAT:
        assert char_problem(chr(code)) is not None
        assert unicodedata.category(chr(code)) in ("Cf", "Cn")  # Cn: newer than this Python
    for code in ALLOWED_FORMAT:
        assert char_problem(chr(code)) is None
    assert char_problem("\n") is not None and char_problem("\n", multiline=True) is None
    assert char_problem("\u2028") is not None and char_problem("\u2028", multiline=True) is None
    assert text_problem("a\u2067b\nc\u2069", multiline=True) is not None  # closed on another line
    assert text_problem("a\u2067b\u2068c\u2069\u2069") is None


def test_terminal_and_json_output_never_hold_raw_controls() -> None:
    """The escaping helpers write every refused character (and unbalanced isolates) as
    an escape; JSON output still parses to the same strings."""
    nasty = "relay\u202e\x1b[2J\x85\u200b\u2067x\u2028\U0001bca0"
    shown = escape_text(nasty)
    assert shown == "relay\\u202e\\x1b[2J\\x85\\u200b\\u2067x\\u2028\\U0001bca0"
    assert escape_text("ok \u2067عربي\u2069 \u200d") == "ok \u2067عربي\u2069 \u200d"
    value = {"name": nasty, "list": [nasty]}
    dumped = json_text(value)
    assert json.loads(dumped) == value
    assert not any(char_problem(c) for c in dumped.replace("\n", ""))
    assert "\u2067" not in dumped
    record = logging.LogRecord("p2paid", logging.INFO, __file__, 1, "board %s: %s", (
        "Camp\u202e", "peer said \x1b[31mhi"), None)
    line = SafeFormatter("%(message)s").format(record)
    assert line == "board Camp\\u202e: peer said \\x1b[31mhi"


# --------------------------------------------------------------------- over-claims


def test_a_huge_claim_is_shown_as_over_claimed_and_never_inflates_the_total(
        world: World) -> None:
    """Chen claims 5 of the 40 litres; the hostile member then claims 10^9 (by hand:
    its own API refuses); a later claim of 3 by a third member finds nothing open.
    Every replica counts 5 + 35 = 40, marks the hostile's claim and the late one as
    over-claimed, and the JSON says so; Chen can no longer claim, and the local API
    refuses a claim above what is open."""
    w = world
    chen = w.c.claim(w.need.id, quantity=5)
    w.sync()
    w.hostile.claim(w.need.author, w.need.id, quantity=10**9, created=chen.created + 1)
    w.hostile.claim(w.need.author, w.need.id, quantity=3, created=chen.created + 2)
    w.deliver_hostile()
    for board in w.honest():
        item = board.get(w.need.id)
        assert [c.quantity for c in item.claims] == [5, 10**9, 3]
        assert item.claim_counts() == (5, 35, 0)
        assert item.claimed_quantity == 40 and item.open_quantity == 0
        assert item.over_claimed and item.over_claims() == (False, True, True)
        data = item.to_json(FIXED_NOW)
        assert data["claimed_quantity"] == 40 and data["over_claimed"] is True
        assert [(c["counted_quantity"], c["over_claimed"]) for c in data["claims"]] == [
            (5, False), (35, True), (0, True)]
        assert "(40 claimed, over-claimed)" in item_table([item], FIXED_NOW)
        detail = item_detail(item, FIXED_NOW)
        assert "40 litres  (40 claimed, over-claimed)" in detail
        assert "1000000000 by anonymous" in detail and "[over-claimed: counts 35]" in detail
        assert "1000000005" not in detail
    with pytest.raises(UsageError, match="fully claimed"):
        w.c.claim(w.need.id, quantity=1)
    assert w.c.claim(w.need.id).quantity is None  # a claim without a quantity still works


def test_a_local_claim_above_what_is_open_is_refused(world: World) -> None:
    w = world
    before = sorted(w.c.envelopes())
    with pytest.raises(UsageError, match="only 40 of 40 litres"):
        w.c.claim(w.need.id, quantity=41)
    assert sorted(w.c.envelopes()) == before
    w.c.claim(w.need.id, quantity=30)
    with pytest.raises(UsageError, match="only 10 of 40"):
        w.c.claim(w.need.id, quantity=11)
    assert w.c.claim(w.need.id, quantity=10).quantity == 10
    assert w.c.get(w.need.id).claimed_quantity == 40


# --------------------------------------------------------------------- CSV formulas

FORMULAS = ['=HYPERLINK("http://198.51.100.1/x","Click for details")', "+1+1", "-2+3",
            "@SUM(A1:A2)", "\uff1d1+1", "\uff0b1", "\uff0d1", "\uff20SUM(1)"]


def test_csv_cells_that_would_run_as_formulas_are_escaped(tmp_path: Path,
                                                          world: World) -> None:
    """A member (through the API: these are valid titles) posts text that spreadsheets
    run as formulas, in every text field and its display name; the CSV that an honest
    member exports, read back with the csv module, has no cell starting with a formula
    character, each such cell is the text with an apostrophe before it, and numbers
    stay numbers."""
    store = p2paid.open_store(tmp_path / "formulas")
    board = store.join(world.invite, display_name="=cmd|' /C calc'!A0")
    for text in FORMULAS:
        board.post_need(text, details=text, unit=text[:30], location=text, quantity=7)
    world.a.receive(list(board.envelopes()))
    store.close()
    rows = list(csv.DictReader(io.StringIO(item_csv(world.a.items(), FIXED_NOW))))
    starts = tuple("=+-@\t\r\uff1d\uff0b\uff0d\uff20")
    for row in rows:
        for key, cell in row.items():
            assert not cell.startswith(starts), (key, cell)
    theirs = [r for r in rows if r["author"] == board.author.hex()]
    assert sorted(r["title"] for r in theirs) == sorted("'" + t for t in FORMULAS)
    for r in theirs:
        assert r["details"] == r["location"] == r["title"]
        assert r["author_name"] == "'=cmd|' /C calc'!A0"
        assert r["quantity"] == "7" and r["claimed_quantity"] == "0"
    assert csv_cell("Water") == "Water" and csv_cell("") == ""


def test_fingerprint_helpers_agree() -> None:
    key = bytes(range(32))
    assert short_fingerprint(key) == "-".join(fingerprint(key).split("-")[:2])
